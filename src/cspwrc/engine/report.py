"""Run records: ``results.csv`` (one row per epoch), ``curves.png`` (losses and mAP), ``metrics.json``, the epoch
log line and its TensorBoard scalars, and the ``train_batch*.jpg`` pictures.

The files are rewritten whole from the run history with the same atomic write as checkpoints, so a killed run never
leaves a half-written row, and a resumed run's files match its checkpoint's history.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import torch
from matplotlib.figure import Figure

from cspwrc.atomic import WriteError, write_bytes, write_json
from cspwrc.draw import batch_grid
from cspwrc.engine import distributed as dist
from cspwrc.engine.config import RunConfig
from cspwrc.engine.eval_plots import write_eval_plots
from cspwrc.engine.evaluate import STAT_NAMES, EvalResult
from cspwrc.engine.run_state import RunState
from cspwrc.errors import shorten

LOSS_KEYS = ("loss", "loss_cls", "loss_box", "loss_dfl")


class Throughput(NamedTuple):
    """One epoch's train loop: images stepped on (all ranks) and its seconds. Kept out of the history (and so out
    of ``results.csv``): timings are not reproducible, the rest of a row is."""

    images: int
    seconds: float

    @property
    def img_s(self) -> float:
        return self.images / self.seconds


def epoch_line(row: dict[str, Any], epochs: int, took_s: float, speed: Throughput) -> str:
    """The epoch's log line (the record of a ``--no-progress`` log): ``row`` is its history row, ``took_s`` the
    epoch's train + eval seconds, ``speed`` its train loop's."""
    losses = " ".join(f"{k.removeprefix('loss_')}={row[k]:.4f}" for k in LOSS_KEYS if k in row)
    evaluated = "" if math.isnan(row["map"]) else f" mAP={row['map']:.4f} mAP50={row['map50']:.4f}"
    return (f"epoch {row['epoch']}/{epochs}: {losses} lr={row['lr']:.3e} time={took_s:.1f}s{evaluated} "
            f"train={speed.seconds:.1f}s {speed.img_s:.1f} img/s")


def tensorboard_writer(folder: Path, first_step: int) -> Any:
    """A ``SummaryWriter`` for ``folder``, or ``None`` when tensorboard is not installed (the optional [tb] extra);
    :class:`~cspwrc.atomic.WriteError` when the folder cannot be written.

    ``purge_step``: a resumed run hides events a killed run wrote after its last checkpoint.
    """
    try:
        # Imported here: torch.utils.tensorboard needs the optional tensorboard package.
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (optional extra, lazy)
    except ImportError:
        return None
    try:
        return SummaryWriter(str(folder), purge_step=first_step if first_step > 1 else None)
    except OSError as err:  # it creates the folder and its event file at once
        raise WriteError(f"cannot write TensorBoard events to {shorten(folder)}: {err}") from err


def add_scalars(writer: Any, row: dict[str, Any]) -> None:
    """The finite numbers of an epoch's row as TensorBoard scalars: ``train/loss*``, ``val/map*``, ``misc/*``."""
    for key, value in row.items():
        if key != "epoch" and isinstance(value, float) and math.isfinite(value):
            group = "val" if key.startswith("map") else "train" if key.startswith("loss") else "misc"
            writer.add_scalar(f"{group}/{key}", value, row["epoch"])
    writer.flush()


def save_batch_picture(path: Path, images: torch.Tensor, targets: Sequence[dict[str, Any]],
                       names: Sequence[str]) -> None:
    """``train_batch{step}.jpg``: ``images uint8 [B, 3, S, S]`` as the model gets them, boxes and class names
    drawn (:func:`cspwrc.draw.batch_grid`); a failed write raises :class:`cspwrc.atomic.WriteError`."""
    grid = batch_grid(images, targets, names)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if ok:
        write_bytes(path, data.tobytes())


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


def run_metrics(result: EvalResult, run: RunState, cfg: RunConfig, wall_s: float, out: Path, data: str,
                train_set: Any, val_set: Any) -> dict[str, Any]:
    """The ``metrics.json`` of a finished run: the final evaluation ``result``, the run's progress and skips."""
    return {
        "map": result.map, "map50": result.map50, "stats": dict(zip(STAT_NAMES, result.stats, strict=True)),
        **result.summary(),  # per_class (instances, P/R/F1, AP) and the confusion matrix
        "val_images": result.num_images, "val_detections": result.num_detections, "world_size": dist.world_size(),
        "best_map": run.best_map, "best_epoch": run.best_epoch, "epochs": run.epoch,
        "early_stop": {"patience": cfg.train.patience,
                       "stopped_after_epoch": run.epoch if run.epoch < cfg.train.epochs else None},
        "train_time_s": run.train_time_s, "eval_time_s": run.eval_time_s, "wall_time_s_this_process": wall_s,
        "skips": {"nan_steps": run.nan_skipped, "read_failures": run.read_skipped,
                  "data_checks": {"train": _check_counts(train_set), "val": _check_counts(val_set)}},
        "run_dir": str(out), "data": data, "model": cfg.model.backbone.name,
    }


def write_final(out: Path, metrics: dict[str, Any], result: EvalResult) -> None:
    """``metrics.json`` and, next to it, the final evaluation's confusion matrix, PR and F1 curves."""
    write_json(out / "metrics.json", metrics)
    if result.detection is not None:
        write_eval_plots(result.detection, out)


def _check_counts(dataset: Any) -> dict[str, int]:
    """Per-sample problems the data checks skipped before training (the data side's CheckReport.counts)."""
    counts = getattr(getattr(dataset, "report", None), "counts", None)
    return {str(k): int(v) for k, v in dict(counts or {}).items()}
