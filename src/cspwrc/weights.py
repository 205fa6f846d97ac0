"""Reading weights, the one loader: eval/predict/export (:func:`cspwrc.det.load.load_detector`),
``--weights`` (:func:`~cspwrc.engine.checkpoint.init_from_weights`) and ``cspwrc wrc-weights`` all read through here.

Nothing is unpickled: ``.safetensors`` is read with ``safetensors.safe_open`` (its ``metadata()`` is the header's
``__metadata__``, so no hand-parsed header), everything else with ``torch.load(weights_only=True)``.

* :func:`read_safetensors` / :func:`read_pth`: one file format each; every failure is a :class:`CheckpointError`
  naming the file.
* :func:`state_dict_of`: container unwrapping in one place (:data:`CONTAINER_KEYS`), plus timm's
  ``clean_state_dict`` for DDP / ``torch.compile`` prefixes.
* :func:`feature_key` / :func:`rename_like`: timm's ``features_only`` wrappers flatten module names
  (``stages.0`` → ``stages_0``); names are compared in one spelling-independent form.

``timm.models.load_state_dict`` is not used for the reading itself: it drops the safetensors metadata (the
detector's architecture), raises ``AssertionError``/``FileNotFoundError`` rather than an error naming the fault,
and does not know the training state's ``ema`` key. Its container order and ``clean_state_dict`` are kept.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from timm.models import clean_state_dict

from cspwrc.errors import CheckpointError, shorten

__all__ = [
    "CONTAINER_KEYS",
    "META_KEY",
    "feature_key",
    "load_mismatch",
    "read_any_weights",
    "read_pth",
    "read_safetensors",
    "rename_like",
    "state_dict_of",
]

META_KEY = "cspwrc"  # safetensors metadata key holding the detector's JSON config
# Where a state dict sits inside a .pth container, first match wins: the training state's EMA weights ("ema",
# next to the raw "model"), then timm's order (EMA first as timm's use_ema=True, then state_dict, model).
CONTAINER_KEYS = ("ema", "state_dict_ema", "model_ema", "state_dict", "model")

T = TypeVar("T")


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the ``cspwrc`` metadata (``{}`` when absent, e.g. a timm backbone file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: cannot read checkpoint: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file: {err}") from err
    try:
        meta = json.loads(meta_raw) if meta_raw else {}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: metadata key {META_KEY!r} is not valid JSON: {err}") from err
    return tensors, meta


def read_pth(path: str | Path) -> dict[str, Any]:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True``; a pickled payload (custom class, __reduce__) is
    refused."""
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


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state_dict_of(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict in a loaded container: the first of :data:`CONTAINER_KEYS` that holds one, else the
    container's own tensors; DDP/``torch.compile`` prefixes removed (timm's ``clean_state_dict``)."""
    for key in CONTAINER_KEYS:
        if _is_state_dict(obj.get(key)):
            return clean_state_dict(obj[key])
    return clean_state_dict({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def read_any_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata from a ``.safetensors`` file, or from a weights-only ``.pt``/``.pth``/``.bin``
    (a training state's EMA or model weights, a ``state_dict``/``model`` wrapper, or a plain state dict; the
    metadata is its ``meta`` entry, ``{}`` when absent)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path)
        return clean_state_dict(tensors), meta
    obj = read_pth(path)
    tensors = state_dict_of(obj)
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (expected a state dict)")
    return tensors, obj["meta"] if isinstance(obj.get("meta"), dict) else {}


def feature_key(name: str) -> str:
    """Spelling-independent form of a parameter or module name.

    timm's ``features_only`` wrappers (``FeatureListNet``, ``FeatureDictNet``) flatten nested ``nn.Sequential``
    names with ``_`` (``stages.0.blocks`` → ``stages_0.blocks``, ``stem.conv1`` → ``stem_conv1``), while
    ``feature_info`` and plain models keep the dots; reading every ``_`` as ``.`` makes both spellings equal.
    """
    return name.replace("_", ".")


def rename_like(reference: Iterable[str], tensors: Mapping[str, T]) -> dict[str, T]:
    """``tensors`` with every key that names an entry of ``reference`` (exactly, or equal under
    :func:`feature_key`) spelled as in ``reference``; other keys are kept as they are."""
    reference = list(reference)
    exact = set(reference)
    by_key = {feature_key(k): k for k in reference}
    return {(key if key in exact else by_key.get(feature_key(key), key)): value for key, value in tensors.items()}


def load_mismatch(err: Exception, limit: int = 200) -> str:
    """``load_state_dict``'s error as one line: torch writes a line per tensor (hundreds for another layout), this
    gives their count and the first (``N differences, first: size mismatch for ...``); a one-line error as is."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) < 2:
        return shorten(lines[0] if lines else repr(err), limit)
    return f"{len(lines) - 1} differences, first: {shorten(lines[1], limit)}"
