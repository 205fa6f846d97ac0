"""Checkpoints as docs/design.md defines them, written atomically and read without unpickling.

A run directory holds, for ``last`` and ``best``:

- ``NAME.safetensors``: the weights to run (EMA when on) plus metadata key ``cspwrc`` = JSON of ``model`` (the
  detector's nested config, ``model.config``), ``num_classes``, ``class_names``, ``category_ids``, ``img``, ``epoch``.
  Files of earlier versions (``model`` = the backbone name, flat ``options``) are read through :func:`model_section`.
- ``NAME.state.pt``: the training state, plain tensors and containers only, read with
  ``torch.load(weights_only=True)``.

Both are written with :func:`cspwrc.atomic.atomic_write`: a crash at any moment leaves either the old or the new
file, never a torn one; a failed write (full disk, read-only folder) raises :class:`cspwrc.atomic.WriteError`
and leaves the previous file untouched. A file that is not a checkpoint raises :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save_bytes

from cspwrc.atomic import atomic_write, write_bytes
from cspwrc.det import DetectorConfig, YoloDetector
from cspwrc.det.legacy import upgrade_model_section
from cspwrc.errors import CheckpointError
from cspwrc.weights import META_KEY, read_any_weights, read_pth, read_safetensors, rename_like

WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.pt"


def _plain_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; a private contiguous CPU copy of each tensor fixes both.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    data = st_save_bytes(_plain_tensors(state_dict), metadata={META_KEY: json.dumps(meta)})
    write_bytes(path, data)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


def save_checkpoint(run_dir: str | Path, name: str, weights: dict[str, torch.Tensor], meta: dict[str, Any],
                    state: dict[str, Any] | None) -> Path:
    """Write ``NAME.state.pt`` (if given) then ``NAME.safetensors``; return the weights path.

    The state goes first: --resume reads only the state file, which is self-consistent on its own, so a
    crash between the two writes never makes a resume inconsistent.
    """
    run_dir = Path(run_dir)
    if state is not None:
        save_state(run_dir / f"{name}{STATE_SUFFIX}", state)
    path = run_dir / f"{name}{WEIGHTS_SUFFIX}"
    save_weights(path, weights, meta)
    return path


# Reading lives in cspwrc.weights (the one loader); these names stay for the engine's callers.
read_weights = read_safetensors
read_state = read_pth


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


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the detector a cspwrc ``.safetensors`` checkpoint describes and load its weights (eval mode).

    Used by eval, predict and export: the file alone is enough. The returned metadata has today's shape
    (``meta["model"]`` = ``model.config``, the full nested config, also for a file of an earlier version).
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
        raise CheckpointError(f"{path}: weights do not match the model the metadata describes: {err}") from err
    # Today's shape whatever the file's age: the full nested config of the model built (every default filled in).
    return model.to(device).eval(), {k: v for k, v in meta.items() if k != "options"} | {"model": model.config}


def init_from_weights(model: torch.nn.Module, path: str | Path, backbone_attr: str = "backbone") -> str:
    """Initialise ``model`` from a local checkpoint for ``--weights``; return a one-line summary.

    A full cspwrc detector checkpoint loads every tensor whose name and shape match (a different class
    count leaves the classification output layers at their init). A backbone-only file (a timm model or
    features_only state dict) is matched against ``model.<backbone_attr>``. Nothing matching at all is an
    error, so a wrong file never trains silently from scratch.
    """
    tensors, _ = read_any_weights(path)  # container unwrapped, DDP prefixes removed
    loaded, target = _load_matching(model, tensors), "detector"
    if not loaded and hasattr(model, backbone_attr):
        loaded, target = _load_matching(getattr(model, backbone_attr), tensors), "backbone"
    if not loaded:
        raise CheckpointError(f"{path}: no tensor matches the model by name and shape; wrong file for this model?")
    return f"initialised {target} from {path}: {loaded}/{len(tensors)} tensors loaded"


def _load_matching(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    own = module.state_dict()
    match = {k: v for k, v in rename_like(own, tensors).items() if k in own and own[k].shape == v.shape}
    if match:
        module.load_state_dict(match, strict=False)
    return len(match)
