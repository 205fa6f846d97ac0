"""Detection training loop: timm optimizer/scheduler/EMA, checkpoints, evaluation, DDP, failure policy, callbacks.

Every epoch starts from seeds derived from ``(train.seed, epoch)``, so ``--resume`` continues exactly as the
uninterrupted run would have (bit for bit on CPU). The loop's parts: :mod:`~cspwrc.engine.optim` (optimizer,
schedule, nominal batch), :mod:`~cspwrc.engine.guard` (what stops a run: non-finite values, signals, unwritable
files, with the kept checkpoint named; exit 3), :mod:`~cspwrc.engine.run_state` (the saved state, resume),
:mod:`~cspwrc.engine.rundir` (run folder, lock), :mod:`~cspwrc.engine.report` (log line, records, pictures),
:mod:`~cspwrc.engine.callbacks`. No host sync per step under ``nan_policy: stop``: the losses are summed on the device
and the :class:`~cspwrc.engine.guard.FiniteGuard` is read every :attr:`Trainer.finite_check_steps` steps.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from cspwrc.atomic import WriteError
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
from cspwrc.engine import distributed as dist
from cspwrc.engine import guard, report, run_state
from cspwrc.engine.callbacks import Callback
from cspwrc.engine.checkpoint import init_from_weights, save_checkpoint
from cspwrc.engine.config import ConfigError, RunConfig, to_dict
from cspwrc.engine.distributed import resolve_amp
from cspwrc.engine.evaluate import EvalResult, evaluate
from cspwrc.engine.guard import TrainingStopped
from cspwrc.engine.lock import RunLock
from cspwrc.engine.loggers import default_callbacks
from cspwrc.engine.optim import WarmupScheduler, accumulate_steps, build_optimizer, fitted_epochs
from cspwrc.engine.report import LOSS_KEYS
from cspwrc.engine.run_state import RunState, load_resume
from cspwrc.engine.rundir import choose_run_dir, open_run_dir

__all__ = ["Trainer", "TrainingStopped", "load_resume", "resolve_amp"]



class Trainer:
    """One training run. ``Trainer(cfg).fit()`` or ``Trainer(cfg, resume_state=state).fit()``.

    ``callbacks``: :class:`~cspwrc.engine.callbacks.Callback` objects, called at the points that module lists.
    ``new_run_dir``: when ``train.out`` already holds a run, use the next free numbered folder instead.

    Everything the run holds is set by ``__init__`` and the set-up steps it calls (``_setup``: ``_build_data``,
    ``_build_model``); the attributes are listed here. The caller's config is never changed: ``cfg`` is a copy.
    """

    #: steps between two reads of the device-side finite flag (see the module doc); each read is one host sync
    finite_check_steps = 50

    cfg: RunConfig  # the effective config: train.out and (with train.time) train.epochs as the run really has them
    callbacks: list[Callback]
    device: torch.device
    progress: bool  # tqdm bars (rank 0 only)
    out: Path  # the run folder
    lock: RunLock
    state: RunState  # progress: epochs and steps done, best mAP, history, skip counts, times (saved and restored)
    stop: guard.StopSignals  # SIGTERM/SIGINT received
    finite_guard: guard.FiniteGuard  # the epoch's first non-finite step, on the device (policy 'stop')
    epoch_speed: report.Throughput | None  # the last epoch's train loop: images and seconds (not in the history)
    # _build_data: data_path, train_set, val_set, workers, train_loader, val_loader, coco_gt (rank 0), steps_per_epoch
    # _build_model: model, ddp_model (DDP-wrapped under torchrun), ema, optimizer, scheduler (rebuilt when train.time
    # refits the epochs), accumulate (batches per optimizer step), loss_scale, channels_last, amp_dtype, use_amp, scaler

    def __init__(self, cfg: RunConfig, resume_state: dict[str, Any] | None = None, progress: bool = True,
                 new_run_dir: bool = False, callbacks: Sequence[Callback] = ()) -> None:
        self._started = time.perf_counter()
        self.cfg = copy.deepcopy(cfg)  # --time refits epochs and new_run_dir the folder of this copy only
        self.callbacks = [*default_callbacks(), *callbacks]  # the reporting first (cspwrc.engine.loggers)
        self.device = dist.resolve_device(self.cfg.train.device)
        dist.init_distributed(self.device)
        self.progress = progress and dist.is_main()
        if new_run_dir:
            free = choose_run_dir(self.cfg.train.out)
            if free != self.cfg.train.out:
                self._log(f"note: {self.cfg.train.out} holds a previous run; this run goes to {free} "
                          "(--exist-ok to reuse)")
                self.cfg.train.out = free  # the saved config names the folder the run really is in
        self.out = Path(self.cfg.train.out)
        self.lock = RunLock(self.out)
        self.stop = guard.StopSignals(self._log)
        self.finite_guard = guard.FiniteGuard(self.device)
        self.epoch_speed = None
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

    def _setup(self, resume_state: dict[str, Any] | None) -> None:
        open_run_dir(self.out, self.lock)
        run_state.seed_everything(self.cfg.train.seed)
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
        self.channels_last = cfg.train.channels_last
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
    def _restore(self, st: dict[str, Any]) -> None:
        run_state.check_resume_fits(st, self.cfg.model.backbone.name, self.train_set.num_classes, self.out)
        self.state = run_state.restore_training_state(st, self.out, self.model, self.optimizer, self.scaler, self.ema)
        self._log(f"resumed from {self.out} after epoch {self.state.epoch} (step {self.state.global_step})")
        note = run_state.extension_note(st, self.cfg.train.epochs)
        if note is not None:
            self._log(note)

    def _save(self, names: list[str]) -> None:
        """Rank 0 writes checkpoints and records; every rank learns whether it worked (none waits on a dead one)."""
        error = None
        if dist.is_main():
            weights = (self.ema.module if self.ema is not None else self.model).state_dict()
            meta = self.meta()
            state = run_state.build_training_state(self.state, self.model, self.optimizer, self.scheduler,
                                                   self.scaler, self.ema, to_dict(self.cfg), meta)
            try:
                for name in names:
                    save_checkpoint(self.out, name, weights, meta, state)
                self._emit("on_checkpoint")  # records after checkpoints (loggers.ResultsFiles)
            except WriteError as err:
                error = str(err)
        error = dist.broadcast_object(error)
        if error:
            raise guard.cannot_save(error)

    # -------------------------------------------------------------------------------------- loop
    def _log(self, msg: str) -> None:
        if dist.is_main():
            tqdm.write(msg)

    def _emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback (an empty loop without callbacks)."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs`` (or early stopping), evaluate, write ``metrics.json``; return its dict."""
        cfg, start = self.cfg.train, time.perf_counter()
        self._log(f"training {self.cfg.model.backbone.name} on {self.data_path}: {len(self.train_set)} train / "
                  f"{len(self.val_set)} val images, {self.train_set.num_classes} classes, img {cfg.img}, "
                  f"{cfg.epochs} epochs x {self.steps_per_epoch} steps, device {self.device}, "
                  f"world size {dist.world_size()}, run dir {self.out}")
        self._log(f"{self.workers} loader workers, data cache {self.cfg.data.cache}, amp {self.amp_dtype or 'off'}, "
                  f"channels_last {self.channels_last}; set-up took {start - self._started:.1f} s")
        result: EvalResult | None = None
        self.stop.install()
        try:
            self._emit("on_train_start")
            while self.state.epoch < cfg.epochs and not self.state.patience_exhausted(cfg.patience):
                result = self._run_epoch(self.state.epoch) or result
            if self.state.patience_exhausted(cfg.patience) and self.state.epoch < cfg.epochs:
                self._log(f"early stopping: no val mAP gain for {self.state.epoch - self.state.best_epoch} epochs "
                          f"(patience {cfg.patience}); best {self.state.best_map:.4f} at epoch {self.state.best_epoch}")
            if result is None:  # resumed a finished run: score the saved weights again
                result = self._evaluate(self.state.epoch - 1)
            metrics = self._finish(result, time.perf_counter() - start)
            self._emit("on_train_end", metrics)
            return metrics
        except SampleReadError as err:  # an image kept failing after the checks (train or val, any loader worker)
            raise TrainingStopped(f"data broke during epoch {self.state.epoch + 1}: {read_error_message(err)}; "
                                  f"restore or remove the file(s); {self._kept()}") from err
        except RuntimeError as err:
            if isinstance(err, TrainingStopped):
                raise
            if self.stop.received is not None:  # Ctrl-C also reached the loader's workers, which exit: same stop
                raise self.stop.stopped(self.state.epoch, self._kept()) from err
            if not dist.peer_lost(err):
                raise
            raise TrainingStopped(f"{dist.peer_lost_message(err)}; {self._kept()}") from err
        finally:
            self.stop.restore()
            self._teardown()
            self.lock.release()
            dist.cleanup()

    def _teardown(self) -> None:
        """Every callback's ``on_teardown``, each one's error logged (an error here must not hide the run's)."""
        for callback in self.callbacks:
            try:
                callback.on_teardown(self)
            except Exception as err:  # logged and passed over: the run's own outcome stands
                self._log(f"warning: {type(callback).__name__}.on_teardown failed: {err}")

    def _kept(self) -> str:
        return guard.kept_note(self.out, self.state.epoch, self.cfg.train.epochs)

    def _run_epoch(self, epoch: int) -> EvalResult | None:
        cfg = self.cfg.train
        run_state.seed_everything(run_state.epoch_seed(cfg.seed, epoch))
        mosaic = epoch < cfg.epochs - cfg.close_mosaic
        prepare_epoch(self.train_loader, epoch, mosaic=mosaic)
        self.model.set_epoch(epoch, self.cfg.train.epochs)
        self._emit("on_epoch_start", epoch)
        t0 = time.perf_counter()
        means, images = self._train_one_epoch(epoch)
        seconds = time.perf_counter() - t0
        self.state.train_time_s += seconds
        self.epoch_speed = report.Throughput(images, seconds)
        if cfg.time is not None:
            self._fit_epochs_to_time(epoch)
        result = None
        if (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs:
            result = self._evaluate(epoch)
        self._end_epoch(epoch, means, result)
        return result

    def _fit_epochs_to_time(self, epoch: int) -> None:
        """``train.time``: refit ``epochs`` to the budget (:func:`~cspwrc.engine.optim.fitted_epochs`) and rebuild the
        schedule, a function of ``epochs`` and the global step (warmup, decay and close_mosaic stretch or shrink to
        the new length). The saved config keeps the new ``epochs``, so ``--resume`` goes on with it."""
        cfg, s = self.cfg.train, self.state
        spent = s.train_time_s + s.eval_time_s
        fitted = fitted_epochs(cfg.time, epoch + 1, spent, cfg.epochs)
        if fitted != cfg.epochs:
            self._log(f"time budget {cfg.time * 60:.1f} min: {spent / (epoch + 1):.0f} s per epoch -> {fitted} epochs "
                      f"(was {cfg.epochs})")
            cfg.epochs = fitted
            self.scheduler = WarmupScheduler(self.optimizer, self.cfg, self.steps_per_epoch)
            self.scheduler.step(s.global_step)  # the lrs of the new schedule now, not its initial warmup_lr

    def _train_one_epoch(self, epoch: int) -> tuple[dict[str, float], int]:
        """Mean losses of the epoch's taken steps (all ranks) and the number of images stepped on (all ranks)."""
        self.ddp_model.train()
        sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=self.device)  # no host sync per step
        done, skipped = 0, 0
        self.finite_guard = guard.FiniteGuard(self.device)
        pending = 0  # batches whose gradients wait for the next optimizer step (nominal batch)
        bar = tqdm(self.train_loader, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.progress, dynamic_ncols=True, leave=False)
        for i, (images, targets) in enumerate(bar):
            if i >= self.steps_per_epoch:
                break
            skipped += count_skipped(targets)
            self._emit("on_batch_start", i, images, targets)
            self.scheduler.step(self.state.global_step)
            pending += 1
            # An epoch ends on an optimizer step, so a resumed run continues exactly (no gradients in flight).
            step_now = pending >= self.scheduler.accumulate(self.state.global_step, self.accumulate) or \
                i + 1 == self.steps_per_epoch
            losses = self._step(images, targets, epoch, step_now)
            if step_now:
                pending = 0
            self.state.global_step += 1
            if self.stop.requested():
                raise self.stop.stopped(epoch, self._kept())
            if losses is not None:
                sums += losses
                done += 1
            self._emit("on_step_end", self.state.global_step - 1, losses)
            if (i + 1) % self.finite_check_steps == 0:
                self._check_guard(epoch)
                bar.set_postfix_str(" ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in
                                             zip(LOSS_KEYS, (sums / max(done, 1)).tolist(), strict=True))
                                    + f" lr={self.scheduler.lr():.2e}")
        self._check_guard(epoch)  # before evaluation and before this epoch's checkpoint
        means = dist.all_reduce_mean(sums / max(done, 1))
        self.state.read_skipped += dist.all_reduce_sum_int(skipped)  # every rank's substitutions, not rank 0's
        return dict(zip(LOSS_KEYS, means.tolist(), strict=True)), dist.all_reduce_sum_int(done * self.cfg.train.batch)

    def _step(self, images: torch.Tensor, targets: list[dict[str, Any]], epoch: int, step_now: bool
              ) -> torch.Tensor | None:
        """Forward and backward of one batch, then the optimizer step when ``step_now`` (else the gradients
        accumulate, :mod:`cspwrc.engine.optim`). Returns the batch's losses ``float64 [len(LOSS_KEYS)]`` on the
        device; None when a non-finite loss or gradient was skipped (policy 'skip'). Under 'stop' a non-finite value
        is recorded in ``self.finite_guard``, not checked."""
        images, targets = dist.to_device(images, targets, self.device, self.channels_last)
        # DDP all-reduces gradients only on the batch that steps; the others accumulate locally.
        sync = contextlib.nullcontext() if step_now or not dist.is_dist() else self.ddp_model.no_sync()
        with sync:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                losses = self.ddp_model(images, targets)
            loss = losses["loss"]
            values = torch.stack([losses[k].detach().to(torch.float64) if k in losses else
                                  torch.tensor(math.nan, dtype=torch.float64, device=self.device) for k in LOSS_KEYS])
            if not self._finite_or_skip("loss", loss.detach(), values, epoch, losses):
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
            if not self.scaler.is_enabled() and not self._finite_or_skip("gradient", norm.detach(), values, epoch,
                                                                         {"grad_norm": norm}):
                self.optimizer.zero_grad(set_to_none=True)
                return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.optimizer_steps)
        self.state.optimizer_steps += 1
        return True

    def _finite_or_skip(self, what: str, value: torch.Tensor, values: torch.Tensor, epoch: int,
                        losses: dict[str, Any]) -> bool:
        """Policy 'stop': record ``value`` on the device (read by ``_check_guard``) and go on. 'skip': all ranks agree
        whether it is finite (DDP must take or skip a step together); False skips the step, counted up to
        ``train.max_nan_skips``, past which the run stops."""
        if self.cfg.train.nan_policy != "skip":
            self.finite_guard.record(self.state.global_step, what, value, values)
            return True
        if guard.all_finite(value):
            return True
        detail = guard.describe(list(losses), list(losses.values()))
        if self.state.nan_skipped < self.cfg.train.max_nan_skips:
            self.state.nan_skipped += 1
            self._log(f"warning: non-finite {what} at epoch {epoch + 1} step {self.state.global_step} ({detail}); "
                      f"step skipped ({self.state.nan_skipped} so far)")
            return False
        raise self._nonfinite_stop(what, epoch, self.state.global_step, detail)

    def _check_guard(self, epoch: int) -> None:
        """Stop if the device recorded a non-finite step since the last check (policy 'stop')."""
        found = self.finite_guard.first()
        if found is not None:
            step, what, losses = found
            raise self._nonfinite_stop(what, epoch, step, guard.describe(LOSS_KEYS, losses))

    def _nonfinite_stop(self, what: str, epoch: int, step: int, detail: str) -> TrainingStopped:
        return guard.nonfinite_stop(what, epoch, step, detail, self.cfg.train.nan_policy, self.state.nan_skipped,
                                    self.out, self.state.epoch)

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
        took = row["time_s"] - (s.history[-2]["time_s"] if len(s.history) > 1 else 0.0)
        self._log(report.epoch_line(row, self.cfg.train.epochs, took, self.epoch_speed))
        names = ["last"]
        if result is not None and result.map > s.best_map:
            s.best_map, s.best_epoch = result.map, epoch + 1
            names.append("best")
        self._save(names)
        self._emit("on_epoch_end", row)

    def _finish(self, result: EvalResult, wall_s: float) -> dict[str, Any]:
        s = self.state
        metrics = report.run_metrics(result, s, self.cfg, wall_s, self.out, self.data_path, self.train_set,
                                     self.val_set)
        if dist.is_main():
            report.write_final(self.out, metrics, result)
            self._log(result.format())
            self._log(f"final mAP@[.5:.95] {result.map:.4f}  mAP50 {result.map50:.4f}  (best {s.best_map:.4f} at "
                      f"epoch {s.best_epoch}); skipped: {metrics['skips']}; run dir {self.out}")
        return metrics
