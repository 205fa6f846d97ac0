"""Post-processing: raw predictions → per-image detections, and mapping boxes back through a letterbox.

The raw prediction format (what :meth:`cspwrc.det.YoloDetector.forward_raw` and exported models return) is
``[B, A, 4 + C]``: per anchor point an xyxy box in input-image pixels followed by ``C`` class probabilities
(sigmoid already applied). :func:`postprocess` turns that into the torchvision detection output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from cspwrc.validate import require

__all__ = ["PostprocessCfg", "postprocess", "topk_detections", "topk_pairs", "undo_letterbox"]


@dataclass
class PostprocessCfg:
    """Arguments of :func:`postprocess` (its defaults); the detector's live copy is ``model.cfg.post``. An end-to-end
    head (:func:`topk_detections`) uses ``score_thresh`` and ``max_det`` only."""

    score_thresh: float = 0.001
    nms_iou: float = 0.6
    max_det: int = 300
    pre_nms_topk: int = 3000

    def __post_init__(self) -> None:
        require(0.0 <= self.score_thresh < 1.0, "score_thresh", "in [0, 1)", self.score_thresh)
        require(0.0 < self.nms_iou <= 1.0, "nms_iou", "in (0, 1]", self.nms_iou)
        for key in ("max_det", "pre_nms_topk"):
            require(getattr(self, key) >= 1, key, ">= 1", getattr(self, key))


def postprocess(
    raw: Tensor,
    score_thresh: float = PostprocessCfg.score_thresh,
    nms_iou: float = PostprocessCfg.nms_iou,
    max_det: int = PostprocessCfg.max_det,
    pre_nms_topk: int = PostprocessCfg.pre_nms_topk,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, Tensor]]:
    """Score threshold, class-aware NMS and a per-image cap on the number of detections.

    Each (point, class) pair whose probability exceeds ``score_thresh`` is a candidate, so one point may yield
    boxes of several classes (multi-label; this is what COCO mAP rewards). At most ``pre_nms_topk`` candidates
    per image (highest scores) go into :func:`torchvision.ops.batched_nms`, which suppresses only within a class.

    Args:
        raw: ``[B, A, 4 + C]`` boxes (xyxy pixels) and class probabilities.
        image_size: ``(height, width)``; when given, boxes are clipped to the image.

    Returns:
        One dict per image: ``boxes float32 [K, 4]``, ``scores float32 [K]``, ``labels int64 [K]``,
        sorted by descending score, ``K <= max_det``.
    """
    results = []
    for pred in raw:
        boxes, probs = pred[:, :4], pred[:, 4:]
        point_idx, labels = (probs > score_thresh).nonzero(as_tuple=True)
        scores = probs[point_idx, labels]
        if scores.numel() > pre_nms_topk:
            scores, order = scores.topk(pre_nms_topk)
            point_idx, labels = point_idx[order], labels[order]
        cand = boxes[point_idx]
        if image_size is not None:
            cand = clip_boxes_to_image(cand, tuple(image_size))
        keep = batched_nms(cand.float(), scores.float(), labels, nms_iou)[:max_det]
        results.append({"boxes": cand[keep].float(), "scores": scores[keep].float(), "labels": labels[keep]})
    return results


def topk_pairs(raw: Tensor, max_det: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k = min(max_det, A)`` best (point, class) pairs per image of ``raw [B, A, 4 + C]``, as YOLO26: first the
    ``k`` points with the highest best-class score, then the ``k`` best pairs among their ``k x C`` scores (so a point
    may carry several classes, as with NMS). Batched and exportable (TopK / Gather, no loop).

    Returns:
        ``boxes [B, k, 4]``, ``scores [B, k]`` (descending) and ``labels [B, k]`` int64.
    """
    boxes, probs = raw[..., :4], raw[..., 4:]
    num_classes = probs.shape[-1]
    k = min(max_det, probs.shape[1])
    points = probs.amax(-1).topk(k, dim=1).indices  # [B, k]
    cand = probs.gather(1, points[..., None].expand(-1, -1, num_classes)).flatten(1)  # [B, k * C]
    scores, flat = cand.topk(k, dim=1)
    point_idx = points.gather(1, torch.div(flat, num_classes, rounding_mode="floor"))
    return boxes.gather(1, point_idx[..., None].expand(-1, -1, 4)), scores, flat % num_classes


def topk_detections(
    raw: Tensor,
    score_thresh: float = PostprocessCfg.score_thresh,
    max_det: int = PostprocessCfg.max_det,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, Tensor]]:
    """The detections of an end-to-end (NMS-free) head: the ``max_det`` best (point, class) pairs
    (:func:`topk_pairs`) above ``score_thresh``, no NMS (the one-to-one branch has learnt to score duplicates low).

    Args:
        raw: ``[B, A, 4 + C]`` boxes (xyxy pixels) and class probabilities (an end-to-end detector's
            ``forward_raw``).
        image_size: ``(height, width)``; when given, boxes are clipped to the image.

    Returns:
        As :func:`postprocess`: per image ``boxes float32 [K, 4]``, ``scores float32 [K]``, ``labels int64 [K]``,
        by descending score, ``K <= max_det``.
    """
    boxes, scores, labels = topk_pairs(raw, max_det)
    if image_size is not None:
        boxes = clip_boxes_to_image(boxes, tuple(image_size))
    keep = scores > score_thresh
    return [{"boxes": b[m].float(), "scores": s[m].float(), "labels": c[m]}
            for b, s, c, m in zip(boxes, scores, labels, keep, strict=True)]


def undo_letterbox(
    boxes: Tensor, scale: float, pad: Sequence[float], orig_size: Sequence[int]
) -> Tensor:
    """Map xyxy boxes from the letterboxed image back to the original image (the one implementation).

    Letterbox convention (docs/design.md): ``new = orig * scale``, then padding ``pad = (left, top)``.
    Undo: ``orig = (xyxy - [left, top, left, top]) / scale``, clipped to ``orig_size = (height, width)``.

    Args:
        boxes: ``[K, 4]`` xyxy pixels in the letterboxed image.

    Returns:
        ``[K, 4]`` xyxy pixels in the original image (a new tensor).
    """
    left, top = float(pad[0]), float(pad[1])
    offset = boxes.new_tensor([left, top, left, top])
    return clip_boxes_to_image((boxes - offset) / float(scale), (int(orig_size[0]), int(orig_size[1])))
