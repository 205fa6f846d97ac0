"""CPU/GPU speed benchmark of backbones and detectors against timm peers.

One run measures, on the same machine state and thread count: the matmul peak (a large GEMM, best of
several), then for every model x target x mode x input size its params, FLOPs, latency (median and p90
over warm runs), throughput and the achieved fraction of that peak.

The peak is measured in the precision the row's convolutions compute in (:func:`row_precision`): fp16 or
bf16 for the half modes; for fp32 on CUDA, TF32 when cuDNN may use it (``torch.backends.cudnn.allow_tf32``,
on by default), so "% of peak" never exceeds 100 % because the probe ran in a slower precision than the model.

GPU-only modes: ``fp16``/``bf16`` (weights and input cast to half precision: the deploy precision) and
``cudagraph`` (the static part captured once in a ``torch.cuda.CUDAGraph`` and replayed; the detector's NMS
stays eager). On another device they are skipped with the reason (:func:`check_device`).

FLOP convention: ``torch.utils.flop_counter.FlopCounterMode`` counts a multiply-add as 2 FLOPs (the
same convention as the 2*M*N*K of the sgemm peak), so the percentages compare like with like.
With it timm's ``cs3darknet_s`` features (P3-P5) are 8.9 GFLOPs at 640 px.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cspwrc import det
from cspwrc.deploy.export import INPUT_NAME, export_onnx
from cspwrc.det import RawPredictions
from cspwrc.det.detector import select_feature_levels
from cspwrc.det.postprocess import postprocess
from cspwrc.engine.distributed import resolve_device
from cspwrc.layers import fold_model

TARGETS = ("backbone", "detector")
MODE_FLAGS = ("eager", "folded", "channels_last", "jit", "ort", "compile", "fp16", "bf16", "cudagraph")
RUNTIMES = ("jit", "ort", "compile", "cudagraph")  # mutually exclusive ways to run the (folded) model
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}  # deploy precisions (mutually exclusive)
CUDA_ONLY = {
    "fp16": "fp16 is a GPU deploy precision (CPU convolutions in fp16 are emulated, slower than fp32)",
    "bf16": "bf16 is a GPU deploy precision here (CPU bf16 convolutions need AMX/AVX512-BF16 to pay off)",
    "cudagraph": "CUDA graphs exist only on CUDA devices",
}
DEFAULT_MODES = ("eager", "folded", "channels_last", "folded+channels_last")


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


def parse_mode(mode: str) -> frozenset[str]:
    """``"folded+channels_last"`` -> {"folded", "channels_last"}; ``"eager"`` -> {} (no conversion)."""
    flags = frozenset(f for f in mode.split("+") if f)
    unknown = flags - set(MODE_FLAGS)
    if unknown or not flags:
        raise ValueError(f"unknown mode {mode!r}: combine {MODE_FLAGS} with '+'")
    if len(flags & set(RUNTIMES)) > 1:
        raise ValueError(f"mode {mode!r}: pick one runtime of {RUNTIMES}")
    if len(flags & set(HALF)) > 1:
        raise ValueError(f"mode {mode!r}: pick one precision of {tuple(HALF)}")
    return flags - {"eager"}


def check_device(flags: frozenset[str], device: torch.device) -> None:
    """Raise ``ValueError`` with the reason when a GPU-only flag is asked for on another device."""
    if device.type != "cuda":
        for flag in sorted(flags & set(CUDA_ONLY)):
            raise ValueError(f"{flag} needs a CUDA device, not {device.type}: {CUDA_ONLY[flag]}")


def row_precision(mode: str, device: torch.device) -> str:
    """The precision the convolutions of ``mode`` compute in on ``device`` (the peak probe uses the same)."""
    half = parse_mode(mode) & set(HALF)
    if half:
        return next(iter(half))
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def set_threads(threads: int | None) -> int:
    """Pin intra-op threads (the sgemm peak and all models use the same count)."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SgemmProbe:
    """An ``n x n @ n x n`` matmul (2 n^3 FLOPs): the machine's attainable GFLOP/s at this thread count.

    ``precision``: fp32 (default), tf32 (fp32 tensors, TF32 tensor cores: what cuDNN convs use on CUDA by
    default), fp16 or bf16.
    """

    def __init__(self, device: str | torch.device = "cpu", n: int = 2048, precision: str = "fp32") -> None:
        self.device, self.precision = torch.device(device), precision
        dtype = HALF.get(precision, torch.float32)
        self.a = torch.randn(n, n, device=self.device, dtype=dtype)
        self.b = torch.randn(n, n, device=self.device, dtype=dtype)
        self.out = torch.empty(n, n, device=self.device, dtype=dtype)
        self.flops = 2 * n**3

    def __call__(self) -> None:
        # The global matmul switch is set around the call only: the models' own TF32 use is cuDNN's setting.
        tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, self.precision == "tf32"
        try:
            torch.mm(self.a, self.b, out=self.out)
            synchronize(self.device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def gflops(self, times: Sequence[float]) -> float:
        return self.flops / min(times) / 1e9


def matmul_peak_gflops(device: str | torch.device = "cpu", n: int = 2048, repeats: int = 5,
                       precision: str = "fp32") -> float:
    """Best-of-``repeats`` matmul GFLOP/s in ``precision`` at the current thread count (after one warm-up call)."""
    probe = SgemmProbe(device, n, precision)
    probe()  # thread pool and allocator warm-up
    return probe.gflops(round_robin_times([probe], repeats, float("inf"), repeats)[0])


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward (a multiply-add = 2), as counted by torch's flop counter."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_cost(model: nn.Module, img: int) -> tuple[float, float]:
    """Params (M) and GFLOPs of one ``img`` x ``img`` image through ``model`` (put in eval mode)."""
    return count_params(model) / 1e6, count_flops(model.eval(), torch.zeros(1, 3, img, img)) / 1e9


def p3_p5_indices(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Feature indices of strides 8/16/32, chosen exactly as the detector chooses them (any timm CNN)."""
    with torch.device("meta"):  # only feature_info is needed: no memory, no init
        probe = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    return tuple(select_feature_levels(probe.feature_info.reduction(), name))


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """The backbone as a detector uses it: ``features_only`` P3-P5, eval mode."""
    indices = p3_p5_indices(name, **kwargs)
    return timm.create_model(name, features_only=True, out_indices=indices, pretrained=False, **kwargs).eval()


def build_detector(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The full detector (incl. NMS in its eval forward) with ``name`` as backbone."""
    return det.build_detector(backbone=name, num_classes=num_classes, **kwargs).eval()


def build_target(name: str, target: str, num_classes: int = 80, **kwargs: Any) -> nn.Module:
    if target == "backbone":
        return build_backbone(name, **kwargs)
    if target == "detector":
        return build_detector(name, num_classes, **kwargs)
    raise ValueError(f"unknown target {target!r}, expected one of {TARGETS}")


def _jit_optimize(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Trace, freeze and ``optimize_for_inference``: folds conv+BN, pre-packs oneDNN conv weights."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still the CPU fast path
        traced = torch.jit.trace(model, example, strict=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _with_eager_nms(raw_fn: Callable[[torch.Tensor], torch.Tensor],
                    detector: nn.Module) -> Callable[[torch.Tensor], Any]:
    """Detector output from a compiled/exported ``forward_raw``: NMS has data-dependent shapes and stays eager."""
    cfg = detector.cfg

    def run(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return postprocess(raw_fn(x), cfg.score_thresh, cfg.nms_iou, cfg.max_det, cfg.pre_nms_topk, tuple(x.shape[-2:]))

    return run


def _static_part(model: nn.Module) -> nn.Module:
    """What tracing/exporting sees: the detector's ``forward_raw`` (no NMS), or the backbone itself."""
    if hasattr(model, "forward_raw"):
        return RawPredictions(model)
    return model


def _ort_session(module: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """Export ``module`` to ONNX (a temp file) and run it with onnxruntime on CPU at torch's thread count."""
    import onnxruntime as ort  # noqa: PLC0415  (the optional [export] extra, lazy)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # the same threads as every other mode
    opts.inter_op_num_threads = 1
    # onnxruntime's workers spin after each run by default and would steal the cores from the configuration timed
    # next in the round-robin; deployments that run one model keep the default
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(module, f"{tmp}/model.onnx", example.shape[-1])
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(None, {INPUT_NAME: x.contiguous().numpy()})]

    return run


def _cuda_graph(fn: Callable[[torch.Tensor], Any], example: torch.Tensor, warmup: int = 3
                ) -> Callable[[torch.Tensor], Any]:
    """``fn`` captured once in a CUDA graph: a call copies its input into the graph's static input and replays
    every kernel with one launch. The output tensors are the graph's static ones, overwritten by the next call.

    Warm-up runs on a side stream first (cuDNN autotuning, lazy init and the allocator must not happen during
    capture), as ``torch.cuda.graphs`` prescribes.
    """
    static_in = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(static_in)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)

    def run(x: torch.Tensor) -> Any:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


def _convert(model: nn.Module, flags: frozenset[str], example: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """jit / ort / cudagraph: convert the static part and keep the detector's NMS eager; otherwise the model."""
    if "jit" in flags:
        fn: Callable[[torch.Tensor], Any] = _jit_optimize(_static_part(model), example)
    elif "cudagraph" in flags:
        fn = _cuda_graph(_static_part(model), example)
    elif "ort" in flags:
        session = _ort_session(_static_part(model), example)
        fn = (lambda x: session(x)[0]) if hasattr(model, "forward_raw") else session
    else:
        return model
    return _with_eager_nms(fn, model) if hasattr(model, "forward_raw") else fn


def prepare(model: nn.Module, mode: str, example: torch.Tensor) -> tuple[Callable[[torch.Tensor], Any], torch.Tensor]:
    """Apply a mode's conversions to a copy of ``model``; returns (callable, input in the matching layout)."""
    flags = parse_mode(mode)
    check_device(flags, example.device)
    model = copy.deepcopy(model).eval()
    if "folded" in flags:
        model = fold_model(model)  # the peers' conv+BN fold too: "folded" compares like with like
    model, example = to_precision(model, example, flags)
    if "channels_last" in flags:
        model = model.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    fn = _convert(model, flags, example)
    if "compile" in flags:
        # freezing: inductor folds weights as constants, pre-packs oneDNN conv weights and fuses conv + SiLU,
        # which is what makes it pay off for CPU inference (without it inductor calls plain aten convs).
        fn = torch.compile(fn, options={"freezing": True})
    return fn, example


def to_precision(model: nn.Module, example: torch.Tensor, flags: frozenset[str]) -> tuple[nn.Module, torch.Tensor]:
    """Weights, buffers and input in the mode's half precision (a deployed model, not autocast); else unchanged.

    The detector's anchor points and box decoding then run in that precision too, as they would deployed.
    """
    dtype = next((HALF[f] for f in flags if f in HALF), None)
    if dtype is None:
        return model, example
    return model.to(dtype), example.to(dtype)


def round_robin_times(calls: Sequence[Callable[[], Any]], iters: int, max_seconds: float,
                      min_iters: int) -> list[list[float]]:
    """Wall times (s) of every call, timed in rounds (one call of each per round).

    On a shared machine the load drifts over minutes; interleaving makes every configuration see the same
    drift, so the ratios between them stay meaningful even when absolute numbers move. Stops after ``iters``
    rounds, or after ``max_seconds`` per call once ``min_iters`` rounds are in.
    """
    times: list[list[float]] = [[] for _ in calls]
    start = time.perf_counter()
    for round_ in range(iters):
        for call, ts in zip(calls, times):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        if round_ + 1 >= min_iters and time.perf_counter() - start > max_seconds * len(calls):
            break
    return times


def p90(times: Sequence[float]) -> float:
    if len(times) < 2:
        return times[0]
    return statistics.quantiles(times, n=10, method="inclusive")[-1]


@dataclass
class _Built:
    model: nn.Module
    params_m: float
    flops_per_img: dict[int, int]  # by image size


def _skipped(row: BenchRow, exc: BaseException, stage: str = "") -> BenchRow:
    row.status, row.error = "skipped", f"{stage}{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return row


def _ready_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, warmup: int) -> Callable[[], Any]:
    """A no-argument call (synchronised on GPUs) after ``warmup`` runs: compile or tracing failures surface here."""
    def call() -> Any:
        out = fn(x)
        synchronize(x.device)
        return out

    for _ in range(warmup):
        call()
    return call


def bench_group(built: dict[str, _Built], target: str, img: int, batch: int, settings: BenchSettings,
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
                ready.append((row, _ready_call(fn, x, settings.warmup)))
            except Exception as exc:  # noqa: BLE001 - any backend failure means "mode not available here"
                log(_progress(_skipped(row, exc)))
    probes = [SgemmProbe(device, settings.peak_size, p) for p in base_precisions(settings.modes, device)]
    times = round_robin_times([c for _, c in ready] + probes, settings.iters, settings.max_seconds, settings.min_iters)
    for (row, _), ts in zip(ready, times):
        _fill(row, ts, row.gflops * 1e9)
        log(_progress(row))
    return rows, {p.precision: p.gflops(ts) for p, ts in zip(probes, times[len(ready):])}


def base_precisions(modes: Sequence[str], device: torch.device) -> list[str]:
    """The precisions to probe: those of ``modes`` on ``device``, the fp32/tf32 one always first."""
    found = [row_precision("eager", device)]
    for mode in modes:
        precision = row_precision(mode, device)
        if precision not in found and (device.type == "cuda" or precision not in HALF):
            found.append(precision)
    return found


def _fill(row: BenchRow, times: Sequence[float], flops_per_img: float) -> None:
    median = statistics.median(times)
    row.latency_ms_median = median * 1e3
    row.latency_ms_p90 = p90(times) * 1e3
    row.throughput_img_s = row.batch / median
    row.achieved_gflop_s = flops_per_img * row.batch / median / 1e9
    row.iters = len(times)


def build_all(target: str, settings: BenchSettings, device: torch.device,
              log: Callable[[str], None]) -> tuple[dict[str, _Built], list[BenchRow]]:
    """Build every model once and count its FLOPs per image size (eager model, batch 1; FLOPs are linear in B)."""
    built: dict[str, _Built] = {}
    failed: list[BenchRow] = []
    for name in settings.models:
        try:
            model = build_target(name, target, settings.num_classes).to(device)
            flops = {img: count_flops(model, torch.rand(1, 3, img, img, device=device)) for img in settings.img}
        except Exception as exc:  # noqa: BLE001 - report and continue with the other models
            for img in settings.img:
                for batch in settings.batch:
                    failed += [_skipped(BenchRow(name, target, m, img, batch), exc, "build: ") for m in settings.modes]
            log(f"{target} {name}: skipped ({exc})")
            continue
        built[name] = _Built(model, count_params(model) / 1e6, flops)
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


def environment(settings: BenchSettings, threads: int) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "device": settings.device,
        "threads": threads,
        "load_avg_start": _load_avg(),
        "flop_convention": "FLOPs from torch.utils.flop_counter (multiply-add = 2 FLOPs), per image",
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything in ``settings``; the returned dict is what the CLI writes as JSON."""
    for mode in settings.modes:
        parse_mode(mode)  # fail fast on a typo before minutes of measuring (a GPU-only mode on CPU: skipped rows)
    device = resolve_device(settings.device)  # a CUDA device on a machine without CUDA is an InputError (exit 2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per configuration: cuDNN tunes once, in the warm-up
    threads = set_threads(settings.threads)
    report: dict[str, Any] = {"env": environment(settings, threads), "settings": asdict_settings(settings)}
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
    report["env"]["load_avg_end"] = _load_avg()
    report["env"]["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None
    report["matmul_peak_gflop_s"] = best[precisions[0]]  # the fp32 (CPU) or tf32/fp32 (CUDA) peak
    report["matmul_peak_precision"] = precisions[0]
    report["matmul_peak_runs"] = runs[precisions[0]]
    report["matmul_peaks_gflop_s"] = best
    report["results"] = [asdict(r) for r in rows]
    return report


def asdict_settings(settings: BenchSettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


def _progress(r: BenchRow) -> str:
    head = f"{r.target:8s} {r.model:16s} {r.mode:22s} bs{r.batch}@{r.img}"
    if r.status != "ok":
        return f"{head}  skipped ({r.error})"
    return f"{head}  {r.latency_ms_median:9.1f} ms  {r.throughput_img_s:8.1f} img/s"


TABLE_COLUMNS = (
    ("target", "{}"),
    ("model", "{}"),
    ("mode", "{}"),
    ("bs@img", "{}"),
    ("params M", "{:.2f}"),
    ("GFLOPs/img", "{:.2f}"),
    ("median ms", "{:.1f}"),
    ("p90 ms", "{:.1f}"),
    ("img/s", "{:.1f}"),
    ("GFLOP/s", "{:.1f}"),
    ("% peak", "{:.0f}"),
    ("peak of", "{}"),
    ("x base", "{:.2f}"),
    ("FLOPs x base", "{:.2f}"),
)


def _cells(r: dict[str, Any]) -> list[Any]:
    return [
        r["target"],
        r["model"],
        r["mode"],
        f"{r['batch']}@{r['img']}",
        r["params_m"],
        r["gflops"],
        r["latency_ms_median"],
        r["latency_ms_p90"],
        r["throughput_img_s"],
        r["achieved_gflop_s"],
        r["peak_pct"],
        r.get("precision", "fp32"),
        r["ratio_vs_baseline"],
        r["flops_ratio_vs_baseline"],
    ]


def format_table(report: dict[str, Any], markdown: bool = False) -> str:
    """The results as an aligned text table (or a markdown table); skipped rows show their reason."""
    header = [c for c, _ in TABLE_COLUMNS]
    rows: list[tuple[list[str], str]] = []  # (cells, trailing note)
    for r in report["results"]:
        cells = _cells(r)
        if r["status"] != "ok":
            rows.append(([str(c) for c in cells[:4]] + [""] * (len(header) - 4), f"skipped: {r['error']}"))
        else:
            rows.append(([("-" if v is None else f.format(v)) for (_, f), v in zip(TABLE_COLUMNS, cells)], ""))
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + (f" {note}" if note else "") + " |" for cells, note in rows]
        return "\n".join(out)
    widths = [max([len(h)] + [len(cells[i]) for cells, _ in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str], note: str = "") -> str:
        return "  ".join(c.rjust(w) if i > 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + note

    return "\n".join([line(header)] + [line(cells, note) for cells, note in rows])
