"""The benchmark report's environment record and its table (text or markdown).

The report is the dict :func:`cspwrc.deploy.benchmark.run_benchmark` returns and ``cspwrc benchmark --json``
writes; ``results`` holds one dict per :class:`~cspwrc.deploy.benchmark.BenchRow`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import timm
import torch

__all__ = ["TABLE_COLUMNS", "environment", "format_table", "load_avg"]

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


def environment(device: str, threads: int) -> dict[str, Any]:
    """Versions, CPU, device, threads and the load average at the start (what makes two reports comparable)."""
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "device": device,
        "threads": threads,
        "load_avg_start": load_avg(),
        "flop_convention": "FLOPs from torch.utils.flop_counter (multiply-add = 2 FLOPs), per image",
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


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
            formatted = [("-" if v is None else f.format(v)) for (_, f), v in zip(TABLE_COLUMNS, cells, strict=True)]
            rows.append((formatted, ""))
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + (f" {note}" if note else "") + " |" for cells, note in rows]
        return "\n".join(out)
    widths = [max([len(h)] + [len(cells[i]) for cells, _ in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str], note: str = "") -> str:
        padded = (c.rjust(w) if i > 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded) + note

    return "\n".join([line(header)] + [line(cells, note) for cells, note in rows])
