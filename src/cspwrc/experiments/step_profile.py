"""Where one training step goes: loader, forward, assigner, loss, backward, optimizer, EMA (``tools/profile_step.py``).

The run is what ``cspwrc train`` would train (same recipe, data, flags and ``--set`` overrides; a throw-away run
folder): the profile builds that :class:`~cspwrc.engine.trainer.Trainer` and then times the pieces of its step on
its own loader, model, criterion, optimizer and EMA, one after the other, ``--steps`` steps after ``--warmup``
untimed ones, with ``torch.cuda.synchronize()`` around each piece on a GPU. The assigner is timed inside the loss
(the loss's ``assign`` wrapped by a timer); "loss" is the rest of the criterion. Reported per piece: median ms per
step, share of the step, and the step's images/s (the median step, loader included, and without the loader).

    python tools/profile_step.py --data configs/data/shwd.yaml --model cspwrc_n --img 320 --batch 16 --threads 1
    python tools/profile_step.py --data configs/data/shwd.yaml --set model.head.reg_max=1 --json runs/prof.json

Single-threaded by default (``--threads 1``: the race's setting); timings on a machine that runs other work are
noisy, the split between pieces less so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cspwrc.cli import add_debug_flag, guarded
from cspwrc.cli.train import default_recipe
from cspwrc.cli.train_flags import add_train_flags, train_overrides
from cspwrc.engine import distributed as dist
from cspwrc.engine.config import load_config
from cspwrc.engine.trainer import Trainer

__all__ = ["PIECES", "main", "profile_steps"]

PIECES = ("loader", "to_device", "forward", "assign", "loss", "backward", "optimizer", "ema")


class _Clock:
    """Accumulates wall time per piece within one step (synchronising a GPU first, so a piece's kernels count)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.step: dict[str, float] = defaultdict(float)

    def timed(self, piece: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.step[piece] += time.perf_counter() - t0
        return out


def _one_step(trainer: Trainer, batches: Iterator[Any], clock: _Clock) -> None:
    """The trainer's step, piece by piece (its ``_step`` + ``_optimizer_step`` without the guards and accumulation:
    every batch steps)."""
    model, criterion = trainer.model, trainer.model.criterion
    images, targets = clock.timed("loader", next, batches)
    images, targets = clock.timed("to_device", dist.to_device, images, targets, trainer.device,
                                  trainer.channels_last)

    outputs = clock.timed("forward", model.train_outputs, images)
    assign = criterion.assign
    criterion.assign = lambda *a, **k: clock.timed("assign", assign, *a, **k)  # instance attribute: this step only
    try:
        t_assign = clock.step["assign"]
        losses = clock.timed("loss", model.compute_loss, outputs, targets, tuple(images.shape[-2:]))
        clock.step["loss"] -= clock.step["assign"] - t_assign  # "loss" = the criterion without its assigner
    finally:
        del criterion.assign
    clock.timed("backward", (losses["loss"] * trainer.loss_scale).backward)

    def optimizer_step() -> None:
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    clock.timed("optimizer", optimizer_step)
    if trainer.ema is not None:
        clock.timed("ema", trainer.ema.update, model, step=trainer.state.optimizer_steps)
    trainer.state.optimizer_steps += 1


def profile_steps(trainer: Trainer, steps: int, warmup: int) -> dict[str, Any]:
    """Median ms per piece over ``steps`` steps (after ``warmup``), the step's images/s with and without the loader."""
    trainer.model.train()
    trainer.model.set_epoch(trainer.cfg.model.loss.assigner.static_epochs)  # TAL, the assigner of most epochs
    batches = iter(trainer.train_loader)
    per_step: list[dict[str, float]] = []
    for i in range(warmup + steps):
        clock = _Clock(trainer.device)
        _one_step(trainer, batches, clock)
        if i >= warmup:
            per_step.append(dict(clock.step))
    median = {p: 1e3 * statistics.median(s.get(p, 0.0) for s in per_step) for p in PIECES}
    totals = [1e3 * sum(s.values()) for s in per_step]
    compute = [t - 1e3 * s.get("loader", 0.0) for t, s in zip(totals, per_step, strict=True)]
    batch = trainer.cfg.train.batch
    return {"pieces_ms": median, "step_ms": statistics.median(totals), "images_per_s": 1e3 * batch /
            statistics.median(totals), "images_per_s_without_loader": 1e3 * batch / statistics.median(compute),
            "batch": batch, "img": trainer.cfg.train.img, "steps": steps, "threads": torch.get_num_threads(),
            "device": str(trainer.device)}


def format_profile(result: dict[str, Any]) -> str:
    step = result["step_ms"]
    lines = [f"{'piece':<10} {'ms/step':>9} {'share':>6}"]
    lines += [f"{p:<10} {ms:9.1f} {100 * ms / step:5.1f}%" for p, ms in result["pieces_ms"].items()]
    lines.append(f"{'step':<10} {step:9.1f}  -> {result['images_per_s']:.2f} img/s "
                 f"({result['images_per_s_without_loader']:.2f} without the loader); batch {result['batch']} at "
                 f"{result['img']} px, {result['threads']} thread(s), {result['device']}, median of {result['steps']}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the race trains with 1)")
    p.add_argument("--json", type=Path, help="also write the result here")
    add_debug_flag(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    overrides = train_overrides(args)
    overrides.setdefault("data", {}).setdefault("workers", 0)  # the loader in this process: its time is measured
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        overrides.setdefault("train", {})["out"] = tmp
        cfg = load_config(default_recipe(args), overrides)
        trainer = Trainer(cfg, progress=False)
        try:
            result = profile_steps(trainer, args.steps, args.warmup)
        finally:
            trainer.lock.release()
    print(format_profile(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: run(args), args.debug)
