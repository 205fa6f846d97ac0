"""The detector's options in one nested spelling: every DetectorConfig field survives a checkpoint, and files of the
flat-option era (checkpoints, recipes, training states) still load through the one translation at the edge."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from cspwrc.cli.train_flags import add_train_flags, train_overrides
from cspwrc.det import DetectorConfig, YoloDetector
from cspwrc.det.assigner import AssignerCfg
from cspwrc.det.detector import BackboneCfg
from cspwrc.det.head import HeadCfg
from cspwrc.det.load import load_detector, model_section
from cspwrc.det.loss import LossCfg
from cspwrc.det.neck import NeckCfg
from cspwrc.det.postprocess import PostprocessCfg
from cspwrc.engine.checkpoint import save_checkpoint, save_state
from cspwrc.engine.config import ConfigError, load_config, to_dict
from cspwrc.engine.trainer import load_resume

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def _leaves(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"neck.channels": [...], ...}``: every leaf field of a (nested) config dataclass."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _all_changed(pretrained_file: Path) -> DetectorConfig:
    """A DetectorConfig with every field away from its default (and a test_byobnet-sized, still valid model)."""
    return DetectorConfig(
        backbone=BackboneCfg(name="test_byobnet", pretrained=True, kwargs={"drop_path_rate": 0.05}, freeze_bn=True,
                             freeze_stages=1, pretrained_cfg_overlay={"file": str(pretrained_file)},
                             model_args={"drop_rate": 0.0}),  # a non-cspwrc model keeps the args it is given
        neck=NeckCfg(channels=[16, 24, 32], depth=2, shortcut=True, wrc_weights="channel", wrc_normalize="softmax",
                     sppf_kernel=3, act_layer="relu", norm_layer="groupnorm1"),
        head=HeadCfg(reg_max=8, prior_prob=0.02, cls_channels=24, box_channels=40, cls_branch="dw", end2end=True,
                     act_layer="gelu",
                     norm_layer="groupnorm1"),
        loss=LossCfg(cls_loss="varifocal", iou_loss="giou", cls_weight=0.6, box_weight=7.0, dfl_weight=1.2,
                     o2m_weight_start=0.7, o2m_weight_end=0.2,
                     assigner=AssignerCfg(static_epochs=2, tal_topk=7, tal_alpha=0.6, tal_beta=5.0, atss_topk=5,
                                          min_box_side=8.0, o2o_topk=5)),
        post=PostprocessCfg(score_thresh=0.05, nms_iou=0.5, max_det=100, pre_nms_topk=1000),
        sync_bn=True,
    )


def test_every_detector_config_field_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    pretrained = tmp_path / "test_byobnet.pth"
    torch.save(timm.create_model("test_byobnet").state_dict(), pretrained)
    changed = _all_changed(pretrained)
    defaults = _leaves(DetectorConfig())
    same = [key for key, value in _leaves(changed).items() if value == defaults[key]]
    assert not same, f"give these fields a non-default value here so the round trip covers them: {same}"

    torch.manual_seed(0)
    model = YoloDetector(changed, num_classes=2).eval()
    # The metadata exactly as Trainer.meta() writes it: model.config is the nested DetectorConfig.
    meta = {"model": model.config, "num_classes": 2, "class_names": ["a", "b"], "category_ids": [1, 2], "img": 64,
            "epoch": 1}
    path = save_checkpoint(tmp_path, "best", model.state_dict(), meta, state=None)
    loaded, saved = load_detector(path)

    # Weight-loading and training-only options come back reset (the weights are in the file); every other one as set.
    expected = dataclasses.replace(changed, sync_bn=False, backbone=dataclasses.replace(
        changed.backbone, pretrained=False, pretrained_cfg_overlay=None))
    assert loaded.cfg == expected and loaded.num_classes == 2
    assert saved["model"] == dataclasses.asdict(expected) == json.loads(json.dumps(model.config))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_raw(x), model.forward_raw(x))


# A checkpoint of the flat-option era: its metadata verbatim (written by the trainer of commit 0ec73ef) and the
# nested config it means, spelled out here by hand (not by the translation under test).
FLAT_ERA_CONFIG = DetectorConfig(
    backbone=BackboneCfg(name="test_byobnet", kwargs={"drop_path_rate": 0.05}, freeze_stages=1),
    neck=NeckCfg(channels=[16, 24, 32], depth=1, shortcut=True, wrc_weights="channel", wrc_normalize="relu",
                 sppf_kernel=3, act_layer="relu"),
    head=HeadCfg(reg_max=4, prior_prob=0.02, act_layer="relu"),
    loss=LossCfg(cls_loss="varifocal", iou_loss="giou", cls_weight=0.6, box_weight=7.0, dfl_weight=1.2,
                 assigner=AssignerCfg(static_epochs=2, tal_topk=7, tal_alpha=0.6, tal_beta=5.0, atss_topk=5,
                                      min_box_side=8.0)),
    post=PostprocessCfg(score_thresh=0.05, nms_iou=0.5, max_det=100, pre_nms_topk=1000),
)


def test_a_checkpoint_of_the_flat_option_era_loads(tmp_path: Path) -> None:
    old_meta = json.loads((DATA / "flat_options_checkpoint.json").read_text())["meta"]
    assert isinstance(old_meta["model"], str) and "reg_max" in old_meta["options"]  # really the old shape
    weights = YoloDetector(FLAT_ERA_CONFIG, num_classes=2).state_dict()
    path = save_checkpoint(tmp_path, "old", weights, old_meta, state=None)

    model, meta = load_detector(path)  # strict load: the architecture the old options describe
    assert model.cfg == FLAT_ERA_CONFIG and model.num_classes == 2
    assert meta["model"] == dataclasses.asdict(FLAT_ERA_CONFIG) and "options" not in meta  # today's shape
    assert meta["class_names"] == ["a", "b"] and meta["img"] == 64
    assert DetectorConfig.from_dict(model_section(old_meta)) == FLAT_ERA_CONFIG


def test_a_recipe_of_the_flat_option_era_loads() -> None:
    old = DATA / "flat_options_default.yaml"
    assert "options:" in old.read_text()
    # today's demo recipe, but for what issue 25 moved since (the model, the loader process, epochs, size, val)
    then = {"model": {"backbone": {"name": "cspwrc_s"}}, "data": {"workers": 1},
            "train": {"epochs": 22, "img": 192, "eval_interval": 1}}
    assert load_config(old) == load_config(ROOT / "configs" / "det" / "default.yaml", then)
    # The command line (nested only) still goes over an old file, key by key.
    cfg = load_config(old, {"model": {"head": {"reg_max": 8}, "backbone": {"name": "cspwrc_n"}}})
    assert (cfg.model.head.reg_max, cfg.model.backbone.name, cfg.model.neck.channels) == (8, "cspwrc_n", [64, 128, 256])
    assert cfg.model.backbone.kwargs == {"wrc_normalize": "relu"}


def test_a_training_state_of_the_flat_option_era_resumes_with_its_config(tmp_path: Path) -> None:
    config = to_dict(load_config(None))
    config["model"] = {"name": "cspwrc_n", "options": {"neck_channels": [16, 32, 64], "static_assigner_epochs": 1,
                                                        "act_layer": "relu"}}  # as the old RunConfig saved it
    save_state(tmp_path / "last.state.pt", {"config": config, "model": {}, "epoch": 1})
    cfg, _ = load_resume(tmp_path)
    assert cfg.model.backbone.name == "cspwrc_n" and cfg.model.neck.channels == [16, 32, 64]
    assert (cfg.model.loss.assigner.static_epochs, cfg.model.neck.act_layer, cfg.model.head.act_layer) == (
        1, "relu", "relu")


@pytest.mark.parametrize("old, new", [
    ("model.options.reg_max", "model.head.reg_max"),
    ("model.options.static_assigner_epochs", "model.loss.assigner.static_epochs"),
    ("model.options.backbone_kwargs.wrc_normalize", "model.backbone.kwargs.wrc_normalize"),
    ("model.options.act_layer", "model.neck.act_layer and model.head.act_layer"),
    ("model.name", "model.backbone.name"),
])
def test_the_command_line_takes_only_the_nested_spelling(old: str, new: str) -> None:
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    with pytest.raises(ConfigError, match=f"--set {old}: the model options are nested now: --set {new}="):
        train_overrides(parser.parse_args(["--set", f"{old}=1"]))
