"""What stops a training run on purpose, and the :class:`TrainingStopped` it raises (exit 3).

* Non-finite values (``train.nan_policy``). Under ``stop`` (the default) a :class:`FiniteGuard` records the first
  non-finite loss or gradient norm on the device, so no step waits for the host; the trainer reads it every
  ``Trainer.finite_check_steps`` steps and at the end of every epoch, before evaluation and before any checkpoint
  is written, so a bad step never reaches a saved file. ``skip`` must decide before each optimizer step, so it asks
  :func:`all_finite` (a host sync) every step.
* SIGTERM / SIGINT (:class:`StopSignals`): stop after the current step; a second signal stops at once.
* A checkpoint, record or picture that cannot be written (:func:`cannot_save`): the previous files are kept.

Every message names what was kept (:func:`kept_note`, :func:`nonfinite_stop`) and how to go on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cspwrc.engine import distributed as dist
from cspwrc.engine.report import LOSS_KEYS
from cspwrc.errors import TrainingStopped, shorten  # TrainingStopped: re-exported (its old home)

__all__ = ["FiniteGuard", "StopSignals", "TrainingStopped", "all_finite", "cannot_save", "describe", "kept_note",
           "nonfinite_stop"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class FiniteGuard:
    """The first non-finite step since the last :meth:`first`, recorded on the device (no host sync).

    ``record`` is a few tiny kernels queued behind the step; ``first`` reads them (one sync, and one
    all-reduce so that every DDP rank stops together) and returns ``(global step, what, losses)`` or None.
    """

    WHAT = ("loss", "gradient")

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.what = torch.zeros((), dtype=torch.int64, device=device)
        self.losses = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=device)

    def record(self, step: int, what: str, value: torch.Tensor, losses: torch.Tensor) -> None:
        """``value``: the tensor that must be finite; ``losses`` ``float64 [len(LOSS_KEYS)]`` of that step."""
        new = ~torch.isfinite(value).all() & (self.step < 0)
        self.step = torch.where(new, step, self.step)
        self.what = torch.where(new, self.WHAT.index(what), self.what)
        self.losses = torch.where(new, losses, self.losses)

    def first(self) -> tuple[int, str, list[float]] | None:
        if float(dist.all_reduce_mean((self.step >= 0).double())) == 0.0:
            return None
        return int(self.step), self.WHAT[int(self.what)], self.losses.tolist()


def all_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every rank (DDP must take or skip a step together); a host sync."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(value).all()) else 1.0])
    return float(dist.all_reduce_mean(bad)) == 0.0


def describe(names: Sequence[str], values: Sequence[Any]) -> str:
    """``loss=nan, loss_cls=0.5``: the values of a bad step for a message."""
    return ", ".join(f"{k}={float(v.detach()) if torch.is_tensor(v) else v}"
                     for k, v in zip(names, values, strict=True))


def cannot_save(error: str) -> TrainingStopped:
    """The stop of a run whose checkpoint, record or picture could not be written (``error`` names the file)."""
    return TrainingStopped(f"{error}; stopping: a run that cannot save would lose its work")


def kept_note(out: Path, epochs_done: int, epochs: int) -> str:
    """Which checkpoint a stopped run leaves in ``out`` and how to continue."""
    if epochs_done == 0 or not (out / "last.state.pt").exists():
        return "no epoch had finished, so there is no checkpoint to resume from"
    return (f"kept {shorten(out / 'last.state.pt')} (epoch {epochs_done} of {epochs}); continue with --resume "
            f"{shorten(out)}")


def nonfinite_stop(what: str, epoch: int, step: int, detail: str, policy: str, skipped: int, out: Path,
                   epochs_done: int) -> TrainingStopped:
    """The stop of a non-finite ``what`` (loss, gradient) at 0-based ``epoch`` and global ``step``."""
    kept = out / "last.safetensors"
    where = f"last good checkpoint kept: {kept} (epoch {epochs_done})" if kept.exists() else \
        "no checkpoint had been written yet"
    return TrainingStopped(
        f"non-finite {what} at epoch {epoch + 1}, step {step}: {detail}. Stopping "
        f"(train.nan_policy={policy}, {skipped} skipped); {where}. "
        f"Try a lower optim.lr, train.grad_clip, or check the data.")


class StopSignals:
    """SIGTERM/SIGINT ask for a stop after the current step: :meth:`install` ... :meth:`restore` around the loop.

    The handler only records the signal (``received``); the loop asks :meth:`requested` after every step. A second
    signal raises ``KeyboardInterrupt`` at once: the last checkpoint is still intact.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        self.log(f"{signal.Signals(signum).name} received: stopping after this step (again to stop at once)")

    def requested(self) -> bool:
        """Whether any rank was asked to stop (one tiny all-reduce under DDP)."""
        return dist.any_rank(self.received is not None)

    def stopped(self, epoch: int, kept: str) -> TrainingStopped:
        name = signal.Signals(self.received).name if self.received is not None else "a stop signal"
        return TrainingStopped(f"{name} during epoch {epoch + 1}: stopped; {kept}")
