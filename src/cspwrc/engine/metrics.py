"""Detection metrics beside COCO AP: per-class P/R/F1 at the best-F1 confidence, confusion matrix, P/R/F1 curves.

What Ultralytics and MMDetection print after validation, computed from the same COCO ground truth and results
that :func:`cspwrc.engine.evaluate.coco_evaluate` scores. All at IoU 0.5, crowd ground truth left out:

* A prediction is a **true positive** when it takes (in score order, like COCOeval) a still unmatched ground-truth
  box of its class with IoU >= 0.5 (the best such box). For a confidence threshold ``t``, a class's precision is
  TP / predictions with score >= t (0 when there are none), its recall TP / instances; F1 = 2PR / (P + R).
* The reported P/R/F1 are taken at the **best-F1 confidence**: the threshold on a 0..1 grid (step 0.001) that
  maximises the mean F1 over the classes with instances (the lowest such threshold on ties).
* The **confusion matrix** counts, at that confidence, class-agnostic one-to-one matches (IoU >= 0.5, highest
  IoU first): ``matrix[p][t]`` = predictions of class ``p`` matched to ground truth of class ``t``; the last row
  (``p`` = background) holds missed ground truth, the last column (``t`` = background) unmatched predictions.
* A class without instances in the evaluated images has no recall: its P/R/F1 are None (``null`` in JSON, ``-`` in
  tables), never NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

IOU_THRESHOLD = 0.5
CONF_GRID = np.linspace(0.0, 1.0, 1001)
RECALL_GRID = np.linspace(0.0, 1.0, 101)  # COCO's 101 recall points


@dataclass
class ImageDetections:
    """One image: ground truth ``gt_boxes`` [M, 4] / ``gt_labels`` [M] and predictions ``boxes`` [N, 4] /
    ``scores`` [N] / ``labels`` [N]; boxes xyxy in the same pixel frame, labels class indices 0..C-1."""

    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


@dataclass
class DetectionStats:
    names: list[str]  # the scored classes
    instances: list[int]  # ground-truth boxes per class
    conf: float  # the best-F1 confidence the per-class numbers and the confusion matrix use
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    confusion: list[list[int]]  # [C + 1, C + 1], see the module docstring
    # Curves for the plots ([C, len(CONF_GRID)] over the confidence grid; [C, len(RECALL_GRID)] for PR).
    p_curve: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    r_curve: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    f1_curve: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    pr_curve: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no curves)."""
        return {"iou": IOU_THRESHOLD, "best_f1_conf": self.conf,
                "confusion_matrix": {"labels": [*self.names, "background"], "rows": "predicted", "columns": "true",
                                     "matrix": self.confusion}}


def match_predictions(image: ImageDetections, iou_threshold: float = IOU_THRESHOLD) -> torch.Tensor:
    """bool [N]: prediction i is a true positive (class-aware, score order, one ground truth box each)."""
    tp = np.zeros(len(image.scores), dtype=bool)
    if len(image.scores) == 0 or len(image.gt_labels) == 0:
        return torch.from_numpy(tp)
    iou = box_iou(image.boxes.float(), image.gt_boxes.float()).numpy()  # [N, M]
    iou[image.labels.numpy()[:, None] != image.gt_labels.numpy()[None, :]] = -1.0
    # Only predictions with some box of their class at the threshold can match; the rest are false positives.
    # Visiting just those (in the same stable score order) keeps a 300-detection image fast.
    candidates = np.flatnonzero((iou >= iou_threshold).any(1))
    order = candidates[np.argsort(-image.scores.numpy()[candidates], kind="stable")]
    taken = np.zeros(len(image.gt_labels), dtype=bool)
    for i in order:
        row = np.where(taken, -1.0, iou[i])
        best = int(row.argmax())
        if row[best] >= iou_threshold:
            tp[i], taken[best] = True, True
    return torch.from_numpy(tp)


def confusion_update(matrix: np.ndarray, image: ImageDetections, conf: float,
                     iou_threshold: float = IOU_THRESHOLD) -> None:
    """Add one image's class-agnostic matches (predictions with score >= conf) to ``matrix`` [C + 1, C + 1]."""
    background = matrix.shape[0] - 1
    keep = image.scores >= conf
    labels, gt_labels = image.labels[keep].tolist(), image.gt_labels.tolist()
    pred_done, gt_done = set(), set()
    if labels and gt_labels:
        iou = box_iou(image.boxes[keep].float(), image.gt_boxes.float())  # [N, M]
        pairs = (iou >= iou_threshold).nonzero().tolist()
        for i, j in sorted(pairs, key=lambda ij: -float(iou[ij[0], ij[1]])):
            if i not in pred_done and j not in gt_done:
                matrix[labels[i], gt_labels[j]] += 1
                pred_done.add(i)
                gt_done.add(j)
    for j, t in enumerate(gt_labels):
        if j not in gt_done:
            matrix[background, t] += 1  # missed
    for i, p in enumerate(labels):
        if i not in pred_done:
            matrix[p, background] += 1  # false detection


