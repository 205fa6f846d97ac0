"""Checkpoints as docs/design.md defines them, written atomically and read without unpickling.

A run directory holds, for ``last`` and ``best``:

- ``NAME.safetensors``: the weights to run (EMA when on) plus metadata key ``cspwrc`` = JSON of ``model`` (the
  detector's nested config, ``model.config``), ``num_classes``, ``class_names``, ``category_ids``, ``img``, ``epoch``.
  Reading it back into a detector is :mod:`cspwrc.det.load`'s (:func:`~cspwrc.det.load.load_detector`, also
  importable from here, as are ``model_section`` and ``backbone_section``), so that inference needs no engine.
- ``NAME.state.pt``: the training state, plain tensors and containers only, read with
  ``torch.load(weights_only=True)``.

Both are written with :func:`cspwrc.atomic.atomic_write`: a crash at any moment leaves either the old or the new
file, never a torn one; a failed write (full disk, read-only folder) raises :class:`cspwrc.atomic.WriteError`
and leaves the previous file untouched. A file that is not a checkpoint raises :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save_bytes

from cspwrc.atomic import atomic_write, write_bytes
from cspwrc.det.load import backbone_section, load_detector, model_section  # noqa: F401 - re-exported: old home
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
