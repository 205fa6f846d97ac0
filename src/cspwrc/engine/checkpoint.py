"""Checkpoints as docs/design.md defines them, written atomically and read without unpickling.

A run directory holds, for ``last`` and ``best``:

- ``NAME.safetensors``: the weights to run (EMA when on) plus metadata key ``cspwrc`` = JSON model config
  (``model``, ``num_classes``, ``class_names``, ``category_ids``, ``img``, detector ``options``).
- ``NAME.state.pt``: the training state, plain tensors and containers only, read with
  ``torch.load(weights_only=True)``.

Both are written with :func:`cspwrc.atomic.atomic_write`: a crash at any moment leaves either the old or the new
file, never a torn one; a failed write (full disk, read-only folder) raises :class:`cspwrc.atomic.WriteError`
and leaves the previous file untouched. A file that is not a checkpoint raises :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from cspwrc.atomic import atomic_write, write_bytes
from cspwrc.errors import CheckpointError

META_KEY = "cspwrc"
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


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the ``cspwrc`` metadata (empty dict when absent, e.g. a timm backbone file)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err}") from err
    try:
        tensors = st_load_bytes(raw)
        meta_raw = _safetensors_metadata(raw).get(META_KEY)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file: {err}") from err
    try:
        meta = json.loads(meta_raw) if meta_raw else {}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: metadata key {META_KEY!r} is not valid JSON: {err}") from err
    return tensors, meta


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    # The header is an 8-byte little-endian length followed by that much JSON; '__metadata__' holds str->str.
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not a mapping")
    return meta


def read_state(path: str | Path) -> dict[str, Any]:
    """Load a ``.pt`` file with ``weights_only=True``; a pickled payload (custom class, __reduce__) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: the file carries a pickled Python object that is not plain tensors/containers "
            f"(loading it could run code). Only weights_only checkpoints are accepted. Details: {err}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {err}") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors/containers, got {type(obj).__name__}")
    return obj


def read_any_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights from a ``.safetensors`` file, or a state dict from a weights-only ``.pt``/``.pth``/``.bin``.

    A ``.state.pt`` training state yields its ``model`` entry; a ``{'state_dict': ...}`` or
    ``{'model': ...}`` wrapper (timm/torchvision/YOLO style exports) is unwrapped.
    """
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX:
        return read_weights(path)
    obj = read_state(path)
    meta = obj.get("meta", {}) if isinstance(obj.get("meta"), dict) else {}
    for key in ("ema", "model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, meta
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (expected a state dict)")
    return tensors, meta


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the detector a cspwrc ``.safetensors`` checkpoint describes and load its weights (eval mode).

    Used by eval, predict and export: the file alone is enough.
    """
    from cspwrc.det import build_detector

    path = Path(path)
    tensors, meta = read_any_weights(path)
    for key in ("model", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing {key!r} in the {META_KEY!r} metadata; not a cspwrc detector "
                                  f"checkpoint (a backbone-only file can initialise training via --weights)")
    try:
        model = build_detector(backbone=meta["model"], num_classes=int(meta["num_classes"]), **meta.get("options", {}))
    except (ValueError, TypeError, RuntimeError) as err:  # e.g. options of another version, unknown model
        raise CheckpointError(f"{path}: cannot build the detector its metadata describes: {err}") from err
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the model the metadata describes: {err}") from err
    return model.to(device).eval(), meta


def init_from_weights(model: torch.nn.Module, path: str | Path, backbone_attr: str = "backbone") -> str:
    """Initialise ``model`` from a local checkpoint for ``--weights``; return a one-line summary.

    A full cspwrc detector checkpoint loads every tensor whose name and shape match (a different class
    count leaves the classification output layers at their init). A backbone-only file (a timm model or
    features_only state dict) is matched against ``model.<backbone_attr>``. Nothing matching at all is an
    error, so a wrong file never trains silently from scratch.
    """
    tensors, _ = read_any_weights(path)
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}  # DDP-saved files
    loaded, target = _load_matching(model, tensors), "detector"
    if not loaded and hasattr(model, backbone_attr):
        loaded, target = _load_matching(getattr(model, backbone_attr), tensors), "backbone"
    if not loaded:
        raise CheckpointError(f"{path}: no tensor matches the model by name and shape; wrong file for this model?")
    return f"initialised {target} from {path}: {loaded}/{len(tensors)} tensors loaded"


def _norm_key(key: str) -> str:
    # timm's features_only wrappers flatten 'stages.0' into 'stages_0'; compare names with both spellings equal.
    return key.replace("_", ".")


def _load_matching(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    own = module.state_dict()
    by_norm = {_norm_key(k): k for k in own}
    match: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        name = key if key in own else by_norm.get(_norm_key(key))
        if name is not None and own[name].shape == value.shape:
            match[name] = value
    if match:
        module.load_state_dict(match, strict=False)
    return len(match)
