"""COCO bbox evaluation: run a detector over a loader, map boxes back to the original images, COCOeval.

Predictions are written as COCO results (original category ids, ``[x, y, w, h]`` in original-image
pixels), so the numbers are the official pycocotools ones and the JSON can be submitted or re-scored.
Beside COCO AP, every evaluation reports per-class instances and P/R/F1 at the best-F1 confidence and a
confusion matrix (:mod:`cspwrc.engine.metrics`; plots: :mod:`cspwrc.engine.eval_plots`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from cspwrc.atomic import write_json
from cspwrc.det.postprocess import undo_letterbox
from cspwrc.det.predict import coco_results
from cspwrc.engine import distributed as dist
from cspwrc.engine.metrics import DetectionStats, coco_detection_stats
from cspwrc.errors import shorten

STAT_NAMES: tuple[str, ...] = (
    "AP@[.50:.95]", "AP@.50", "AP@.75", "AP small", "AP medium", "AP large",
    "AR@1", "AR@10", "AR@100", "AR small", "AR medium", "AR large",
)


@dataclass
class ClassAP:
    category_id: int
    name: str
    ap: float  # AP@[.50:.95]; nan (null in JSON) when the class has no ground truth in the evaluated images
    ap50: float
    instances: int = 0  # ground-truth boxes (crowd excluded); 0 marks a class these images cannot score
    precision: float | None = None  # at the best-F1 confidence, IoU 0.5; None without instances
    recall: float | None = None
    f1: float | None = None


@dataclass
class EvalResult:
    stats: list[float]  # the 12 standard COCOeval numbers, in STAT_NAMES order
    per_class: list[ClassAP] = field(default_factory=list)
    num_images: int = 0
    num_detections: int = 0
    detection: DetectionStats | None = None  # P/R/F1, confusion matrix and curves (cspwrc.engine.metrics)
    read_failures: int = 0  # images that broke after the data checks, substituted by another one (all ranks)

    @property
    def map(self) -> float:
        return self.stats[0]

    @property
    def map50(self) -> float:
        return self.stats[1]

    @property
    def map_small(self) -> float:
        return self.stats[3]

    def format(self) -> str:
        lines = [f"{name:<14} {value:.4f}" for name, value in zip(STAT_NAMES, self.stats, strict=True)]
        empty = [r.name for r in self.per_class if r.instances == 0]
        lines.append(f"scored classes: {len(self.per_class)} ({shorten(', '.join(r.name for r in self.per_class))})"
                     + (f"; without instances in these images: {shorten(', '.join(empty))}" if empty else ""))
        if self.detection is not None:
            lines.append(f"P, R, F1 at the best-F1 confidence {self.detection.conf:.3f} (IoU 0.5)")
        lines.append(f"{'class':<24} {'instances':>9} {'P':>6} {'R':>6} {'F1':>6} {'AP50':>7} {'AP':>7}")
        for row in self.per_class:
            if row.instances == 0:
                lines.append(f"{row.name[:24]:<24} {0:>9} {'-':>6} {'-':>6} {'-':>6} {'-':>7} {'-':>7}  no instances")
                continue
            prf = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6}" for v in (row.precision, row.recall, row.f1))
            lines.append(f"{row.name[:24]:<24} {row.instances:>9} {prf} {row.ap50:7.4f} {row.ap:7.4f}")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per-class table and, when computed, the best-F1 confidence and the confusion matrix."""
        out: dict[str, Any] = {"per_class": [vars(r) for r in self.per_class]}
        if self.detection is not None:
            out["detection"] = self.detection.summary()
        return out


