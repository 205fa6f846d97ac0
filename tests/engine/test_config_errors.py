"""A config mistake is exit 2 with one line naming the key and the fault, before anything else: the config's own
checks, then the model build probe, then (only then) the data. No traceback, no run folder, no image read."""

from __future__ import annotations

from pathlib import Path

import pytest

from cspwrc.cli import train


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSPWRC_DEBUG", raising=False)


def _train(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``cspwrc train`` in-process with a data file that does not exist and a fresh --out."""
    code = train.main([*args, "--data", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run"),
                       "--no-progress"])
    return code, capsys.readouterr().err


CASES = [
    # the config's own checks (the detector's part configs, the run config)
    (["--set", "model.head.reg_max=0"], "command line: model.head.reg_max: must be >= 1 (1: direct regression, "
                                        ">= 2: DFL bins)"),
    (["--set", "model.head.cls_branch=depthwise"], "model.head.cls_branch: must be one of conv, dw"),
    (["--set", "model.neck.channels=[64,128]"], "model.neck.channels: must be 3 positive widths (P3, P4, P5)"),
    (["--set", "model.neck.act_layer=sliu"], "model.neck.act_layer: must be a timm layer name"),
    (["--set", "model.post.nms_iou=1.5"], "model.post.nms_iou: must be in (0, 1], got 1.5"),
    (["--set", "model.loss.assigner.tal_topk=0"], "model.loss.assigner.tal_topk: must be >= 1, got 0"),
    (["--set", "augment.mosiac=0.5"], "command line: unknown key 'augment.mosiac'; did you mean 'mosaic'?"),
    (["--set", "augment.mosaic=often"], "augment.mosaic: expected float, got str 'often'"),
    (["--img", "100"], "train.img: must be a positive multiple of 32"),
    # the old spelling on the command line: refused, naming the new key
    (["--set", "model.options.reg_max=1"], "--set model.options.reg_max: the model options are nested now: "
                                           "--set model.head.reg_max="),
    (["--set", "model.options.freeze_stages=9"], "nested now: --set model.backbone.freeze_stages="),
    # the model build probe (meta device)
    (["--model", "vit_tiny_patch16_224"], "model.backbone.name: vit_tiny_patch16_224 has no feature level with "
                                          "reduction 8"),
    (["--set", "model.backbone.freeze_stages=9"], "model.backbone.freeze_stages: must be at most 5 (cspwrc_s has 5 "
                                                  "feature levels"),
    (["--set", "model.backbone.kwargs.wrc_normalise=relu"], "model.backbone.kwargs: cspwrc_s takes no "
                                                            "'wrc_normalise'; did you mean 'wrc_normalize'?"),
    (["--set", "model.backbone.kwargs.output_stride=4"], "model.backbone.kwargs: cspwrc_s refuses "
                                                         "{'output_stride': 4}: output_stride must be 8, 16 or 32"),
    (["--set", "model.backbone.kwargs.drop_path=0.1"], "did you mean 'drop_path_rate'?"),
    (["--model", "cspwrc_ss"], "model.backbone.name: unknown model 'cspwrc_ss'; close matches: cspwrc_s"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(args) for args, _ in CASES])
def test_a_config_mistake_is_exit_2_first_and_in_one_line(args: list[str], message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _train(args, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err
    # Before the data (its file does not exist: a data check would have named missing.yaml) and before the run folder.
    assert "missing.yaml" not in err and not (tmp_path / "run").exists()


def test_an_old_recipe_file_is_checked_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  name: cspwrc_n\n  options: {reg_max: 0}\n")
    code, err = _train(["--config", str(recipe)], tmp_path, capsys)
    assert code == 2 and f"{recipe}: model.head.reg_max: must be >= 1" in err and "Traceback" not in err


def test_without_a_config_mistake_the_data_is_what_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the same command line with a valid config gets as far as the (missing) data file."""
    code, err = _train(["--model", "cspwrc_n"], tmp_path, capsys)
    assert code == 2 and "missing.yaml" in err and "Traceback" not in err
