"""Post-processing: raw predictions → per-image detections, and mapping boxes back through a letterbox.

The raw prediction format (what :meth:`cspwrc.det.YoloDetector.forward_raw` and exported models return) is
``[B, A, 4 + C]``: per anchor point an xyxy box in input-image pixels followed by ``C`` class probabilities
(sigmoid already applied). :func:`postprocess` turns that into the torchvision detection output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from cspwrc.validate import require

__all__ = ["PostprocessCfg", "postprocess", "undo_letterbox"]


@dataclass
class PostprocessCfg:
    """Arguments of :func:`postprocess` (its defaults); the detector's live copy is ``model.cfg.post``."""

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