def detections_to_coco(output: dict[str, torch.Tensor], target: dict[str, Any],
                       label_to_cat: Sequence[int]) -> list[dict[str, Any]]:
    """One image's detector output → COCO result dicts in original-image coordinates (:func:`coco_results`)."""
    boxes = output["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    boxes = undo_letterbox(boxes, target["scale"], target["pad"], target["orig_size"])
    cats = [label_to_cat[label] for label in output["labels"].detach().cpu().tolist()]
    return coco_results(boxes.tolist(), output["scores"].detach().float().cpu().tolist(), cats, target["image_id"])


@torch.no_grad()
def predict_loader(model: torch.nn.Module, loader: Iterable, label_to_cat: Sequence[int],
                   device: torch.device, amp: bool = False, desc: str = "eval",
                   progress: bool = True, skipped: list[str] | None = None) -> tuple[list[dict[str, Any]], list[int]]:
    """Run ``model`` (eval mode) over ``loader``; return COCO results and the image ids seen.

    An image that broke after the data checks comes back as another one (the dataset substitutes it): its
    message is appended to ``skipped`` and the substitute is scored once, not twice.
    """
    model.eval()
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    seen: set[int] = set()
    use_amp = amp and device.type == "cuda"
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True).float().div_(255.0)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            outputs = model(images)
        for output, target in zip(outputs, targets, strict=True):
            if skipped is not None:
                skipped.extend(target.get("skipped", ()))
            if int(target["image_id"]) in seen:  # a substitute already scored: its detections count once
                continue
            seen.add(int(target["image_id"]))
            results.extend(detections_to_coco(output, target, label_to_cat))
            image_ids.append(int(target["image_id"]))
    return results, image_ids


def coco_evaluate(coco_gt: COCO, results: list[dict[str, Any]], image_ids: Sequence[int] | None = None,
                  verbose: bool = False) -> EvalResult:
    """COCOeval (bbox) of ``results`` against ``coco_gt`` over ``image_ids`` (default: all GT images)."""
    img_ids = sorted(set(int(i) for i in image_ids)) if image_ids is not None else sorted(coco_gt.getImgIds())
    cat_ids = sorted(coco_gt.getCatIds())
    names = {c["id"]: c.get("name", str(c["id"])) for c in coco_gt.loadCats(cat_ids)}
    detection = coco_detection_stats(coco_gt, results, img_ids)
    if not results or not img_ids:
        # loadRes cannot take an empty list; nothing detected scores 0 everywhere.
        per_class = [ClassAP(c, names[c], 0.0, 0.0) for c in cat_ids]
        return EvalResult([0.0] * 12, _with_counts(per_class, detection), len(img_ids), 0, detection)
    with contextlib.redirect_stdout(io.StringIO()) as log:
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(log.getvalue())
    stats = [max(float(s), 0.0) for s in ev.stats]  # -1 means "no ground truth in that bucket"
    return EvalResult(stats, _with_counts(_per_class(ev, names), detection), len(img_ids), len(results), detection)


def _with_counts(rows: list[ClassAP], detection: DetectionStats) -> list[ClassAP]:
    # Both list the ground truth's categories sorted by id.
    for row, n, p, r, f1 in zip(rows, detection.instances, detection.precision, detection.recall, detection.f1,
                                strict=True):
        row.instances, row.precision, row.recall, row.f1 = n, p, r, f1
    return rows


def _per_class(ev: COCOeval, names: dict[int, str]) -> list[ClassAP]:
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max-dets]; area 'all', maxDets 100.
    precision = ev.eval["precision"]
    rows = []
    for k, cat_id in enumerate(ev.params.catIds):
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[0, :, k, 0, -1]
        rows.append(ClassAP(int(cat_id), names.get(cat_id, str(cat_id)), _mean_valid(p_all), _mean_valid(p_50)))
    return rows


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def write_results(path: str | Path, results: list[dict[str, Any]]) -> None:
    """COCO results JSON (the list ``loadRes`` reads), written atomically."""
    write_json(path, results, indent=None)


def evaluate(model: torch.nn.Module, loader: Iterable, coco_gt: COCO, label_to_cat: Sequence[int],
             device: torch.device, amp: bool = False, progress: bool = True,
             results_path: str | Path | None = None) -> EvalResult:
    """Predict over ``loader`` then COCOeval; in DDP every rank predicts its shard and rank 0 scores them.

    Non-zero ranks get an EvalResult with the same stats (broadcast), so 'best' is chosen consistently.
    """
    skipped: list[str] = []
    results, image_ids = predict_loader(model, loader, label_to_cat, device, amp, progress=progress, skipped=skipped)
    results, image_ids = dist.gather_predictions(results, image_ids)
    read_failures = dist.all_reduce_sum_int(len(skipped))
    if dist.is_main():
        if results_path is not None:
            write_results(results_path, results)
        outcome = coco_evaluate(coco_gt, results, image_ids)
        outcome.read_failures = read_failures
    else:
        outcome = None
    return dist.broadcast_object(outcome)
