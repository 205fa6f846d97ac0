"""A run's progress (:class:`RunState`) and its checkpoint form, ``NAME.state.pt``: built, checked and restored.

Every epoch starts from seeds derived from ``(train.seed, epoch)`` (:func:`epoch_seed`; torch/python/numpy here, the
sampler and augmentation streams in :func:`cspwrc.data.prepare_epoch`), so an epoch's result depends only on the
state at its start.

The state file holds the :class:`RunState` fields, the raw model, optimizer, scheduler, AMP scaler and EMA weights,
the full run config and the weights' metadata (docs/design.md); plain tensors and containers only. ``--resume`` reads
it (:func:`load_resume`), checks that it fits the run (:func:`check_resume_fits`) and restores it
(:func:`restore_training_state`), after which a run continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from cspwrc.det.load import backbone_section
from cspwrc.engine.checkpoint import read_state
from cspwrc.engine.config import ConfigError, RunConfig, from_dict, merge, validate
from cspwrc.engine.optim import WarmupScheduler
from cspwrc.errors import CheckpointError, shorten
from cspwrc.weights import load_mismatch

__all__ = ["RunState", "build_training_state", "check_resume_fits", "epoch_seed", "extension_note", "load_resume",
           "restore_training_state", "seed_everything"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x7E]).generate_state(1)[0])


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    global_step: int = 0  # batches trained on
    optimizer_steps: int = 0  # fewer than batches with a nominal batch (gradient accumulation); the EMA counts these
    best_map: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    nan_skipped: int = 0
    read_skipped: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0

    def patience_exhausted(self, patience: int) -> bool:
        """Early stopping: ``patience`` epochs since the best mAP, decided right after an evaluated epoch (a pure
        function of config and state, so a resumed run decides as the uninterrupted one did)."""
        evaluated = bool(self.history) and not math.isnan(self.history[-1]["map"])
        return patience > 0 and self.best_epoch > 0 and evaluated and self.epoch - self.best_epoch >= patience


def _resolve_resume(path: str | Path) -> Path:
    path = Path(path)
    return path / "last.state.pt" if path.is_dir() else path


def load_resume(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """The saved run config (with ``overrides`` applied, e.g. more epochs) and the training state."""
    file = _resolve_resume(path)
    state = read_state(file)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{file}: not a cspwrc training state (no 'config'/'model'); pass last.state.pt")
    data = state["config"]
    data["train"]["out"] = str(file.parent)  # continue in the folder the state lives in
    cfg = from_dict(merge(data, overrides or {}), f"{file} + command line")
    validate(cfg)
    done = int(state.get("epoch", 0))
    if cfg.train.epochs < done:
        raise ConfigError(f"--epochs {cfg.train.epochs}: {file} has already completed {done} epochs; resume with "
                          f"--epochs {done} or more (more epochs extend the schedule, see docs/training.md), or "
                          f"start a new run from its weights with --weights {file.parent / 'last.safetensors'}")
    return cfg, state


def build_training_state(run: RunState, model: nn.Module, optimizer: Any, scheduler: WarmupScheduler, scaler: Any,
                         ema: ModelEmaV3 | None, config: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``NAME.state.pt`` dict; ``config`` is the run config as a dict, ``meta`` the weights' metadata. Every
    :class:`RunState` field is saved under its own name (``dataclasses.asdict``), the list
    :func:`restore_training_state` reads back: a new field round-trips without a second list to update."""
    return {**asdict(run),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "config": config, "meta": meta}


def resume_mismatch(out: Path, st: dict[str, Any], what: str) -> str:
    return (f"--resume {shorten(out)} (epoch {st.get('epoch', '?')}) does not fit this run's config: {what}. "
            f"Resume without --model/--data/--set model.* (the run's saved config is used), or start a new "
            f"run with another --out and --weights {shorten(out / 'last.safetensors')} to initialise from it")


def check_resume_fits(st: dict[str, Any], model_name: str, num_classes: int, out: Path) -> None:
    """The state must come from the same model and class count as this run's config and data."""
    meta = st.get("meta") if isinstance(st.get("meta"), dict) else {}
    saved = (backbone_section(meta).get("name"), meta.get("num_classes"))
    now = (model_name, num_classes)
    diffs = [f"{what}: saved {a!r}, now {b!r}"
             for what, a, b in zip(("model", "number of classes"), saved, now, strict=True)
             if a is not None and a != b]
    if diffs:
        raise CheckpointError(resume_mismatch(out, st, "; ".join(diffs)))


def restore_training_state(st: dict[str, Any], out: Path, model: nn.Module, optimizer: Any, scaler: Any,
                           ema: ModelEmaV3 | None) -> RunState:
    """Load the weights, optimizer, scaler and EMA of ``st`` in place and return its :class:`RunState`.

    The schedule is a pure function of (config, global step): it is rebuilt, not loaded, so resuming with more
    ``--epochs`` stretches the decay over the new length instead of keeping the old one.
    """
    try:
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:  # e.g. other model options: hundreds of shape lines
        raise CheckpointError(resume_mismatch(out, st, f"the saved weights do not fit this model "
                                                       f"({load_mismatch(err)})")) from err
    scaler.load_state_dict(st["scaler"])
    if ema is not None and st.get("ema") is not None:
        ema.module.load_state_dict(st["ema"])
    run = RunState(**{f.name: st[f.name] for f in fields(RunState) if f.name in st})
    if "optimizer_steps" not in st:  # a state from before gradient accumulation: one step per batch
        run.optimizer_steps = run.global_step
    return run


def extension_note(st: dict[str, Any], epochs: int) -> str | None:
    """The log note of a resume with another ``--epochs`` than the state was planned with, else None."""
    planned = int(st.get("config", {}).get("train", {}).get("epochs", epochs))
    if planned == epochs:
        return None
    return (f"note: extending the run from {planned} to {epochs} epochs: the lr schedule (warmup, decay to min_lr at "
            f"the last epoch) and close_mosaic are re-planned over {epochs} epochs, so the lr rises from where "
            f"{planned} epochs had left it")
