"""Smoke tests of tools/benchmark.py and its modules (cspwrc.deploy.benchmark, modes, runtimes, cost, timing, peak;
cspwrc.experiments.train_bench): runs on tiny inputs and writes the documented JSON (no timing claims)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cspwrc.data.shapes import generate_shapes
from cspwrc.deploy import benchmark as bm
from cspwrc.deploy import cost, modes, peak, timing
from cspwrc.det import build_detector
from cspwrc.experiments import train_bench as tb
from cspwrc.layers import fold_model

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "model", "target", "mode", "img", "batch", "params_m", "gflops", "latency_ms_median", "latency_ms_p90",
    "throughput_img_s", "achieved_gflop_s", "peak_pct", "iters", "ratio_vs_baseline", "flops_ratio_vs_baseline",
    "status", "error", "precision",
}
TINY = ["--img", "64", "--batch", "1", "--warmup", "1", "--iters", "2", "--min-iters", "1", "--peak-size", "256",
        "--threads", "1"]


def test_cli_writes_json_with_expected_keys(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark.py"), "--models", "resnet18", "cs3darknet_s",
           "--modes", "eager", "folded+channels_last", "--baseline", "cs3darknet_s", "--json", str(out), *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "median ms" in proc.stdout and "fp32 matmul peak" in proc.stdout
    report = json.loads(out.read_text())
    assert {"env", "settings", "matmul_peak_gflop_s", "results", "command"} <= report.keys()
    assert report["matmul_peak_gflop_s"] > 0 and report["env"]["threads"] == 1
    rows = report["results"]
    assert len(rows) == 4 and all(set(r) == ROW_KEYS for r in rows)
    assert all(r["status"] == "ok" and r["latency_ms_median"] > 0 and r["gflops"] > 0 for r in rows)
    base = next(r for r in rows if r["model"] == "cs3darknet_s" and r["mode"] == "eager")
    assert base["ratio_vs_baseline"] == pytest.approx(1.0)
    resnet = next(r for r in rows if r["model"] == "resnet18" and r["mode"] == "eager")
    assert resnet["flops_ratio_vs_baseline"] == pytest.approx(resnet["gflops"] / base["gflops"])


def test_flop_convention_matches_reference() -> None:
    """The issue's reference: cs3darknet_s P3-P5 features are 8.9 GFLOPs at 640 (multiply-add = 2 FLOPs)."""
    model = bm.build_target("cs3darknet_s", "backbone")
    assert model.feature_info.out_indices == (2, 3, 4) and model.feature_info.reduction() == [8, 16, 32]
    # FLOPs of convs scale with the pixel count, so 160 px (1/16 of the pixels) keeps the test fast.
    gflops_640 = cost.count_flops(model, torch.rand(1, 3, 160, 160)) * 16 / 1e9
    assert gflops_640 == pytest.approx(8.9, abs=0.05)
    params_m, gflops = cost.model_cost(model, 160)
    assert params_m == pytest.approx(cost.count_params(model) / 1e6) and gflops * 16 == pytest.approx(gflops_640)


def test_targets_are_built_by_the_detectors_own_builders() -> None:
    """The benchmarked backbone is exactly the detector's (same levels, same modules), and the detector target is
    build_detector's: one builder, not a second P3-P5 path."""
    detector = build_detector("cspwrc_n", num_classes=80)
    backbone = bm.build_target("cspwrc_n", "backbone")
    assert list(backbone.state_dict()) == list(detector.backbone.state_dict())
    assert not backbone.training
    target = bm.build_target("cspwrc_n", "detector", num_classes=3)
    assert type(target) is type(detector) and target.num_classes == 3 and not target.training
    with pytest.raises(ValueError, match="unknown target"):
        bm.build_target("cspwrc_n", "neck")