def class_curves(tp: np.ndarray, scores: np.ndarray, instances: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One class's precision and recall over CONF_GRID and its interpolated PR curve over RECALL_GRID.

    ``tp`` bool [N] and ``scores`` [N] of the class's predictions. Precision at a threshold with no prediction
    left is 0; the PR curve is COCO's: at each recall level the best precision reached at that recall or beyond.
    """
    order = np.argsort(-scores, kind="stable")
    scores, ctp = scores[order], np.cumsum(tp[order])
    kept = np.searchsorted(-scores, -CONF_GRID, side="right")  # predictions with score >= threshold
    tp_at = np.where(kept > 0, ctp[np.maximum(kept - 1, 0)] if len(ctp) else 0, 0)
    precision = np.where(kept > 0, tp_at / np.maximum(kept, 1), 0.0)
    recall = tp_at / instances if instances else np.zeros_like(CONF_GRID)
    pr = np.zeros_like(RECALL_GRID)
    if len(ctp) and instances:
        rec, prec = ctp / instances, ctp / np.arange(1, len(ctp) + 1)
        envelope = np.maximum.accumulate(prec[::-1])[::-1]  # best precision at this recall or beyond
        idx = np.searchsorted(rec, RECALL_GRID, side="left")
        pr = np.where(idx < len(rec), envelope[np.minimum(idx, len(rec) - 1)], 0.0)
    return precision, recall, pr


def detection_stats(images: Iterable[ImageDetections], names: Sequence[str],
                    iou_threshold: float = IOU_THRESHOLD) -> DetectionStats:
    """P/R/F1 per class at the best-F1 confidence, the confusion matrix there, and the curves (module docstring)."""
    images = list(images)
    num_classes = len(names)
    tps, scores, labels = [], [], []
    instances = np.zeros(num_classes, dtype=np.int64)
    for image in images:
        tps.append(match_predictions(image, iou_threshold).numpy())
        scores.append(image.scores.float().numpy())
        labels.append(image.labels.numpy())
        instances += np.bincount(image.gt_labels.numpy(), minlength=num_classes)[:num_classes]
    tp, score, label = (np.concatenate(a) if a else np.zeros(0) for a in (tps, scores, labels))
    p_curve, r_curve, pr_curve = (np.zeros((num_classes, len(g))) for g in (CONF_GRID, CONF_GRID, RECALL_GRID))
    for c in range(num_classes):
        mine = label == c
        p_curve[c], r_curve[c], pr_curve[c] = class_curves(tp[mine].astype(bool), score[mine], int(instances[c]))
    f1_curve = 2 * p_curve * r_curve / np.maximum(p_curve + r_curve, 1e-16)
    present = instances > 0
    best = int(np.argmax(f1_curve[present].mean(0))) if present.any() else 0
    conf = float(CONF_GRID[best])
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image in images:
        confusion_update(matrix, image, conf, iou_threshold)

    def at_best(curve: np.ndarray) -> list[float | None]:
        return [float(curve[c, best]) if present[c] else None for c in range(num_classes)]

    return DetectionStats(list(names), instances.tolist(), conf, at_best(p_curve), at_best(r_curve),
                          at_best(f1_curve), matrix.tolist(), p_curve, r_curve, f1_curve, pr_curve)


def _xyxy(xywh: Sequence[Sequence[float]]) -> torch.Tensor:
    boxes = torch.tensor(xywh, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def coco_detection_stats(coco_gt: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]) -> DetectionStats:
    """:func:`detection_stats` of COCO results against ``coco_gt`` (its categories, sorted by id, are the classes;
    crowd ground truth is left out; results of other categories are ignored, as COCOeval does)."""
    cat_ids = sorted(coco_gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    names = [coco_gt.cats[c].get("name", str(c)) for c in cat_ids]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if r["category_id"] in index:
            by_image.setdefault(int(r["image_id"]), []).append(r)

    def image(img_id: int) -> ImageDetections:
        gts = [a for a in coco_gt.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0) and a["category_id"] in index]
        dets = by_image.get(img_id, [])
        return ImageDetections(
            _xyxy([a["bbox"] for a in gts]), torch.tensor([index[a["category_id"]] for a in gts], dtype=torch.int64),
            _xyxy([d["bbox"] for d in dets]), torch.tensor([float(d["score"]) for d in dets], dtype=torch.float64),
            torch.tensor([index[d["category_id"]] for d in dets], dtype=torch.int64))

    return detection_stats((image(i) for i in sorted(set(int(i) for i in image_ids))), names)
