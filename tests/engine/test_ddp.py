"""DDP: torchrun with 2 CPU processes (gloo) trains one epoch; rank 0 alone writes; eval covers every image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _tiny import ROOT, cli_args, tiny_data

from cspwrc.engine import checkpoint as ck


def test_torchrun_two_cpu_processes_one_epoch(tmp_path):
    data = tiny_data(tmp_path)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tools" / "train_det.py"), *cli_args(data, out, epochs=1), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    # 8 val images split over 2 ranks, gathered on rank 0: every image scored exactly once.
    assert metrics["world_size"] == 2 and metrics["val_images"] == 8 and metrics["epochs"] == 1
    state = ck.read_state(out / "last.state.pt")
    assert state["epoch"] == 1 and state["global_step"] == 1  # 16 images / (2 ranks x batch 8) = 1 step
    assert not any(k.startswith("module.") for k in state["model"])  # unwrapped weights, loadable without DDP
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("last")) == ["last.safetensors", "last.state.pt"]
