"""Tiny run settings shared by the engine tests: a few shapes images at 64 px and a small timm backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cspwrc.data import ensure_shapes_dataset
from cspwrc.engine.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
# The smallest cspwrc backbone with a thin neck keeps each step well under a second at 64 px.
MODEL = {"backbone": {"name": "cspwrc_n"}, "neck": {"channels": [16, 32, 64]},
         "loss": {"assigner": {"static_epochs": 1}}}


def tiny_data(root: Path) -> Path:
    return ensure_shapes_dataset(root / "shapes", num_train=16, num_val=8, seed=3)


def tiny_overrides(data: Path, out: Path, **train: Any) -> dict[str, Any]:
    return {"model": MODEL, "data": {"path": str(data), "workers": 0},
            "schedule": {"warmup_epochs": 0.5}, "ema": {"decay": 0.9},
            "train": {"epochs": 2, "batch": 8, "img": 64, "close_mosaic": 1, "out": str(out), **train}}


def tiny_config(data: Path, out: Path, **train: Any) -> RunConfig:
    return load_config(None, tiny_overrides(data, out, **train))


def cli_args(data: Path, out: Path, epochs: int = 2) -> list[str]:
    """The same tiny run as command-line flags for tools/train_det.py."""
    return ["--model", MODEL["backbone"]["name"], "--set", "model.neck.channels=[16,32,64]",
            "--set", "model.loss.assigner.static_epochs=1", "--data", str(data), "--workers", "0",
            "--set", "schedule.warmup_epochs=0.5", "--set", "ema.decay=0.9", "--epochs", str(epochs),
            "--batch", "8", "--img", "64", "--set", "train.close_mosaic=1", "--out", str(out), "--no-progress"]
