"""The race's scoring (one pycocotools COCOeval for every contestant) and its table (OUT/race.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cspwrc.data.config import load_data_config
from cspwrc.engine.evaluate import coco_evaluate
from cspwrc.experiments.optimizers import format_optimizer
from cspwrc.experiments.race_data import quiet_coco

__all__ = ["latency_cell", "race_table", "score"]


def score(data_yaml: str, runs: dict[str, Path],
          optimizer_of: Callable[[str, Path], dict[str, Any] | None]) -> list[dict[str, Any]]:
    """A row per finished contestant (``runs``: name -> its folder): its ``summary.json``, then ``map``/``map50``
    of its ``detections.json`` on the val annotation file. A summary without an ``optimizer`` entry (a run of an
    older race) gets one from ``optimizer_of(name, folder)`` where the run's files allow."""
    gt = quiet_coco(load_data_config(data_yaml).val.ann)
    rows = []
    for contestant, out in runs.items():
        if not (out / "summary.json").is_file():
            continue
        summary = json.loads((out / "summary.json").read_text())
        if "optimizer" not in summary:
            summary["optimizer"] = optimizer_of(contestant, out)
        result = coco_evaluate(gt, json.loads((out / "detections.json").read_text()))
        rows.append({"contestant": contestant, **summary, "map": result.map, "map50": result.map50})
    return rows


def latency_cell(entry: dict[str, float] | None, nms_free: bool = False) -> str:
    """``with_nms (forward w/o NMS)`` in ms; an NMS-free head's one number is marked so; ``–`` when not timed."""
    if not entry:
        return "–"
    if nms_free:
        return f"{entry['with_nms']:.1f} (NMS-free head)"
    return f"{entry['with_nms']:.1f}" + (f" ({entry['forward']:.1f} w/o NMS)" if "forward" in entry else "")


def race_table(rows: list[dict[str, Any]], latency_img: Sequence[int]) -> str:
    """Markdown: per contestant its cost, budget use, accuracy, bs1 latency per size in PyTorch and ONNX Runtime,
    the latency threads and the optimizer it really used. No latency columns when the phase was skipped."""
    head = ["contestant", "params (M)", "GFLOPs@img", "epochs", "train wall (s)", "mAP@[.5:.95]", "AP50",
            *(f"bs1@{s} ms" for s in latency_img), *(f"ORT bs1@{s} ms" for s in latency_img), "latency threads",
            "optimizer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        nms_free = bool(r.get("end2end"))
        cells = [latency_cell((r.get(key) or {}).get(str(s)), nms_free)
                 for key in ("latency_ms", "latency_ort_ms") for s in latency_img]
        row = [r["contestant"], f"{r['params_m']:.2f}", f"{r['gflops_at_img']:.2f}", str(r["epochs"]),
               f"{r['train_wall_s']:.0f}", f"{r['map']:.4f}", f"{r['map50']:.4f}", *cells,
               str(r.get("latency_threads", "–")), format_optimizer(r.get("optimizer"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
