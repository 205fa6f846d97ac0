"""Evaluation plots (matplotlib, no display): confusion matrix, PR curves, F1 against confidence.

Written with the same atomic write as the run records: ``confusion_matrix.png``, ``PR_curve.png`` and
``F1_curve.png`` (the names Ultralytics uses) from a :class:`cspwrc.engine.metrics.DetectionStats`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cspwrc.atomic import write_bytes
from cspwrc.engine.metrics import CONF_GRID, RECALL_GRID, DetectionStats

PLOT_NAMES = ("confusion_matrix.png", "PR_curve.png", "F1_curve.png")
MAX_LEGEND_CLASSES = 12  # beyond this many classes the per-class curves are drawn thin and unlabelled
MAX_ANNOTATED_CELLS = 30  # classes up to which the confusion matrix prints its counts


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())
    return path


def plot_confusion(stats: DetectionStats, path: Path) -> Path:
    """Counts, coloured by the share of each true class (column) they hold."""
    matrix = np.asarray(stats.confusion, dtype=np.float64)
    labels = [*stats.names, "background"]
    shares = matrix / np.maximum(matrix.sum(0, keepdims=True), 1)
    size = min(4 + 0.35 * len(labels), 24)
    fig = Figure(figsize=(size, size * 0.85), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ticks = range(len(labels))
    font = 8 if len(labels) <= MAX_ANNOTATED_CELLS else 5
    ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set(xlabel="true", ylabel="predicted",
           title=f"confusion matrix (conf >= {stats.conf:.3f}, IoU >= 0.5)")
    if len(labels) <= MAX_ANNOTATED_CELLS:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    return _save(fig, path)


def _curves(stats: DetectionStats, x: np.ndarray, curves: np.ndarray, path: Path, xlabel: str, ylabel: str,
            title: str, mark: float | None = None) -> Path:
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    present = [c for c, n in enumerate(stats.instances) if n > 0]
    few = len(present) <= MAX_LEGEND_CLASSES
    for c in present:
        ax.plot(x, curves[c], lw=1 if few else 0.5, color=None if few else "grey",
                label=stats.names[c] if few else None)
    if present:
        mean = curves[present].mean(0)
        ax.plot(x, mean, lw=3, color="black", label="all classes")
        if mark is not None:
            best = int(np.searchsorted(x, mark))
            ax.plot([mark], [mean[best]], "o", color="tab:red", label=f"{mean[best]:.2f} at {mark:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def write_eval_plots(stats: DetectionStats, folder: str | Path) -> list[Path]:
    """The three plots into ``folder`` (created if needed); returns their paths."""
    folder = Path(folder)
    return [
        plot_confusion(stats, folder / PLOT_NAMES[0]),
        _curves(stats, RECALL_GRID, stats.pr_curve, folder / PLOT_NAMES[1], "recall", "precision",
                "precision-recall (IoU 0.5)"),
        _curves(stats, CONF_GRID, stats.f1_curve, folder / PLOT_NAMES[2], "confidence", "F1",
                "F1 against confidence (IoU 0.5)", mark=stats.conf),
    ]
