"""Every tool fails cleanly: malformed, missing or hostile files are exit 2 with one line naming the file, an
unwritable output is exit 3, and only --debug (or CSPWRC_DEBUG=1) prints a traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cspwrc.cli import benchmark, export, merge, predict, val, wrc_weights
from cspwrc.cli.main import COMMANDS
from cspwrc.data import ensure_shapes_dataset
from cspwrc.det import build_detector
from cspwrc.engine.checkpoint import save_checkpoint


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSPWRC_DEBUG", raising=False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes data set's root (5 classes, COCO ids 1..5): 4 val images are enough here."""
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", num_train=4, num_val=4, seed=1).parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny detector saved as the trainer saves it."""
    model = build_detector("test_resnet", num_classes=5, neck={"channels": [16, 32, 64]})
    meta = {"model": model.config, "num_classes": 5, "class_names": list("abcde"), "category_ids": [1, 2, 3, 4, 5],
            "img": 64}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", model.state_dict(), meta, state=None)


def _refused(capsys: pytest.CaptureFixture[str], rc: int, *fragments: str, code: int = 2) -> str:
    """The exit code, one line on stderr with every fragment, no traceback."""
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "stopped:"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_debug(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        COMMANDS[command][0](["--help"])
    assert done.value.code == 0 and "--debug" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- eval
def _val(weights: Path, ann: Path, images: Path, *extra: str) -> int:
    return val.main(["--weights", str(weights), "--ann", str(ann), "--images", str(images), "--device", "cpu",
                     "--no-progress", *extra])


@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read annotation file"),
    ("{not json", "malformed JSON"),
    ("[1, 2, 3]", "expected dict, got list"),
    ('{"images": [], "annotations": []}', "missing key 'categories'"),
])
def test_eval_checks_the_annotation_file_first(weights: Path, shapes: Path, tmp_path: Path, content: str | None,
                                               fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    ann = tmp_path / "hostile.json"
    if content is not None:
        ann.write_text(content)
    _refused(capsys, _val(weights, ann, shapes / "images" / "val"), str(ann), fragment)


def test_eval_counts_per_image_skips_and_debug_shows_the_traceback(weights: Path, shapes: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    coco = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    coco["images"][0]["file_name"] = "gone.png"
    ann = tmp_path / "one_missing.json"
    ann.write_text(json.dumps(coco))
    assert _val(weights, ann, shapes / "images" / "val", "--json", str(tmp_path / "summary.json")) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skips"]["data_checks"]["image missing"] == 1
    assert summary["num_images"] == len(coco["images"]) - 1 and summary["skips"]["read_failures"] == 0
    capsys.readouterr()
    assert _val(weights, tmp_path / "missing.json", shapes / "images" / "val", "--debug") == 2
    assert "Traceback" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- export
class _Payload:
    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (print, ("payload ran",))


@pytest.mark.parametrize("make, fragment", [
    (lambda p, good: torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload()}, p.with_suffix(".pt")), "refused"),
    (lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "not a valid safetensors"),
    (lambda p, good: p.write_bytes(b""), "not a valid safetensors"),
])
def test_export_refuses_hostile_checkpoints(weights: Path, tmp_path: Path, make: Callable[[Path, Path], None],
                                            fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    make(bad, weights)
    bad = bad if bad.exists() else bad.with_suffix(".pt")
    rc = export.main(["--weights", str(bad), "--out", str(tmp_path / "m.onnx")])
    _refused(capsys, rc, str(bad), fragment)
    assert not (tmp_path / "m.onnx").exists()


def test_export_bad_flags_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, export.main(["--model", "resnet18", "--img", "70", "--out", str(tmp_path / "x.onnx")]),
             "multiple of 32")
    _refused(capsys, export.main(["--model", "cspwrc_ss", "--out", str(tmp_path / "x.onnx")]), "unknown model")


# ----------------------------------------------------------------------------------------------- predict
def test_predict_bad_inputs_are_exit_2(weights: Path, shapes: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    images = shapes / "images" / "val"
    base = ["--weights", str(weights), "--device", "cpu"]
    _refused(capsys, predict.main([*base, "--source", str(tmp_path / "nothing"), "--out", str(tmp_path / "p")]),
             "--source", "no such file or folder")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    _refused(capsys, predict.main([*base, "--source", str(images), "--out", str(taken)]), "is a file")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 nope")
    _refused(capsys, predict.main([*base, "--source", str(broken), "--out", str(tmp_path / "p")]),
             "none of its 1 file")
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(weights.read_bytes()[:100])
    _refused(capsys, predict.main(["--weights", str(torn), "--device", "cpu", "--source", str(images),
                                   "--out", str(tmp_path / "p")]), str(torn), "not a valid safetensors")
    if not torch.cuda.is_available():
        _refused(capsys, predict.main(["--weights", str(weights), "--device", "cuda", "--source", str(images),
                                       "--out", str(tmp_path / "p")]), "CUDA is not available")


# ----------------------------------------------------------------------------------------------- the others
def test_wrc_weights_merge_and_benchmark_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 10)
    _refused(capsys, wrc_weights.main(["--weights", str(junk)]), str(junk))
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, evil)
    _refused(capsys, wrc_weights.main(["--model", "cspwrc_n", "--weights", str(evil)]), str(evil))
    assert "payload ran" not in capsys.readouterr().out
    _refused(capsys, wrc_weights.main(["--model", "cspwrc_nn"]), "unknown model")

    listed = tmp_path / "list.json"
    listed.write_text("[]")
    _refused(capsys, merge.main([str(listed), str(listed), "--out", str(tmp_path / "m.json")]), str(listed))

    _refused(capsys, benchmark.main(["--models", "cspwrc_q"]), "unknown model 'cspwrc_q'")
