"""DDP: torchrun with 2 CPU processes (gloo) trains one epoch; rank 0 alone writes; eval covers every image.
Faults: a killed rank stops the other in bounded time (then --resume finishes); a fault one rank finds stops all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from _tiny import ROOT, cli_args, tiny_data

from cspwrc.engine import checkpoint as ck
from cspwrc.engine.lock import RunLock

TRAIN = str(ROOT / "tools" / "train_det.py")


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


# ----------------------------------------------------------------------------------------------- faults
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_ranks(args: list[str], logs: Path, world: int = 2) -> list[subprocess.Popen]:
    """Start the ranks with the environment torchrun gives them, but without its agent, so that each rank's own
    exit code and exit time are observed (the agent would SIGTERM the survivors itself)."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    return [subprocess.Popen([sys.executable, TRAIN, *args], stdout=(logs / f"rank{r}.log").open("w"),
                             stderr=subprocess.STDOUT, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
            for r in range(world)]


def _wait_all(procs: list[subprocess.Popen], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_killed_rank_stops_the_other_in_bounded_time_then_resume(tmp_path):
    data = tiny_data(tmp_path)
    out = tmp_path / "ddp"
    procs = _launch_ranks([*cli_args(data, out, epochs=6), "--device", "cpu"], tmp_path)
    deadline = time.monotonic() + 240
    while not (out / "results.csv").exists():  # epoch 1 is saved
        assert all(p.poll() is None for p in procs), (tmp_path / "rank0.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    (rc0,) = _wait_all(procs[:1], timeout_s=90)
    waited = time.monotonic() - killed_at
    log = (tmp_path / "rank0.log").read_text()
    assert rc0 == 3, log[-3000:]
    assert "stopped: rank 0: lost contact with another process" in log and "continue with --resume" in log, log[-3000:]
    assert "Traceback" not in log and waited < 60
    done = subprocess.run([sys.executable, TRAIN, "--resume", str(out), "--epochs", "2", "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert ck.read_state(out / "last.state.pt")["epoch"] == 2


def test_fault_found_by_one_rank_stops_every_rank_with_exit_2(tmp_path):
    """Only rank 0 takes the run lock; when another process holds it, both ranks stop with exit 2."""
    data = tiny_data(tmp_path)
    out = tmp_path / "ddp"
    out.mkdir()
    holder = RunLock(out)
    holder.acquire()  # this test process is the "live run" in the folder
    try:
        # --exist-ok: train into this very folder (else the held folder counts as taken and the run goes to ddp2)
        procs = _launch_ranks([*cli_args(data, out, epochs=1), "--device", "cpu", "--exist-ok"], tmp_path)
        codes = _wait_all(procs, timeout_s=180)
    finally:
        holder.release()
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert codes == [2, 2], logs
    assert f"pid {os.getpid()}" in logs[0] and f"rank 0: {out}: another live process (pid {os.getpid()})" in logs[1]
    assert not any("Traceback" in text for text in logs)
