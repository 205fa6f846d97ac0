"""tools/gpu_check.sh (cspwrc.experiments.gpu_check, procs and its workers): the GPU measurement runs end to end on
the CPU (--dry-run, tiny settings); its child-process helpers and the targets table."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from cspwrc.experiments import gpu_check, procs
from shared_data import shared_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_the_summary(tmp_path: Path) -> None:
    """Three steps keep it short (the benchmark steps' GPU-only modes are tested in test_benchmark.py)."""
    coco = shared_dataset("coco128")
    env = {**os.environ, "CSPWRC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out"),
                           "--coco128", str(coco), "--steps", "train_bs16", "ultralytics", "startup_profile"],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    steps = summary["steps"]
    assert set(steps) == {"train_bs16", "ultralytics", "startup_profile"}
    train = steps["train_bs16"]
    assert train["status"] == "ok" and len(train["epochs"]) == 3 and train["median_img_s"] > 0
    assert train["startup_s"] > 0 and "data cache ram" in train["settings"][0]
    assert steps["ultralytics"]["status"] in ("skipped", "ok")  # ok where ultralytics is importable
    assert summary["targets"]["train_img_s"] == train["median_img_s"]
    assert "epoch 1/3: loss=" in (tmp_path / "out" / "log.txt").read_text()
    profile = steps["startup_profile"]
    assert profile["status"] == "ok" and profile["timing"][0].startswith("imports ") and "Trainer() " in \
        profile["timing"][0]
    assert "cumulative" in (tmp_path / "out" / "startup_profile.txt").read_text()


def test_stream_logs_every_line_and_stops_at_the_limit() -> None:
    log, seen = io.StringIO(), []
    rc, lines = procs.stream([sys.executable, "-c", "print('a'); print('b')"], log, 60, seen.append)
    assert (rc, lines, seen) == (0, ["a", "b"], ["a\n", "b\n"]) and "a\nb\n" in log.getvalue()
    rc, _ = procs.stream([sys.executable, "-c", "import time; time.sleep(30)"], io.StringIO(), 0.5)
    assert rc == 124
    assert procs.capture(["/no/such/tool"]).startswith("unavailable")


def test_targets_put_the_issue_numbers_beside_the_measured_ones() -> None:
    def bench(mode: str, **numbers: float) -> dict:
        return {"rows": [{"mode": mode, "status": "ok", "latency_ms_median": 0.5, "throughput_img_s": 2e4, **numbers}]}

    steps = {"train_bs16": {"median_img_s": 300.0}, "ultralytics": {"median_img_s": 150.0},
             "train_bs64": {"gpu_util_median_pct": 85},
             "bench_backbone_bs1": bench("folded+channels_last+fp16+cudagraph"),
             "bench_backbone_bs32": bench("folded+channels_last+fp16")}
    targets = gpu_check.targets(steps)
    assert targets["train_img_s_vs_ultralytics (>= 1.5)"] == 2.0 and targets["gpu_util_bs64_median_pct (>= 80)"] == 85
    assert targets["backbone_bs1_ms_fp16_cudagraph (<= 0.6)"] == 0.5
    assert targets["backbone_bs32_img_s_fp16_channels_last (>= 15000)"] == 2e4
    assert targets["detector_bs1_ms_incl_nms (<= 2)"] is None  # the step did not run
