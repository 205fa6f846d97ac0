"""One set of run defaults: the run config's defaults are the real-data recipe, every other recipe an overlay of what
differs, and the embedded demo resolves to exactly the config it was tuned and measured with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cspwrc.engine.config import RunConfig, load_config, read_yaml, to_dict

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "det"

# What `cspwrc train` (no arguments) trains, fully resolved: the demo's measured recipe (README, docs/results.md).
# Changing the defaults must not change it; only an edit of configs/det/default.yaml (and of this pin) may.
DEMO = {
    "model": {
        "backbone": {"name": "cspwrc_n", "pretrained": False, "pretrained_cfg_overlay": None,
                     "kwargs": {"wrc_normalize": "relu"}, "model_args": None, "freeze_bn": False, "freeze_stages": 0},
        "neck": {"channels": [64, 128, 256], "depth": None, "shortcut": False, "wrc_weights": "scalar",
                 "wrc_normalize": "none", "sppf_kernel": 5, "act_layer": "silu", "norm_layer": "batchnorm"},
        "head": {"reg_max": 16, "prior_prob": 0.01, "cls_channels": None, "box_channels": None, "cls_branch": "conv",
                 "end2end": False, "act_layer": "silu",
                 "norm_layer": "batchnorm"},
        "loss": {"cls_loss": "bce", "iou_loss": "ciou", "cls_weight": 0.5, "box_weight": 7.5, "dfl_weight": 1.5,
                 "o2m_weight_start": 0.8, "o2m_weight_end": 0.1,
                 "assigner": {"static_epochs": 3, "tal_topk": 10, "tal_alpha": 0.5, "tal_beta": 6.0, "atss_topk": 9,
                              "min_box_side": 16.0, "o2o_topk": 7}},
        "post": {"score_thresh": 0.001, "nms_iou": 0.6, "max_det": 300, "pre_nms_topk": 3000},
        "sync_bn": False,
    },
    "data": {"path": None, "workers": 0, "cache": "ram"},
    "augment": {"mosaic": 0.0, "scale": 0.5, "translate": 0.1, "degrees": 0.0, "shear": 0.0, "hsv_h": 0.015,
                "hsv_s": 0.7, "hsv_v": 0.4, "fliplr": 0.5, "min_box_size": 2.0, "min_visibility": 0.1},
    "optim": {"opt": "adamw", "lr": 0.002, "weight_decay": 0.05, "momentum": 0.9, "betas2": 0.999, "nominal_batch": 0},
    "schedule": {"sched": "cosine", "warmup_epochs": 1.0, "warmup_lr": 0.0, "warmup_bias_lr": 0.01,
                 "warmup_momentum": None, "min_lr_ratio": 0.05},
    "ema": {"enabled": True, "decay": 0.999, "warmup": True, "warmup_power": 0.75},
    "train": {"epochs": 14, "batch": 8, "img": 160, "close_mosaic": 0, "grad_clip": 10.0, "nan_policy": "stop",
              "max_nan_skips": 100, "amp": "auto", "channels_last": True, "eval_interval": 4, "patience": 0,
              "tensorboard": True, "seed": 0, "device": "auto", "out": "runs/det", "weights": None,
              "max_steps_per_epoch": 0, "time": None},
}


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "kwargs":  # an open mapping is one value
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_demo_recipe_resolves_to_its_pinned_config() -> None:
    assert to_dict(load_config(RECIPES / "default.yaml")) == DEMO


def test_the_real_recipe_is_the_schema_defaults() -> None:
    assert load_config(RECIPES / "real.yaml") == load_config(None) == RunConfig()
    assert read_yaml(RECIPES / "real.yaml") == {}  # comments only: every value is stated once, in the schema


@pytest.mark.parametrize("name", ["default.yaml", "sgd.yaml"])
def test_an_overlay_sets_only_what_differs_from_the_real_recipe(name: str) -> None:
    defaults = _leaves(to_dict(RunConfig()))
    mine = _leaves(read_yaml(RECIPES / name))
    assert mine and not [k for k, v in mine.items() if defaults[k] == v], f"{name} restates defaults"


def test_a_partial_recipe_gets_the_real_recipe_for_what_it_does_not_set() -> None:
    sgd, real = _leaves(to_dict(load_config(RECIPES / "sgd.yaml"))), _leaves(to_dict(RunConfig()))
    own = _leaves(read_yaml(RECIPES / "sgd.yaml"))
    assert {k: v for k, v in sgd.items() if k not in own} == {k: v for k, v in real.items() if k not in own}
    assert (sgd["train.close_mosaic"], sgd["model.loss.assigner.static_epochs"]) == (10, 3)
