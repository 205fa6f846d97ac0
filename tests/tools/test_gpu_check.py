"""tools/gpu_check.sh --dry-run: the GPU measurement script runs end to end on the CPU (tiny settings)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from shared_data import shared_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_the_summary(tmp_path: Path) -> None:
    """Two steps keep it short (the benchmark steps' GPU-only modes are tested in test_benchmark.py)."""
    coco = shared_dataset("coco128")
    env = {**os.environ, "CSPWRC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out"),
                           "--coco128", str(coco), "--steps", "train_bs16", "ultralytics"],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    steps = summary["steps"]
    assert set(steps) == {"train_bs16", "ultralytics"}
    train = steps["train_bs16"]
    assert train["status"] == "ok" and len(train["epochs"]) == 3 and train["median_img_s"] > 0
    assert train["startup_s"] > 0 and "data cache ram" in train["settings"][0]
    assert steps["ultralytics"]["status"] in ("skipped", "ok")  # ok where ultralytics is importable
    assert summary["targets"]["train_img_s"] == train["median_img_s"]
    assert "epoch 1/3: loss=" in (tmp_path / "out" / "log.txt").read_text()