def test_latency_is_the_median_of_the_one_timing_loop() -> None:
    calls = []
    assert timing.latency_ms(lambda: calls.append(1), repeats=4, warmup=2) >= 0.0
    assert len(calls) == 6  # warm-up runs are run, not timed
    times = timing.round_robin_times([lambda: None, lambda: None], iters=3, max_seconds=60, min_iters=1)
    assert [len(t) for t in times] == [3, 3]


def test_modes_parse_and_unknown_mode_fails() -> None:
    assert modes.parse_mode("eager") == frozenset()
    assert modes.parse_mode("folded+channels_last") == {"folded", "channels_last"}
    with pytest.raises(ValueError, match="unknown mode"):
        modes.parse_mode("fast")
    with pytest.raises(ValueError, match="one runtime"):
        modes.parse_mode("folded+jit+compile")
    with pytest.raises(ValueError, match="one precision"):
        modes.parse_mode("fp16+bf16")
    assert modes.parse_mode("folded+channels_last+fp16+cudagraph") == {"folded", "channels_last", "fp16", "cudagraph"}


@pytest.mark.parametrize("mode", ["fp16", "folded+bf16", "cudagraph", "folded+channels_last+fp16+cudagraph"])
def test_gpu_modes_on_cpu_are_skipped_with_the_reason(mode: str) -> None:
    settings = bm.BenchSettings(models=["m"], img=[8], modes=["eager", mode], warmup=1, iters=1, min_iters=1,
                                peak_size=64)
    built = {"m": bm.Built(torch.nn.Conv2d(3, 4, 1), 0.0, {8: 10})}
    with torch.inference_mode():
        rows, peaks = bm.bench_group(built, "backbone", 8, 1, settings, torch.device("cpu"), log=lambda s: None)
    assert [r.status for r in rows] == ["ok", "skipped"] and list(peaks) == ["fp32"]  # no half probe on CPU
    assert "needs a CUDA device, not cpu" in rows[1].error
    assert rows[1].precision == ("bf16" if "bf16" in mode else "fp16" if "fp16" in mode else "fp32")


def test_half_conversion_keeps_the_features() -> None:
    """The fp16/bf16 modes' conversion (run here in bf16, which CPU kernels support) computes the same features."""
    model = fold_model(bm.build_target("cspwrc_n", "backbone"))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        half, x_half = modes.to_precision(model, x, frozenset({"bf16"}))  # in place, as on prepare()'s copy
        actual = half(x_half)
    assert x_half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.parameters())
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e, atol=0.1, rtol=0.05)


def test_peak_precision_follows_the_mode() -> None:
    cpu = torch.device("cpu")
    assert modes.row_precision("folded+channels_last", cpu) == "fp32"
    assert modes.row_precision("fp16+cudagraph", cpu) == "fp16"
    assert peak.base_precisions(["eager", "fp16", "bf16"], cpu) == ["fp32"]
    rows = [bm.BenchRow("m", "backbone", m, 64, 1, achieved_gflop_s=50.0, precision=p)
            for m, p in (("eager", "fp32"), ("fp16", "fp16"))]
    bm.add_ratios(rows, None, "eager", {"fp32": 100.0, "fp16": 500.0})
    assert [r.peak_pct for r in rows] == [50.0, 10.0]


def test_failing_mode_is_skipped_not_fatal() -> None:
    settings = bm.BenchSettings(models=["ok", "broken"], img=[8], modes=["eager", "folded"], warmup=1, iters=2,
                                min_iters=1, peak_size=64)
    built = {"ok": bm.Built(torch.nn.Conv2d(3, 4, 1), 0.0, {8: 10}),
             "broken": bm.Built(torch.nn.Conv2d(4, 4, 1), 0.0, {8: 10})}  # wrong input channels: forward raises
    with torch.inference_mode():
        rows, peaks = bm.bench_group(built, "backbone", 8, 1, settings, torch.device("cpu"), log=lambda s: None)
    assert list(peaks) == ["fp32"] and peaks["fp32"] > 0
    assert [(r.model, r.mode, r.status) for r in rows] == [
        ("ok", "eager", "ok"), ("ok", "folded", "ok"), ("broken", "eager", "skipped"), ("broken", "folded", "skipped")]
    assert "RuntimeError" in rows[-1].error and rows[0].iters == 2 and rows[0].latency_ms_median > 0


