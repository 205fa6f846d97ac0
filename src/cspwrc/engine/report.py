"""Run records: ``results.csv`` (one row per epoch), ``curves.png`` (losses and mAP), ``metrics.json``.

All three are rewritten whole from the run history with the same atomic write as checkpoints, so a
killed run never leaves a half-written row, and a resumed run's files match its checkpoint's history.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from cspwrc.atomic import write_bytes

LOSS_KEYS = ("loss", "loss_cls", "loss_box", "loss_dfl")


def write_results_csv(path: str | Path, history: Sequence[dict[str, Any]]) -> None:
    if not history:
        return
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
    data = buf.getvalue().encode()
    write_bytes(path, data)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def plot_curves(path: str | Path, history: Sequence[dict[str, Any]]) -> None:
    """Losses (train) and mAP / mAP50 (val) per epoch; epochs without evaluation are gaps."""
    if not history:
        return
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4))  # matplotlib.figure, no pyplot: no global state, no GUI backend needed
    ax_loss, ax_map = fig.subplots(1, 2)
    for key in LOSS_KEYS:
        if key in history[0]:
            ax_loss.plot(epochs, [row.get(key, math.nan) for row in history], marker=".", label=key)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="losses")
    ax_loss.legend()
    for key in ("map", "map50"):
        ax_map.plot(epochs, [row.get(key, math.nan) for row in history], marker="o", label=key)
    ax_map.set(xlabel="epoch", ylabel="COCO AP", title="val mAP", ylim=(0, 1))
    ax_map.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    write_bytes(path, data)
