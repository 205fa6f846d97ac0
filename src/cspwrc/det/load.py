"""A trained detector from its checkpoint file: the one loader behind eval, predict, export and the experiments.

A cspwrc ``.safetensors`` checkpoint (written by :mod:`cspwrc.engine.checkpoint`) holds the weights and, under
metadata key ``cspwrc``, the JSON of ``model`` (the detector's nested config, ``model.config``), ``num_classes``,
``class_names``, ``category_ids``, ``img`` and ``epoch``: the file alone rebuilds the detector. Files of earlier
versions (``model`` = the backbone name, flat ``options``) are read through :func:`model_section`.

Reading the file is :mod:`cspwrc.weights`'s (nothing is unpickled). This module imports only the detector side, so
``cspwrc export`` and anything else that just loads a model pay for no training or data code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cspwrc.errors import CheckpointError, ConfigError
from cspwrc.weights import META_KEY, load_mismatch, read_any_weights

from .detector import DetectorConfig, YoloDetector
from .legacy import upgrade_model_section

__all__ = ["DEFAULT_IMG", "backbone_section", "input_size", "load_detector", "model_section"]

DEFAULT_IMG = 640  # input size of a detector whose metadata records none (a freshly built one; our files record it)


def model_section(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The nested detector config (``model.config``) a checkpoint's metadata holds, or None when it holds none.

    Metadata of earlier versions (``"model"`` = the backbone name, flat ``"options"``) is translated by
    :func:`cspwrc.det.legacy.upgrade_model_section`, the one place that knows the old spelling.
    """
    model = meta.get("model")
    if isinstance(model, str):
        return upgrade_model_section({"name": model, "options": meta.get("options") or {}})
    return dict(model) if isinstance(model, Mapping) else None


def backbone_section(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``backbone`` section (``name``, ``kwargs``, ...) a checkpoint's metadata records, any version; ``{}``."""
    return dict((model_section(meta) or {}).get("backbone") or {})


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[YoloDetector, dict[str, Any]]:
    """Build the detector a cspwrc checkpoint describes and load its weights; return ``(model, meta)``.

    ``model`` is in eval mode on ``device``: ``model(images float [B, 3, S, S] in [0, 1])`` gives per image
    ``boxes [K, 4]`` xyxy input pixels, ``scores [K]``, ``labels [K]`` (:func:`cspwrc.det.predict.detect` runs it
    on one image of any size). ``meta`` is the file's metadata in today's shape: ``meta["model"]`` is
    ``model.config``, the full nested config, also for a file of an earlier version. A file that is not a cspwrc
    detector checkpoint, or whose weights do not fit its metadata, raises :class:`CheckpointError`.
    """
    path = Path(path)
    tensors, meta = read_any_weights(path)
    if not isinstance(meta.get("model"), (str, Mapping)) or "num_classes" not in meta:
        raise CheckpointError(f"{path}: no detector config ('model') or 'num_classes' in the {META_KEY!r} metadata; "
                              f"not a cspwrc detector checkpoint (a backbone-only file can initialise training via "
                              f"--weights)")
    try:
        model = YoloDetector(DetectorConfig.from_dict(model_section(meta), "model"), int(meta["num_classes"]))
    except (ValueError, TypeError, RuntimeError) as err:  # e.g. options of another version, unknown model
        raise CheckpointError(f"{path}: cannot build the detector its metadata describes: {err}") from err
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(_mismatch_message(path, model, err)) from err
    # Today's shape whatever the file's age: the full nested config of the model built (every default filled in).
    return model.to(device).eval(), {k: v for k, v in meta.items() if k != "options"} | {"model": model.config}


def _mismatch_message(path: str | Path, model: YoloDetector, err: RuntimeError) -> str:
    """One line for a state dict that does not fit (torch lists every tensor: hundreds of lines)."""
    backbone = model.config["backbone"]
    return (f"{path}: weights do not match the model its metadata describes ({load_mismatch(err)}). It records "
            f"backbone {backbone['name']!r} with kwargs "
            f"{backbone['kwargs'] or {}}: the registered model's own defaults may have changed since it was trained "
            f"(cspwrc_n did, to bottle_ratio 2, docs/backbone.md; files written since record the layout itself, "
            f"backbone.model_args); load it with the cspwrc version that trained it")


def input_size(meta: Mapping[str, Any], img: int | None = None) -> int:
    """The square input size ``S`` to run a loaded detector at: ``img`` when given, else the size it was trained at
    (``meta["img"]``), else :data:`DEFAULT_IMG`. A size that is not a positive multiple of 32 (the detector's
    largest stride) is a :class:`~cspwrc.errors.ConfigError`."""
    size = int(img or meta.get("img", DEFAULT_IMG))
    if size <= 0 or size % 32:
        raise ConfigError(f"input size {size} (--img): must be a positive multiple of 32, the largest stride")
    return size
