"""The race's scoring (one pycocotools COCOeval for every contestant) and its table (OUT/race.md)."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cspwrc.data.config import load_data_config
from cspwrc.engine.evaluate import coco_evaluate
from cspwrc.experiments.optimizers import format_optimizer
from cspwrc.experiments.race_data import quiet_coco

__all__ = ["epoch_seconds", "latency_cell", "race_table", "score"]

# Cumulative training seconds per epoch in each contestant's results.csv: ours (train/results.csv, ``time_s``) and
# Ultralytics' (train/results.csv, ``time``).
TIME_COLUMNS = ("time_s", "time")


def epoch_seconds(out: Path) -> list[float]:
    """Seconds of each epoch of a contestant (``OUT/NAME``), from its ``train/results.csv``; ``[]`` without one."""
    path = out / "train" / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    column = next((c for c in TIME_COLUMNS if rows and c in rows[0]), None)
    if column is None:
        return []
    ends = [float(r[column]) for r in rows]
    return [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]


def _speed(out: Path, train_images: int) -> dict[str, Any]:
    """``s_per_epoch`` (median over the epochs, so a partial last epoch does not count) and ``ms_per_image``."""
    times = epoch_seconds(out)
    if not times:
        return {}
    median = statistics.median(times)
    return {"epoch_s": times, "s_per_epoch": median, "ms_per_image": 1e3 * median / train_images}


def score(data_yaml: str, runs: dict[str, Path],
          optimizer_of: Callable[[str, Path], dict[str, Any] | None]) -> list[dict[str, Any]]:
    """A row per finished contestant (``runs``: name -> its folder): its ``summary.json``, then ``map``/``map50``
    of its ``detections.json`` on the val annotation file. A summary without an ``optimizer`` entry (a run of an
    older race) gets one from ``optimizer_of(name, folder)`` where the run's files allow."""
    cfg = load_data_config(data_yaml)
    gt = quiet_coco(cfg.val.ann)
    train_images = len(quiet_coco(cfg.train.ann).getImgIds())
    rows = []
    for contestant, out in runs.items():
        if not (out / "summary.json").is_file():
            continue
        summary = json.loads((out / "summary.json").read_text())
        if "optimizer" not in summary:
            summary["optimizer"] = optimizer_of(contestant, out)
        result = coco_evaluate(gt, json.loads((out / "detections.json").read_text()))
        rows.append({"contestant": contestant, **summary, **_speed(out, train_images), "map": result.map,
                     "map50": result.map50, "map_small": result.map_small})
    return rows


def latency_cell(entry: dict[str, float] | None, nms_free: bool = False) -> str:
    """``with_nms (forward w/o NMS)`` in ms; an NMS-free head's one number is marked so; ``–`` when not timed."""
    if not entry:
        return "–"
    if nms_free:
        return f"{entry['with_nms']:.1f} (NMS-free head)"
    return f"{entry['with_nms']:.1f}" + (f" ({entry['forward']:.1f} w/o NMS)" if "forward" in entry else "")


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _newton_schulz(row: dict[str, Any]) -> str:
    """`` (NS fp32)`` where the race ran MuSGD's Newton-Schulz in float32 (a CPU without fast bf16)."""
    ns = row.get("newton_schulz")
    return " (NS fp32)" if ns and ns.get("dtype") == "float32" else ""


def race_table(rows: list[dict[str, Any]], latency_img: Sequence[int]) -> str:
    """Markdown: per contestant its cost, budget use, accuracy, bs1 latency per size in PyTorch and ONNX Runtime,
    the latency threads and the optimizer it really used. No latency columns when the phase was skipped."""
    head = ["contestant", "params (M)", "GFLOPs@img", "epochs", "s/epoch", "train wall (s)", "mAP@[.5:.95]", "AP50",
            "AP small",
            *(f"bs1@{s} ms" for s in latency_img), *(f"ORT bs1@{s} ms" for s in latency_img), "latency threads",
            "optimizer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        nms_free = bool(r.get("end2end"))
        cells = [latency_cell((r.get(key) or {}).get(str(s)), nms_free)
                 for key in ("latency_ms", "latency_ort_ms") for s in latency_img]
        row = [r["contestant"], f"{r['params_m']:.2f}", f"{r['gflops_at_img']:.2f}", str(r["epochs"]),
               _cell(r.get("s_per_epoch"), "{:.0f}"), f"{r['train_wall_s']:.0f}", f"{r['map']:.4f}",
               f"{r['map50']:.4f}", _cell(r.get("map_small"), "{:.4f}"), *cells,
               str(r.get("latency_threads", "–")), format_optimizer(r.get("optimizer")) + _newton_schulz(r)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
