"""Detection training loop: timm optimizer/scheduler/EMA, checkpoints, evaluation, DDP, failure policy.

Reproducibility: every epoch starts from seeds derived from ``(train.seed, epoch)`` (torch/python/numpy
here, the sampler and augmentation streams in :func:`cspwrc.data.prepare_epoch`), so an epoch's result
depends only on the state at its start. ``--resume`` restores that state from ``last.state.pt`` and so
continues exactly as the uninterrupted run would have (bit for bit on CPU).

Failure policy for a run: a non-finite loss (or gradient norm) stops the run with a clear message
(``train.nan_policy: stop``) or skips the step and counts it (``skip``); in both cases nothing is
written for the bad step, so ``last``/``best`` stay at the last good epoch. A checkpoint that cannot be
written (full disk, read-only folder) stops the run loudly, keeping the previous files. SIGTERM/SIGINT stop
the run after the current step (a second one stops at once) with the last finished epoch's checkpoint kept;
a DDP peer that dies stops the others (:func:`cspwrc.engine.distributed.peer_lost`); an image that keeps failing
after the data checks (:class:`cspwrc.data.SampleReadError`, also from a loader worker) stops the run naming the
last file; ``RUN/run.lock`` keeps a second process out of a live run's directory (:mod:`cspwrc.engine.lock`).
All of these are exit 3 (stopped) or exit 2 (refused before training) through :mod:`cspwrc.errors`.

No host sync per step under ``stop``: a :class:`FiniteGuard` records the first non-finite step on the device
and is read every :attr:`Trainer.finite_check_steps` steps and at the end of every epoch, before evaluation
and before any checkpoint is written; the losses are summed on the device too. (``skip`` must decide before
each optimizer step, so it reads the flag every step.)
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from cspwrc.atomic import WriteError, make_dir, write_bytes, write_json
from cspwrc.data import (
    SampleReadError,
    build_datasets,
    build_loader,
    count_skipped,
    ensure_shapes_dataset,
    prepare_epoch,
    read_error_message,
)
from cspwrc.data.loader import auto_workers
from cspwrc.det import YoloDetector
from cspwrc.draw import batch_grid
from cspwrc.engine import distributed as dist
from cspwrc.engine.checkpoint import CheckpointError, backbone_section, init_from_weights, read_state, save_checkpoint
from cspwrc.engine.config import ConfigError, RunConfig, from_dict, merge, to_dict, validate
from cspwrc.engine.eval_plots import write_eval_plots
from cspwrc.engine.evaluate import STAT_NAMES, EvalResult, evaluate
from cspwrc.engine.lock import LOCK_NAME, RunLock, is_held
from cspwrc.engine.optim import WarmupScheduler, accumulate_steps, build_optimizer
from cspwrc.engine.report import LOSS_KEYS, plot_curves, write_results_csv
from cspwrc.errors import TrainingStopped, shorten  # TrainingStopped: re-exported (its old home)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PLOT_BATCHES = 3  # train_batch*.jpg pictures at the start of the run and of the close-mosaic epochs


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


def resolve_amp(setting: bool | str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` -> the autocast dtype on this device, or None (fp32). auto/true: bf16 where the GPU has it."""
    if device.type != "cuda" or setting in (False, "off"):
        return None
    if setting in (True, "auto"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.amp: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or auto")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x7E]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------ run state


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


class Trainer:
    """One training run. ``Trainer(cfg).fit()`` or ``Trainer(cfg, resume_state=state).fit()``."""

    #: steps between two reads of the device-side finite flag (see the module doc); each read is one host sync
    finite_check_steps = 50

    def __init__(self, cfg: RunConfig, resume_state: dict[str, Any] | None = None, progress: bool = True,
                 new_run_dir: bool = False) -> None:
        """``new_run_dir``: when ``train.out`` already holds a run, use the next free numbered folder instead."""
        self._started = time.perf_counter()
        self.cfg = cfg
        self.device = dist.resolve_device(cfg.train.device)
        dist.init_distributed(self.device)
        self.progress = progress and dist.is_main()
        if new_run_dir:
            # Rank 0 picks the folder for all ranks (each picking its own could race to different numbers).
            free = dist.broadcast_object(str(next_free_run_dir(Path(cfg.train.out))) if dist.is_main() else None)
            if free != cfg.train.out:
                self._log(f"note: {cfg.train.out} holds a previous run; this run goes to {free} (--exist-ok to reuse)")
                cfg.train.out = free  # the saved config names the folder the run really is in
        self.out = Path(cfg.train.out)
        self.lock = RunLock(self.out)
        self._stop_signal: int | None = None
        try:
            # Every rank sets up, then all agree: a fault one rank finds (the lock is rank 0's alone) stops all of
            # them with the same exit code instead of leaving the others waiting in DDP's first collective.
            dist.agree(lambda: self._setup(resume_state))
        except BaseException:
            self.lock.release()
            dist.cleanup()
            raise
        if dist.is_dist():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        use_tb = dist.is_main() and cfg.train.tensorboard
        self.tb = _tensorboard_writer(self.out / "tb", self.state.epoch + 1) if use_tb else None

    def _setup(self, resume_state: dict[str, Any] | None) -> None:
        if dist.is_main():
            make_dir(self.out, "--out (train.out)")
            self.lock.acquire()  # before the clean-up below: never remove a live run's temp files
            _remove_stale_temp_files(self.out)
        seed_everything(self.cfg.train.seed)
        self._build_data()
        self._build_model(init_weights=resume_state is None)  # a resumed run gets its weights from the state
        self.state = RunState()
        if resume_state is not None:
            self._restore(resume_state)

    # -------------------------------------------------------------------------------------- setup
    def _build_data(self) -> None:
        cfg = self.cfg
        data_path = cfg.data.path or str(ensure_shapes_dataset())
        self.data_path = data_path
        self.train_set, self.val_set = build_datasets(data_path, img=cfg.train.img, augment=cfg.augment,
                                                      seed=cfg.train.seed, progress=self.progress,
                                                      cache=cfg.data.cache)
        workers = cfg.data.workers
        self.workers = auto_workers(self.device.type, dist.world_size()) if workers == "auto" else workers
        common = dict(workers=self.workers, seed=cfg.train.seed, distributed=dist.is_dist(),
                      rank=dist.rank(), world_size=dist.world_size(), pin_memory=self.device.type == "cuda")
        self.train_loader = build_loader(self.train_set, cfg.train.batch, train=True, **common)
        self.val_loader = build_loader(self.val_set, cfg.train.batch, train=False, **common)
        self.coco_gt = self.val_set.coco_gt() if dist.is_main() else None
        n = len(self.train_loader)
        if n == 0:
            raise ConfigError(f"{data_path}: {len(self.train_set)} training images give no full batch of "
                              f"{cfg.train.batch} per process; lower --batch")
        self.steps_per_epoch = min(n, cfg.train.max_steps_per_epoch) if cfg.train.max_steps_per_epoch > 0 else n

    def _build_model(self, init_weights: bool) -> None:
        cfg = self.cfg
        model = YoloDetector(cfg.model, self.train_set.num_classes)  # cfg.model is the detector's checked config
        if cfg.train.weights and init_weights:
            self._log(init_from_weights(model, cfg.train.weights))
        self.model = model.to(self.device)
        self.channels_last = cfg.train.channels_last and self.device.type == "cuda"
        if self.channels_last:  # before the EMA copy and the optimizer: both see NHWC weights
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest conv kernels once
        self.optimizer = build_optimizer(self.model, cfg, dist.world_size())
        self.scheduler = WarmupScheduler(self.optimizer, cfg, self.steps_per_epoch)
        # A nominal batch sums the loss over the images of all ranks (DDP averages gradients over ranks).
        nominal = cfg.optim.nominal_batch
        self.accumulate = accumulate_steps(cfg.train.batch, dist.world_size(), nominal)
        self.loss_scale = float(cfg.train.batch * dist.world_size()) if nominal > 0 else 1.0
        self.ema = self._build_ema() if cfg.ema.enabled else None
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        self.use_amp = self.amp_dtype is not None
        # bf16 has fp32's range: only fp16 needs loss scaling (whose skip decision is a host sync per step).
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ddp_model: nn.Module = self.model  # wrapped in DDP by __init__ once every rank has set up

    def _build_ema(self) -> nn.Module:
        e = self.cfg.ema
        return ModelEmaV3(self.model, decay=e.decay, use_warmup=e.warmup, warmup_power=e.warmup_power)

    def meta(self) -> dict[str, Any]:
        """The ``cspwrc`` safetensors metadata: enough to rebuild the detector from the file alone."""
        # model.config: the full nested DetectorConfig (training-only options reset), which rebuilds it exactly.
        return {"model": self.model.config, "num_classes": self.train_set.num_classes,
                "class_names": list(self.train_set.class_names),
                "category_ids": [int(c) for c in self.train_set.label_to_category_id],
                "img": self.cfg.train.img, "epoch": self.state.epoch}

    # -------------------------------------------------------------------------------------- checkpoints
    def _training_state(self) -> dict[str, Any]:
        s = self.state
        return {"epoch": s.epoch, "global_step": s.global_step, "optimizer_steps": s.optimizer_steps,
                "best_map": s.best_map, "best_epoch": s.best_epoch,
                "history": s.history, "nan_skipped": s.nan_skipped, "read_skipped": s.read_skipped,
                "train_time_s": s.train_time_s, "eval_time_s": s.eval_time_s,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "config": to_dict(self.cfg), "meta": self.meta()}

    def _restore(self, st: dict[str, Any]) -> None:
        self._check_resume_fits(st)
        try:
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:  # e.g. other model options: hundreds of shape lines
            raise CheckpointError(self._resume_mismatch(st, f"the saved weights do not fit this model "
                                                            f"({shorten(str(err).splitlines()[-1], 200)})")) from err
        # The schedule is a pure function of (config, global step): it is rebuilt, not loaded, so resuming
        # with more --epochs stretches the decay over the new length instead of keeping the old one.
        self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None and st.get("ema") is not None:
            self.ema.module.load_state_dict(st["ema"])
        fields = RunState.__dataclass_fields__
        self.state = RunState(**{k: st[k] for k in fields if k in st})
        if "optimizer_steps" not in st:  # a state from before gradient accumulation: one step per batch
            self.state.optimizer_steps = self.state.global_step
        self._log(f"resumed from {self.out} after epoch {self.state.epoch} (step {self.state.global_step})")
        planned = int(st.get("config", {}).get("train", {}).get("epochs", self.cfg.train.epochs))
        if planned != self.cfg.train.epochs:
            self._log(f"note: extending the run from {planned} to {self.cfg.train.epochs} epochs: the lr schedule "
                      f"(warmup, decay to min_lr at the last epoch) and close_mosaic are re-planned over "
                      f"{self.cfg.train.epochs} epochs, so the lr rises from where {planned} epochs had left it")

    def _check_resume_fits(self, st: dict[str, Any]) -> None:
        """The state must come from the same model and class count as this run's config and data."""
        meta = st.get("meta") if isinstance(st.get("meta"), dict) else {}
        saved = (backbone_section(meta).get("name"), meta.get("num_classes"))
        now = (self.cfg.model.backbone.name, self.train_set.num_classes)
        diffs = [f"{what}: saved {a!r}, now {b!r}" for what, a, b in zip(("model", "number of classes"), saved, now)
                 if a is not None and a != b]
        if diffs:
            raise CheckpointError(self._resume_mismatch(st, "; ".join(diffs)))

    def _resume_mismatch(self, st: dict[str, Any], what: str) -> str:
        return (f"--resume {shorten(self.out)} (epoch {st.get('epoch', '?')}) does not fit this run's config: {what}. "
                f"Resume without --model/--data/--set model.* (the run's saved config is used), or start a new "
                f"run with another --out and --weights {shorten(self.out / 'last.safetensors')} to initialise from it")

    def _save(self, names: list[str]) -> None:
        """Rank 0 writes checkpoints and records; every rank learns whether it worked (none waits on a dead one)."""
        error = None
        if dist.is_main():
            weights = (self.ema.module if self.ema is not None else self.model).state_dict()
            state, meta = self._training_state(), self.meta()
            try:
                for name in names:
                    save_checkpoint(self.out, name, weights, meta, state)
                # Records after checkpoints: a resumed run rewrites them from the checkpoint's history.
                write_results_csv(self.out / "results.csv", self.state.history)
                plot_curves(self.out / "curves.png", self.state.history)
            except WriteError as err:
                error = str(err)
        error = dist.broadcast_object(error)
        if error:
            raise TrainingStopped(f"{error}\nstopping: a run that cannot save would lose its work")

    # -------------------------------------------------------------------------------------- loop
    def _log(self, msg: str) -> None:
        if dist.is_main():
            tqdm.write(msg)

    def fit(self) -> dict[str, Any]:
        cfg, start = self.cfg.train, time.perf_counter()
        self._log(f"training {self.cfg.model.backbone.name} on {self.data_path}: {len(self.train_set)} train / "
                  f"{len(self.val_set)} val images, {self.train_set.num_classes} classes, img {cfg.img}, "
                  f"{cfg.epochs} epochs x {self.steps_per_epoch} steps, device {self.device}, "
                  f"world size {dist.world_size()}, run dir {self.out}")
        self._log(f"{self.workers} loader workers, data cache {self.cfg.data.cache}, amp {self.amp_dtype or 'off'}, "
                  f"channels_last {self.channels_last}; set-up took {start - self._started:.1f} s")
        result: EvalResult | None = None
        previous = self._catch_stop_signals()
        try:
            while self.state.epoch < cfg.epochs and not self._patience_exhausted():
                result = self._run_epoch(self.state.epoch) or result
            if self._patience_exhausted() and self.state.epoch < cfg.epochs:
                self._log(f"early stopping: no val mAP gain for {self.state.epoch - self.state.best_epoch} epochs "
                          f"(patience {cfg.patience}); best {self.state.best_map:.4f} at epoch {self.state.best_epoch}")
            if result is None:  # resumed a finished run: score the saved weights again
                result = self._evaluate(self.state.epoch - 1)
            return self._finish(result, time.perf_counter() - start)
        except SampleReadError as err:  # an image kept failing after the checks (train or val, any loader worker)
            raise TrainingStopped(f"data broke during epoch {self.state.epoch + 1}: {read_error_message(err)}; "
                                  f"restore or remove the file(s); {self._kept()}") from err
        except RuntimeError as err:
            if isinstance(err, TrainingStopped):
                raise
            if self._stop_signal is not None:  # Ctrl-C also reached the loader's workers, which exit: same stop
                raise self._stopped(self.state.epoch) from err
            if not dist.peer_lost(err):
                raise
            raise TrainingStopped(f"{dist.peer_lost_message(err)}; {self._kept()}") from err
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.lock.release()
            if self.tb is not None:
                self.tb.close()
            dist.cleanup()

    def _patience_exhausted(self) -> bool:
        """Early stopping: ``patience`` epochs since the best mAP, decided right after an evaluated epoch (a
        pure function of config and state, so a resumed run decides as the uninterrupted one did)."""
        p, s = self.cfg.train.patience, self.state
        evaluated = bool(s.history) and not math.isnan(s.history[-1]["map"])
        return p > 0 and s.best_epoch > 0 and evaluated and s.epoch - s.best_epoch >= p

    # -------------------------------------------------------------------------------------- stopping
    def _catch_stop_signals(self) -> dict[int, Any]:
        """SIGTERM/SIGINT ask for a stop after the current step; returns the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # signal handlers can only be set from the main thread

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:  # a second signal: stop now, the last checkpoint is still intact
                raise KeyboardInterrupt
            self._stop_signal = signum
            self._log(f"{signal.Signals(signum).name} received: stopping after this step (again to stop at once)")

        return {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}

    def _check_stop(self, epoch: int) -> None:
        """Raise :class:`TrainingStopped` on every rank when any rank was asked to stop."""
        if dist.any_rank(self._stop_signal is not None):
            raise self._stopped(epoch)

    def _stopped(self, epoch: int) -> TrainingStopped:
        name = signal.Signals(self._stop_signal).name if self._stop_signal is not None else "a stop signal"
        return TrainingStopped(f"{name} during epoch {epoch + 1}: stopped; {self._kept()}")

    def _kept(self) -> str:
        """Which checkpoint a stopped run leaves and how to continue."""
        if self.state.epoch == 0 or not (self.out / "last.state.pt").exists():
            return "no epoch had finished, so there is no checkpoint to resume from"
        return (f"kept {shorten(self.out / 'last.state.pt')} (epoch {self.state.epoch} of "
                f"{self.cfg.train.epochs}); continue with --resume {shorten(self.out)}")

    def _run_epoch(self, epoch: int) -> EvalResult | None:
        cfg = self.cfg.train
        seed_everything(epoch_seed(cfg.seed, epoch))
        mosaic = epoch < cfg.epochs - cfg.close_mosaic
        prepare_epoch(self.train_loader, epoch, mosaic=mosaic)
        self.model.set_epoch(epoch)
        # Pictures of what the model is fed: the first batches of the run and of the close-mosaic epochs.
        closing = not mosaic and epoch - 1 < cfg.epochs - cfg.close_mosaic
        t0 = time.perf_counter()
        means, images = self._train_one_epoch(epoch, PLOT_BATCHES if epoch == 0 or closing else 0)
        seconds = time.perf_counter() - t0
        self.state.train_time_s += seconds
        self._speed = (images, seconds)  # for the epoch's log line (not in the history: it is not reproducible)
        if cfg.time is not None:
            self._fit_epochs_to_time(epoch)
        result = None
        if (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs:
            result = self._evaluate(epoch)
        self._end_epoch(epoch, means, result)
        return result

    def _fit_epochs_to_time(self, epoch: int) -> None:
        """``train.time``: set ``epochs`` to what fits the budget at the mean epoch time so far, as Ultralytics does.

        Counted: training and evaluation time of this run (resumes included), not start-up. The schedule (warmup,
        decay, close_mosaic) is a function of ``epochs`` and the global step, so it is rebuilt and stretches or
        shrinks to the new length; the run never ends before the epoch that just finished. The final evaluation
        comes on top of the budget. The adjusted ``epochs`` is saved with the run config, so ``--resume`` goes on
        with it.
        """
        cfg, s = self.cfg.train, self.state
        done = epoch + 1
        spent = s.train_time_s + s.eval_time_s
        fitted = max(done, math.floor(cfg.time * 3600.0 * done / spent)) if spent > 0 else cfg.epochs
        if fitted != cfg.epochs:
            self._log(f"time budget {cfg.time * 60:.1f} min: {spent / done:.0f} s per epoch -> {fitted} epochs "
                      f"(was {cfg.epochs})")
            cfg.epochs = fitted
            self.scheduler = WarmupScheduler(self.optimizer, self.cfg, self.steps_per_epoch)
            self.scheduler.step(s.global_step)  # the lrs of the new schedule now, not its initial warmup_lr

    def _batches(self, epoch: int) -> Iterator[tuple[int, Any, list[dict[str, Any]]]]:
        bar = tqdm(self.train_loader, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.progress, dynamic_ncols=True, leave=False)
        for i, (images, targets) in enumerate(bar):
            if i >= self.steps_per_epoch:
                break
            yield i, images, targets
            bar.set_postfix_str(self._postfix)

    def _train_one_epoch(self, epoch: int, plot_batches: int = 0) -> tuple[dict[str, float], int]:
        """Mean losses of the epoch's taken steps (all ranks) and the number of images stepped on (all ranks); the
        first ``plot_batches`` batches are also saved as pictures."""
        self.ddp_model.train()
        sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=self.device)  # no host sync per step
        done, self._postfix, skipped = 0, "", 0
        self.guard = FiniteGuard(self.device)
        pending = 0  # batches whose gradients wait for the next optimizer step (nominal batch)
        for i, images, targets in self._batches(epoch):
            skipped += count_skipped(targets)
            if i < plot_batches and dist.is_main():
                self._save_batch_picture(images, targets)
            self.scheduler.step(self.state.global_step)
            pending += 1
            # An epoch ends on an optimizer step, so a resumed run continues exactly (no gradients in flight).
            step_now = pending >= self.scheduler.accumulate(self.state.global_step, self.accumulate) or \
                i + 1 == self.steps_per_epoch
            losses = self._step(images, targets, epoch, step_now)
            if step_now:
                pending = 0
            self.state.global_step += 1
            self._check_stop(epoch)
            if losses is not None:
                sums += losses
                done += 1
            if (i + 1) % self.finite_check_steps == 0:
                self._check_guard(epoch)
                self._postfix = " ".join(f"{k.removeprefix('loss_') if k != 'loss' else 'loss'}={v:.3f}"
                                         for k, v in zip(LOSS_KEYS, (sums / max(done, 1)).tolist())
                                         ) + f" lr={self.scheduler.lr():.2e}"
        self._check_guard(epoch)  # before evaluation and before this epoch's checkpoint
        means = dist.all_reduce_mean(sums / max(done, 1))
        self.state.read_skipped += dist.all_reduce_sum_int(skipped)  # every rank's substitutions, not rank 0's
        return dict(zip(LOSS_KEYS, means.tolist())), dist.all_reduce_sum_int(done * self.cfg.train.batch)

    def _save_batch_picture(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> None:
        """``OUT/train_batch{step}.jpg``: the batch as the model gets it, boxes and class names drawn."""
        grid = batch_grid(images, targets, self.train_set.class_names)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if ok:
            try:
                write_bytes(self.out / f"train_batch{self.state.global_step}.jpg", data.tobytes())
            except WriteError as err:
                raise TrainingStopped(f"{err}\nstopping: a run that cannot save would lose its work") from err

    def _to_device(
        self, images: torch.Tensor, targets: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        # Pinned batches (CUDA) copy asynchronously; uint8 travels, the float conversion runs on the device.
        images = images.to(self.device, non_blocking=True)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(dtype=torch.float32, memory_format=fmt).div_(255.0)
        targets = [{"boxes": t["boxes"].to(self.device, non_blocking=True),
                    "labels": t["labels"].to(self.device, non_blocking=True)} for t in targets]
        return images, targets

    def _step(self, images: torch.Tensor, targets: list[dict[str, Any]], epoch: int, step_now: bool
              ) -> torch.Tensor | None:
        """Forward and backward of one batch, then the optimizer step when ``step_now`` (else the gradients
        accumulate, :mod:`cspwrc.engine.optim`). Returns the batch's losses ``float64 [len(LOSS_KEYS)]`` on the
        device; None when a non-finite loss or gradient was skipped (policy 'skip'). Under 'stop' a non-finite value
        is recorded in ``self.guard``, not checked."""
        images, targets = self._to_device(images, targets)
        # DDP all-reduces gradients only on the batch that steps; the others accumulate locally.
        sync = contextlib.nullcontext() if step_now or not dist.is_dist() else self.ddp_model.no_sync()
        with sync:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                losses = self.ddp_model(images, targets)
            loss = losses["loss"]
            values = torch.stack([losses[k].detach().to(torch.float64) if k in losses else
                                  torch.tensor(math.nan, dtype=torch.float64, device=self.device) for k in LOSS_KEYS])
            skip_policy = self.cfg.train.nan_policy == "skip"
            if not skip_policy:
                self.guard.record(self.state.global_step, "loss", loss.detach(), values)
            elif not self._finite_everywhere(loss.detach(), epoch, losses, "loss"):
                return None
            self.scaler.scale(loss * self.loss_scale).backward()
        if step_now and not self._optimizer_step(epoch, values):
            return None
        return values

    def _optimizer_step(self, epoch: int, values: torch.Tensor) -> bool:
        """Clip, step, clear the gradients and update the EMA; False when policy 'skip' dropped a non-finite
        gradient (the accumulated gradients are cleared either way)."""
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            # The fp16 scaler skips inf steps by design; in fp32/bf16 a non-finite norm is a real failure.
            if not self.scaler.is_enabled():
                if self.cfg.train.nan_policy != "skip":
                    self.guard.record(self.state.global_step, "gradient", norm.detach(), values)
                elif not self._finite_everywhere(norm.detach(), epoch, {"grad_norm": norm}, "gradient"):
                    self.optimizer.zero_grad(set_to_none=True)
                    return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.optimizer_steps)
        self.state.optimizer_steps += 1
        return True

    def _finite_everywhere(self, value: torch.Tensor, epoch: int, losses: dict[str, Any], what: str) -> bool:
        """All ranks agree whether the step is finite (DDP must take or skip a step together)."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(value).all()) else 1.0])
        bad = dist.all_reduce_mean(bad)
        if float(bad) == 0.0:
            return True
        detail = ", ".join(f"{k}={float(v.detach()) if torch.is_tensor(v) else v}" for k, v in losses.items())
        if self.cfg.train.nan_policy == "skip" and self.state.nan_skipped < self.cfg.train.max_nan_skips:
            self.state.nan_skipped += 1
            self._log(f"warning: non-finite {what} at epoch {epoch + 1} step {self.state.global_step} ({detail}); "
                      f"step skipped ({self.state.nan_skipped} so far)")
            return False
        raise self._nonfinite_stop(what, epoch, self.state.global_step, detail)

    def _check_guard(self, epoch: int) -> None:
        """Stop if the device recorded a non-finite step since the last check (policy 'stop')."""
        found = self.guard.first()
        if found is not None:
            step, what, losses = found
            raise self._nonfinite_stop(what, epoch, step, ", ".join(f"{k}={v}" for k, v in zip(LOSS_KEYS, losses)))

    def _nonfinite_stop(self, what: str, epoch: int, step: int, detail: str) -> TrainingStopped:
        kept = self.out / "last.safetensors"
        where = f"last good checkpoint kept: {kept} (epoch {self.state.epoch})" if kept.exists() else \
            "no checkpoint had been written yet"
        return TrainingStopped(
            f"non-finite {what} at epoch {epoch + 1}, step {step}: {detail}. Stopping "
            f"(train.nan_policy={self.cfg.train.nan_policy}, {self.state.nan_skipped} skipped); {where}. "
            f"Try a lower optim.lr, train.grad_clip, or check the data.")

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _evaluate(self, epoch: int) -> EvalResult:
        t0 = time.perf_counter()
        result = evaluate(self._eval_model(), self.val_loader, self.coco_gt, self.train_set.label_to_category_id,
                          self.device, amp=self.use_amp, progress=self.progress)
        self.state.eval_time_s += time.perf_counter() - t0
        self.state.read_skipped += result.read_failures  # val images that broke after the checks count too
        return result

    def _end_epoch(self, epoch: int, means: dict[str, float], result: EvalResult | None) -> None:
        s = self.state
        row = {"epoch": epoch + 1, **means, "lr": self.scheduler.lr(),
               "map": result.map if result else math.nan, "map50": result.map50 if result else math.nan,
               "time_s": s.train_time_s + s.eval_time_s}
        s.history.append(row)
        s.epoch = epoch + 1
        self._log_epoch(row)
        names = ["last"]
        if result is not None and result.map > s.best_map:
            s.best_map, s.best_epoch = result.map, epoch + 1
            names.append("best")
        self._save(names)

    def _log_epoch(self, row: dict[str, Any]) -> None:
        """One line per epoch (the record of a ``--no-progress`` log) and the same numbers to TensorBoard."""
        took = row["time_s"] - (self.state.history[-2]["time_s"] if len(self.state.history) > 1 else 0.0)
        losses = " ".join(f"{k.removeprefix('loss_')}={row[k]:.4f}" for k in LOSS_KEYS if k in row)
        evaluated = "" if math.isnan(row["map"]) else f" mAP={row['map']:.4f} mAP50={row['map50']:.4f}"
        images, seconds = self._speed
        self._log(f"epoch {row['epoch']}/{self.cfg.train.epochs}: {losses} lr={row['lr']:.3e} "
                  f"time={took:.1f}s{evaluated} train={seconds:.1f}s {images / seconds:.1f} img/s")
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                    group = "val" if key.startswith("map") else "train" if key.startswith("loss") else "misc"
                    self.tb.add_scalar(f"{group}/{key}", value, row["epoch"])
            self.tb.flush()

    def _finish(self, result: EvalResult, wall_s: float) -> dict[str, Any]:
        s = self.state
        metrics = {
            "map": result.map, "map50": result.map50, "stats": dict(zip(_stat_keys(), result.stats)),
            **result.summary(),  # per_class (instances, P/R/F1, AP) and the confusion matrix
            "val_images": result.num_images, "val_detections": result.num_detections, "world_size": dist.world_size(),
            "best_map": s.best_map, "best_epoch": s.best_epoch, "epochs": s.epoch,
            "early_stop": {"patience": self.cfg.train.patience,
                           "stopped_after_epoch": s.epoch if s.epoch < self.cfg.train.epochs else None},
            "train_time_s": s.train_time_s, "eval_time_s": s.eval_time_s, "wall_time_s_this_process": wall_s,
            "skips": {"nan_steps": s.nan_skipped, "read_failures": s.read_skipped,
                      "data_checks": {"train": _report_counts(self.train_set), "val": _report_counts(self.val_set)}},
            "run_dir": str(self.out), "data": self.data_path, "model": self.cfg.model.backbone.name,
        }
        if dist.is_main():
            write_json(self.out / "metrics.json", metrics)
            if result.detection is not None:  # confusion matrix, PR and F1 curves next to metrics.json
                write_eval_plots(result.detection, self.out)
            self._log(result.format())
            self._log(f"final mAP@[.5:.95] {result.map:.4f}  mAP50 {result.map50:.4f}  (best {s.best_map:.4f} at "
                      f"epoch {s.best_epoch}); skipped: {metrics['skips']}; run dir {self.out}")
        return metrics


def next_free_run_dir(path: Path) -> Path:
    """``path`` if it is not a folder holding files, else the first free ``path2``, ``path3``, ... (Ultralytics'
    increment_path: ``runs/det`` -> ``runs/det2``). A folder with nothing but hidden files and a stale lock (what a
    run killed before its first checkpoint leaves) is reused, one a live run holds is not; a file named ``path`` is
    left to the run's own output checks.
    """
    def taken(p: Path) -> bool:
        if not p.exists():
            return False
        files = [c for c in p.iterdir() if not c.name.startswith(".") and c.name != LOCK_NAME] if p.is_dir() else [p]
        return bool(files) or is_held(p)

    if not path.is_dir():
        return path
    n = 2
    candidate = path
    while taken(candidate):
        candidate = path.with_name(f"{path.name}{n}")
        n += 1
    return candidate


def _tensorboard_writer(folder: Path, first_step: int) -> Any:
    """A ``SummaryWriter`` for ``folder``, or ``None`` when tensorboard is not installed (the optional [tb] extra).

    ``purge_step``: a resumed run hides events a killed run wrote after its last checkpoint.
    """
    try:
        # Imported here: torch.utils.tensorboard needs the optional tensorboard package.
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (optional extra, lazy)
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=first_step if first_step > 1 else None)


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files a killed run left behind (``.NAME.XXXX.tmp`` from atomic_write); never a real checkpoint."""
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _stat_keys() -> list[str]:
    return list(STAT_NAMES)


def _report_counts(dataset: Any) -> dict[str, int]:
    """Per-sample problems the data checks skipped before training (the data side's CheckReport.counts)."""
    counts = getattr(getattr(dataset, "report", None), "counts", None)
    return {str(k): int(v) for k, v in dict(counts or {}).items()}
