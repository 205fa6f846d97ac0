"""kill -9 a real training process at several points; checkpoints stay loadable and --resume finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _tiny import ROOT, cli_args, tiny_data

from cspwrc.engine import checkpoint as ck

TRAIN = str(ROOT / "tools" / "train_det.py")


def _start(args: list[str], log: Path, pause_s: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "CSPWRC_CKPT_PAUSE_S": str(pause_s), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, TRAIN, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"kill point not reached in {timeout_s}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _state_epoch(out: Path) -> int | None:
    try:
        return ck.read_state(out / "last.state.pt")["epoch"]
    except ck.CheckpointError:
        return None


def test_kill_at_several_points_then_resume(tmp_path):
    data = tiny_data(tmp_path)
    out = tmp_path / "run"
    args = cli_args(data, out, epochs=2)

    # 1) Killed before any checkpoint exists: --resume says so clearly (exit 2), nothing half-written.
    log = tmp_path / "a.log"
    proc = _start(args, log)
    _kill_when(proc, lambda: "epoch 1" in log.read_text() or "training cspwrc_n" in log.read_text(), log)
    rc = subprocess.run([sys.executable, TRAIN, "--resume", str(out)], capture_output=True, text=True).returncode
    assert rc == 2 and not (out / "last.safetensors").exists()

    # 2) Killed while training epoch 2 (epoch 1's files complete): last is epoch 1 and loads.
    log = tmp_path / "b.log"
    proc = _start(args, log)
    _kill_when(proc, lambda: (out / "results.csv").exists(), log)
    assert _state_epoch(out) == 1 and ck.read_weights(out / "last.safetensors")[1]["epoch"] == 1

    # 3) Resumed, then killed inside epoch 2's checkpoint write (temp file written, not yet renamed).
    log = tmp_path / "c.log"
    proc = _start(["--resume", str(out), "--no-progress"], log, pause_s=5.0)
    _kill_when(proc, lambda: any(out.glob(".last.state.pt.*.tmp")), log)
    assert _state_epoch(out) == 1, "a torn or premature last.state.pt"
    assert ck.read_weights(out / "last.safetensors")[1]["epoch"] == 1

    # 4) Resumed again without interruption: the run finishes and cleans the stale temp file.
    done = subprocess.run([sys.executable, TRAIN, "--resume", str(out), "--no-progress"], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed" in done.stdout and "mAP@[.5:.95]" in done.stdout
    assert _state_epoch(out) == 2 and (out / "metrics.json").is_file()
    assert not list(out.glob(".*.tmp"))
    assert len((out / "results.csv").read_text().splitlines()) == 3  # header + one row per epoch, no duplicates
