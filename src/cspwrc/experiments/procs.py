"""Child processes of the GPU measurement: run one with a time limit while logging its lines, and sample the GPU."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
from collections.abc import Callable
from typing import IO, Any

__all__ = ["UtilSampler", "capture", "stream"]


def capture(cmd: list[str]) -> str:
    """A command's stdout (stripped), or ``unavailable (reason)`` when it cannot run within 60 s."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"


def stream(cmd: list[str], log: IO[str], limit: float, on_line: Callable[[str], None] | None = None,
           env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``cmd``, copy its output to ``log`` line by line (``on_line(line)`` sees each), kill it at ``limit`` s.

    Returns the exit code (124 when killed at the limit, as ``timeout`` does) and the output lines.
    """
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line)
    finally:
        timer.cancel()
        rc = proc.wait()
        log.flush()
    return (124 if rc in (-9, 137) else rc), lines


class UtilSampler:
    """``nvidia-smi`` GPU utilisation every 200 ms between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.samples: list[int] = []

    def start(self) -> None:
        if self.proc is None:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200"], stdout=subprocess.PIPE, text=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.samples = [int(v) for v in out.split() if v.strip().isdigit()]

    def summary(self) -> dict[str, Any]:
        """Median, mean and the share of samples under 10 % (None without samples)."""
        s = self.samples
        return {"gpu_util_samples": len(s), "gpu_util_median_pct": statistics.median(s) if s else None,
                "gpu_util_mean_pct": round(statistics.mean(s), 1) if s else None,
                "gpu_util_below_10_pct_share": round(sum(v < 10 for v in s) / len(s), 3) if s else None}
