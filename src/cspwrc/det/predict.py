"""A trained detector on images: the one inference path behind ``cspwrc predict`` and the library.

    model, meta = load_detector("runs/det/best.safetensors")       # eval mode; meta: img, class names, ...
    det = detect(model, image, input_size(meta))                   # image: uint8 [H, W, 3] RGB, any size
    records = describe(select(det, conf=0.25, classes=None, max_det=300), meta)

:func:`detect` letterboxes the image to the model's square input (:func:`cspwrc.data.letterbox.letterbox`, the
convention of docs/design.md), runs the model's eval forward (post-processing: ``model.cfg.post``) and maps the
boxes back to the original pixels (:func:`cspwrc.det.postprocess.undo_letterbox`). :func:`load_detector` and
:func:`input_size` (from :mod:`cspwrc.det.load`) are re-exported here so the whole API is one import. This
module is not imported by ``import cspwrc.det``: the letterbox comes with the data package and its dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cspwrc.data.letterbox import letterbox

from .load import input_size, load_detector
from .postprocess import undo_letterbox

__all__ = ["class_names", "coco_results", "describe", "detect", "input_size", "load_detector", "select", "yolo_lines"]

Detections = dict[str, Tensor]  # "boxes" float32 [K, 4] xyxy, "scores" float32 [K], "labels" int64 [K]


@torch.inference_mode()
def detect(model: nn.Module, image: np.ndarray, img: int) -> Detections:
    """Detections of an eval-mode detector on one image, in that image's pixels.

    Args:
        model: a detector in eval mode (e.g. from :func:`load_detector`), on any device; it takes ``float [B, 3,
            img, img]`` in ``[0, 1]`` and returns per image ``boxes``, ``scores``, ``labels``.
        image: ``uint8 [H, W, 3]`` RGB, any size.
        img: the square input size, a multiple of 32 (:func:`input_size`: the checkpoint's).

    Returns:
        ``boxes float32 [K, 4]`` (xyxy, original pixels, clipped to the image), ``scores float32 [K]``,
        ``labels int64 [K]``, sorted by score, on the CPU.
    """
    device = next(model.parameters(), torch.empty(0)).device  # an exported model (no parameters) runs from the CPU
    canvas, scale, pad = letterbox(image, img)
    batch = torch.from_numpy(canvas).permute(2, 0, 1)[None].to(device).float().div_(255.0)
    out = model(batch)[0]
    out["boxes"] = undo_letterbox(out["boxes"].float().cpu(), scale, pad, image.shape[:2])
    return {k: v.cpu() for k, v in out.items()}


def select(det: Detections, conf: float, classes: set[int] | None, max_det: int) -> Detections:
    """The detections with ``score >= conf`` and a label in ``classes`` (None: any), at most the ``max_det`` best
    (:func:`detect` returns them sorted). Every tensor keeps its trailing shape: ``[K', 4]``, ``[K']``."""
    keep = det["scores"] >= conf
    if classes is not None:
        keep &= torch.isin(det["labels"], torch.tensor(sorted(classes), dtype=det["labels"].dtype))
    return {k: v[keep][:max_det] for k, v in det.items()}


def class_names(meta: Mapping[str, Any]) -> list[str]:
    """The class name of each label ``0 .. num_classes - 1`` a checkpoint records (its index when it has none)."""
    return list(meta.get("class_names") or [str(i) for i in range(int(meta["num_classes"]))])


def describe(det: Detections, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One JSON-ready record per detection: ``box`` (xyxy, rounded to 0.01 px), ``score``, ``label``,
    ``class_name`` and ``category_id`` (the data set's id of the label, as the checkpoint records it)."""
    names = class_names(meta)
    cat_ids = meta.get("category_ids") or list(range(len(names)))
    return [{"box": [round(v, 2) for v in box], "score": round(float(score), 4), "label": int(label),
             "class_name": names[int(label)], "category_id": int(cat_ids[int(label)])}
            for box, score, label in zip(det["boxes"].tolist(), det["scores"], det["labels"], strict=True)]


def coco_results(boxes: Sequence[Sequence[float]], scores: Sequence[float], category_ids: Sequence[int],
                 image_id: int) -> list[dict[str, Any]]:
    """One image's detections as COCO results (what ``COCO.loadRes`` reads): xyxy boxes in original-image pixels ->
    ``bbox [x, y, w, h]`` rounded to 0.001 px, ``score`` to 5 decimals. The one writer of ``cspwrc val``'s
    ``--out`` and ``cspwrc predict --save-json``."""
    return [{"image_id": int(image_id), "category_id": int(cat),
             "bbox": [round(float(v), 3) for v in (x1, y1, x2 - x1, y2 - y1)], "score": round(float(score), 5)}
            for (x1, y1, x2, y2), score, cat in zip(boxes, scores, category_ids, strict=True)]


def yolo_lines(dets: Sequence[Mapping[str, Any]], height: int, width: int, with_score: bool) -> str:
    """YOLO label lines of :func:`describe`'s records: ``label xc yc w h [score]``, normalised by the image size."""
    lines = []
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        row = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
        text = f"{d['label']} " + " ".join(f"{v:.6f}" for v in row)
        lines.append(text + (f" {d['score']:.4f}" if with_score else ""))
    return "".join(line + "\n" for line in lines)
