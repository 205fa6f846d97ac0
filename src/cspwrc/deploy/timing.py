"""The one timing loop: wall times of calls, interleaved round-robin, and the latency built on it.

Everything that times inference in cspwrc goes through :func:`round_robin_times`: the benchmark's
configurations (``cspwrc benchmark``), its training-step A/B (:mod:`cspwrc.experiments.train_bench`) and the
race's latency phase (:mod:`cspwrc.experiments.latency`, via :func:`latency_ms`). tools/race_ultralytics.py runs
in Ultralytics' own venv without cspwrc and keeps a copy of :func:`latency_ms` (its twin, same warm-up, runs and
median).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["latency_ms", "p90", "round_robin_times", "set_threads", "synchronize", "warmed_up"]


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads (when given) and return the count in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on CPU), so a wall time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warmed_up(call: Callable[[], Any], warmup: int) -> Callable[[], Any]:
    """``call`` after ``warmup`` untimed runs (thread pools, allocator, cuDNN autotuning, lazy compilation: a
    tracing or compile failure surfaces here, before the timing)."""
    for _ in range(warmup):
        call()
    return call


def round_robin_times(calls: Sequence[Callable[[], Any]], iters: int, max_seconds: float,
                      min_iters: int) -> list[list[float]]:
    """Wall times (s) of every call, timed in rounds (one call of each per round): ``[len(calls)][rounds]``.

    On a shared machine the load drifts over minutes; interleaving makes every configuration see the same
    drift, so the ratios between them stay meaningful even when absolute numbers move. Stops after ``iters``
    rounds, or after ``max_seconds`` per call once ``min_iters`` rounds are in.
    """
    times: list[list[float]] = [[] for _ in calls]
    start = time.perf_counter()
    for round_ in range(iters):
        for call, ts in zip(calls, times, strict=True):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        if round_ + 1 >= min_iters and time.perf_counter() - start > max_seconds * len(calls):
            break
    return times


def latency_ms(call: Callable[[], Any], repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time (ms) of ``call()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    times = round_robin_times([warmed_up(call, warmup)], repeats, math.inf, repeats)[0]
    return statistics.median(times) * 1e3


def p90(times: Sequence[float]) -> float:
    """The 90th percentile (inclusive method; the single value of a one-element list)."""
    if len(times) < 2:
        return times[0]
    return statistics.quantiles(times, n=10, method="inclusive")[-1]