def test_peak_and_percentiles() -> None:
    assert peak.matmul_peak_gflops("cpu", n=128, repeats=2) > 0
    assert timing.p90([1.0]) == 1.0
    assert timing.p90([float(i) for i in range(1, 11)]) == pytest.approx(9.1)


def test_train_step_ab_smoke() -> None:
    """Both WRC settings build, step (loss finite, weights move) and are timed round-robin; no speed claim."""
    settings = tb.TrainBenchSettings(backbone="resnet18", img=64, batch=2, num_classes=3)
    assert tb.detector_kwargs("cspwrc_s", "none")["backbone"] == {"name": "cspwrc_s", "kwargs": {"wrc_weights": "none"}}
    assert tb.detector_kwargs("resnet18", "none")["backbone"] == {"name": "resnet18"}  # timm peers: neck A/B only
    steps = [tb.make_step(settings, w) for w in tb.WRC_SETTINGS]
    times = timing.round_robin_times(steps, iters=1, max_seconds=60, min_iters=1)
    assert len(times) == 2 and all(len(t) == 1 and t[0] > 0 for t in times)
    images, targets = tb.synthetic_batch(3, 64, 5)
    boxes = torch.cat([t["boxes"] for t in targets])
    assert images.shape == (3, 3, 64, 64) and bool((boxes[:, 2:] > boxes[:, :2]).all()) and boxes.max() <= 64


def test_data_side_measurements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loader throughput and the in-loop wait fraction run on a tiny generated shapes set (no timing claims)."""
    monkeypatch.setenv("CSPWRC_CACHE", str(tmp_path / "cache"))
    data = generate_shapes(tmp_path / "shapes", num_train=6, num_val=2)
    settings = tb.TrainBenchSettings(backbone="cspwrc_n", img=64, batch=2, num_classes=3, data=str(data),
                                     workers=0, data_batches=1)
    assert tb.data_throughput(settings) > 0
    assert 0.0 <= tb.loader_wait_fraction(settings, warmup=1) < 1.0


def test_peer_baseline() -> None:
    assert bm.peer_of("cspwrc_m") == "cs3darknet_m" and bm.peer_of("cspwrc_n") == "cs3darknet_s"
    assert bm.peer_of("resnet18") == "resnet18"
    rows = [bm.BenchRow(m, "backbone", "eager", 64, 1, gflops=g, throughput_img_s=t)
            for m, g, t in [("cspwrc_m", 2.0, 30.0), ("cs3darknet_m", 2.0, 20.0), ("cspwrc_n", 1.0, 80.0),
                            ("cs3darknet_s", 1.5, 40.0)]]
    bm.add_ratios(rows, "peer", "eager", peak=100.0)
    assert [r.ratio_vs_baseline for r in rows] == [1.5, 1.0, 2.0, 1.0]
    assert rows[2].flops_ratio_vs_baseline == pytest.approx(1 / 1.5)


@pytest.mark.parametrize("mode", ["folded+channels_last", "folded+jit", "folded+ort"])
def test_deploy_modes_compute_the_same_features(mode: str) -> None:
    """A mode is only a fair speed comparison if it computes the same thing as eager."""
    if "ort" in mode:
        pytest.importorskip("onnxruntime")
    model = bm.build_target("cspwrc_n", "backbone")
    x = torch.rand(2, 3, 64, 64)
    fn, x_mode = modes.prepare(model, mode, x)
    with torch.inference_mode():
        expected, actual = model(x), fn(x_mode)
    assert len(actual) == len(expected) == 3
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
