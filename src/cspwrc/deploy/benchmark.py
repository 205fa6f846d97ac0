"""CPU/GPU speed benchmark of backbones and detectors against timm peers (``cspwrc benchmark``).

One run measures, on the same machine state and thread count: the matmul peak (:mod:`cspwrc.deploy.peak`), then
for every model x target x mode x input size its params and FLOPs (:mod:`cspwrc.deploy.cost`), latency (median
and p90 over warm runs, :mod:`cspwrc.deploy.timing`), throughput and the achieved fraction of that peak. Modes
(``folded``, ``channels_last``, ``jit``, ``ort``, ``fp16``, ``cudagraph``, ...) are :mod:`cspwrc.deploy.modes`;
the table is :mod:`cspwrc.deploy.report`.

Targets are built the way the detector builds them (:func:`build_target`): the ``backbone`` is
:func:`cspwrc.det.detector.create_feature_backbone` (its stride 8/16/32 levels, P3-P5), the ``detector`` is
:func:`cspwrc.det.build_detector` (NMS included in its eval forward).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cspwrc.deploy.cost import count_flops, count_params
from cspwrc.deploy.modes import DEFAULT_MODES, parse_mode, prepare, row_precision
from cspwrc.deploy.peak import SgemmProbe, base_precisions, matmul_peak_gflops
from cspwrc.deploy.report import environment, load_avg
from cspwrc.deploy.timing import p90, round_robin_times, set_threads, synchronize, warmed_up
from cspwrc.det import build_detector
from cspwrc.det.detector import create_feature_backbone
from cspwrc.engine.distributed import resolve_device

__all__ = ["TARGETS", "BenchRow", "BenchSettings", "Built", "add_ratios", "bench_group", "build_all", "build_target",
           "peer_of", "run_benchmark"]

TARGETS = ("backbone", "detector")


@dataclass
class BenchRow:
    """One measured (or skipped) configuration; serialised as-is to JSON."""

    model: str
    target: str
    mode: str
    img: int
    batch: int
    params_m: float = 0.0
    gflops: float = 0.0  # per image, FLOPs (a multiply-add = 2)
    latency_ms_median: float = 0.0  # per batch
    latency_ms_p90: float = 0.0
    throughput_img_s: float = 0.0
    achieved_gflop_s: float = 0.0
    peak_pct: float = 0.0
    iters: int = 0
    ratio_vs_baseline: float | None = None  # throughput / baseline model's baseline mode, same target/img/batch
    flops_ratio_vs_baseline: float | None = None
    status: str = "ok"
    error: str = ""
    precision: str = "fp32"  # what the convolutions compute in: fp32, tf32, fp16, bf16 (the peak's precision)


@dataclass
class BenchSettings:
    """What to measure: every ``models`` x ``targets`` x ``modes`` x ``img`` x ``batch`` (the CLI's flags)."""

    models: Sequence[str]
    img: Sequence[int] = (640,)
    batch: Sequence[int] = (1,)
    modes: Sequence[str] = DEFAULT_MODES
    targets: Sequence[str] = ("backbone",)
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 3
    iters: int = 20
    max_seconds: float = 20.0  # per configuration, after warm-up; at least `min_iters` runs are kept
    min_iters: int = 3
    num_classes: int = 80
    baseline: str | None = None
    baseline_mode: str = "eager"
    peak_size: int = 2048

    def as_dict(self) -> dict[str, Any]:
        """JSON form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Built:
    """A target built once, with its cost: params (M) and FLOPs of one image by image size."""

    model: nn.Module
    params_m: float
    flops_per_img: dict[int, int]


def build_target(name: str, target: str, num_classes: int = 80) -> nn.Module:
    """``backbone``: the detector's feature backbone (P3-P5 ``features_only``); ``detector``: the full detector
    (NMS in its eval forward); both through the detector's own builders, in eval mode, without pretrained weights.
    Input ``[B, 3, H, W]``; the backbone returns 3 maps ``[B, C_i, H / s, W / s]`` for s = 8, 16, 32."""
    if target == "backbone":
        return create_feature_backbone(name).eval()
    if target == "detector":
        return build_detector(backbone=name, num_classes=num_classes).eval()
    raise ValueError(f"unknown target {target!r}, expected one of {TARGETS}")


def _skipped(row: BenchRow, exc: BaseException, stage: str = "") -> BenchRow:
    row.status, row.error = "skipped", f"{stage}{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return row


def progress_line(r: BenchRow) -> str:
    """One log line per configuration (stderr while measuring)."""
    head = f"{r.target:8s} {r.model:16s} {r.mode:22s} bs{r.batch}@{r.img}"
    if r.status != "ok":
        return f"{head}  skipped ({r.error})"
    return f"{head}  {r.latency_ms_median:9.1f} ms  {r.throughput_img_s:8.1f} img/s"


def _timed_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, warmup: int) -> Callable[[], Any]:
    """``fn(x)`` as a no-argument call, synchronised on GPUs, after ``warmup`` runs."""
    def call() -> Any:
        out = fn(x)
        synchronize(x.device)
        return out

    return warmed_up(call, warmup)


def _fill(row: BenchRow, times: Sequence[float], flops_per_img: float) -> None:
    median = statistics.median(times)
    row.latency_ms_median = median * 1e3
    row.latency_ms_p90 = p90(times) * 1e3
    row.throughput_img_s = row.batch / median
    row.achieved_gflop_s = flops_per_img * row.batch / median / 1e9
    row.iters = len(times)


def bench_group(built: dict[str, Built], target: str, img: int, batch: int, settings: BenchSettings,
                device: torch.device, log: Callable[[str], None]) -> tuple[list[BenchRow], dict[str, float]]:
    """Every model x mode at one target/size/batch, timed round-robin; a failing mode is skipped, not fatal.

    A matmul probe per precision in use takes part in every round, so the peaks are measured under the same
    load as the models. Returns the rows and each probe's best GFLOP/s by precision.
    """
    example = torch.rand(batch, 3, img, img, device=device)  # detector convention: [0, 1]
    rows: list[BenchRow] = []
    ready: list[tuple[BenchRow, Callable[[], Any]]] = []
    for name, b in built.items():
        for mode in settings.modes:
            row = BenchRow(name, target, mode, img, batch, params_m=b.params_m, gflops=b.flops_per_img[img] / 1e9,
                           precision=row_precision(mode, device))
            rows.append(row)
            try:
                fn, x = prepare(b.model, mode, example)
                ready.append((row, _timed_call(fn, x, settings.warmup)))
            except Exception as exc:  # any backend failure means "mode not available here"
                log(progress_line(_skipped(row, exc)))
    probes = [SgemmProbe(device, settings.peak_size, p) for p in base_precisions(settings.modes, device)]
    times = round_robin_times([c for _, c in ready] + probes, settings.iters, settings.max_seconds, settings.min_iters)
    for (row, _), ts in zip(ready, times[:len(ready)], strict=True):  # times: the ready calls', then the probes'
        _fill(row, ts, row.gflops * 1e9)
        log(progress_line(row))
    return rows, {p.precision: p.gflops(ts) for p, ts in zip(probes, times[len(ready):], strict=True)}


def build_all(target: str, settings: BenchSettings, device: torch.device,
              log: Callable[[str], None]) -> tuple[dict[str, Built], list[BenchRow]]:
    """Build every model once and count its FLOPs per image size (eager model, batch 1; FLOPs are linear in B)."""
    built: dict[str, Built] = {}
    failed: list[BenchRow] = []
    for name in settings.models:
        try:
            model = build_target(name, target, settings.num_classes).to(device)
            flops = {img: count_flops(model, torch.rand(1, 3, img, img, device=device)) for img in settings.img}
        except Exception as exc:  # any: report it and continue with the other models
            for img in settings.img:
                for batch in settings.batch:
                    failed += [_skipped(BenchRow(name, target, m, img, batch), exc, "build: ") for m in settings.modes]
            log(f"{target} {name}: skipped ({exc})")
            continue
        built[name] = Built(model, count_params(model) / 1e6, flops)
    return built, failed


def peer_of(model: str) -> str:
    """timm's cs3darknet of the same size (``cspwrc_n`` has none: cs3darknet_s, the smallest); others: itself."""
    if not model.startswith("cspwrc_"):
        return model
    size = model.removeprefix("cspwrc_")
    return f"cs3darknet_{'s' if size == 'n' else size}"


def add_ratios(rows: list[BenchRow], baseline: str | None, baseline_mode: str, peak: float | dict[str, float]) -> None:
    """Peak percentage and ratios vs the baseline in ``baseline_mode`` at the same target/img/batch.

    ``baseline``: a model name, or ``"peer"`` = each cspwrc model against its cs3darknet peer (:func:`peer_of`).
    ``peak``: GFLOP/s by precision (each row against its own precision's), or one number for all rows.
    """
    ref = {(r.model, r.target, r.img, r.batch): r for r in rows if r.mode == baseline_mode and r.status == "ok"}
    for r in rows:
        if r.status != "ok":
            continue
        row_peak = peak.get(r.precision, 0.0) if isinstance(peak, dict) else peak
        r.peak_pct = 100.0 * r.achieved_gflop_s / row_peak if row_peak > 0 else 0.0
        base_model = peer_of(r.model) if baseline == "peer" else baseline
        base = ref.get((base_model, r.target, r.img, r.batch))
        if base is not None:
            r.ratio_vs_baseline = r.throughput_img_s / base.throughput_img_s
            r.flops_ratio_vs_baseline = r.gflops / base.gflops if base.gflops else None


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything in ``settings``; the returned dict is what the CLI writes as JSON."""
    for mode in settings.modes:
        parse_mode(mode)  # fail fast on a typo before minutes of measuring (a GPU-only mode on CPU: skipped rows)
    device = resolve_device(settings.device)  # a CUDA device on a machine without CUDA is an InputError (exit 2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per configuration: cuDNN tunes once, in the warm-up
    threads = set_threads(settings.threads)
    report: dict[str, Any] = {"env": environment(settings.device, threads), "settings": settings.as_dict()}
    precisions = base_precisions(settings.modes, device)
    runs = {p: [matmul_peak_gflops(device, settings.peak_size, precision=p)] for p in precisions}
    log(f"{precisions[0]} matmul peak ({settings.peak_size}^3, {threads} threads): "
        f"{runs[precisions[0]][0]:.1f} GFLOP/s")
    rows: list[BenchRow] = []
    for target in settings.targets:
        built, failed = build_all(target, settings, device, log)
        rows += failed
        with torch.inference_mode():
            for img in settings.img:
                for batch in settings.batch:
                    group, peaks = bench_group(built, target, img, batch, settings, device, log)
                    rows += group
                    for p, value in peaks.items():
                        runs[p].append(value)
    # Best of start, every timing round and end: the load of a shared machine drifts, a peak is a best case.
    for p in precisions:
        runs[p].append(matmul_peak_gflops(device, settings.peak_size, precision=p))
    best = {p: max(values) for p, values in runs.items()}
    add_ratios(rows, settings.baseline, settings.baseline_mode, best)
    report["env"]["load_avg_end"] = load_avg()
    report["env"]["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None
    report["matmul_peak_gflop_s"] = best[precisions[0]]  # the fp32 (CPU) or tf32/fp32 (CUDA) peak
    report["matmul_peak_precision"] = precisions[0]
    report["matmul_peak_runs"] = runs[precisions[0]]
    report["matmul_peaks_gflop_s"] = best
    report["results"] = [asdict(r) for r in rows]
    return report
