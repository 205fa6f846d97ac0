"""What the caller does after an exported detector, in numpy only (no torch): copy this file next to onnxruntime.

An exported cspwrc detector maps ``images float32 [B, 3, S, S]`` (RGB in [0, 1], letterboxed to ``S``; see
docs/design.md) to ``raw float32 [B, A, 4 + C]``: per anchor point an xyxy box in input pixels and ``C`` class
probabilities (sigmoid applied). :func:`postprocess_numpy` reproduces ``cspwrc.det.postprocess.postprocess``
(score threshold, top-k, class-aware NMS, max detections) and :func:`undo_letterbox_numpy` reproduces
``cspwrc.det.postprocess.undo_letterbox``; tests check both agree with the torch versions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["decode_metadata", "nms_numpy", "onnx_metadata_numpy", "postprocess_numpy", "topk_numpy",
           "undo_letterbox_numpy"]


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS like ``torchvision.ops.nms``: indices of kept boxes ``[K]``, by descending score."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for zero-area boxes clipped at the border
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_thresh)]  # NaN IoU (degenerate boxes) keeps the box, as torchvision does
    return np.asarray(keep, dtype=np.int64)


def _class_aware_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thresh: float) -> np.ndarray:
    """NMS within each class: offset boxes per class so boxes of different classes never overlap."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = labels.astype(boxes.dtype) * (boxes.max() + 1)
    return nms_numpy(boxes + offsets[:, None], scores, iou_thresh)


def postprocess_numpy(
    raw: np.ndarray,
    score_thresh: float = 0.001,
    nms_iou: float = 0.6,
    max_det: int = 300,
    pre_nms_topk: int = 3000,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """``raw [B, A, 4 + C]`` -> per image ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` (descending score).

    Multi-label: every (point, class) with probability > ``score_thresh`` is a candidate; the ``pre_nms_topk``
    best go into class-aware NMS; ``image_size = (height, width)`` clips boxes to the input image.
    """
    results = []
    for pred in raw:
        boxes, probs = pred[:, :4], pred[:, 4:]
        point_idx, labels = np.nonzero(probs > score_thresh)
        scores = probs[point_idx, labels]
        if scores.size > pre_nms_topk:
            order = np.argsort(-scores, kind="stable")[:pre_nms_topk]
            point_idx, labels, scores = point_idx[order], labels[order], scores[order]
        cand = boxes[point_idx]
        if image_size is not None:
            h, w = image_size
            cand = np.clip(cand, 0, np.asarray([w, h, w, h], dtype=cand.dtype))
        keep = _class_aware_nms(cand, scores, labels, nms_iou)[:max_det]
        results.append(
            {"boxes": cand[keep].astype(np.float32), "scores": scores[keep].astype(np.float32),
             "labels": labels[keep].astype(np.int64)}
        )
    return results


def topk_numpy(raw: np.ndarray, score_thresh: float = 0.001, max_det: int = 300,
               image_size: tuple[int, int] | None = None) -> list[dict[str, np.ndarray]]:
    """The post-processing of an end-to-end head's raw export (metadata ``end2end``: true), no NMS: per image the
    ``max_det`` best (point, class) pairs over ``score_thresh`` (first the best ``max_det`` points by their best
    class, then the best pairs among them), as :func:`cspwrc.det.postprocess.topk_detections`."""
    results = []
    for pred in raw:
        boxes, probs = pred[:, :4], pred[:, 4:]
        k = min(max_det, len(probs))
        points = np.argsort(-probs.max(-1), kind="stable")[:k]
        cand = probs[points].reshape(-1)
        order = np.argsort(-cand, kind="stable")[:k]
        order = order[cand[order] > score_thresh]
        point_idx, labels = points[order // probs.shape[1]], order % probs.shape[1]
        picked = boxes[point_idx]
        if image_size is not None:
            h, w = image_size
            picked = np.clip(picked, 0, np.asarray([w, h, w, h], dtype=picked.dtype))
        results.append({"boxes": picked.astype(np.float32), "scores": cand[order].astype(np.float32),
                        "labels": labels.astype(np.int64)})
    return results


def undo_letterbox_numpy(
    boxes: np.ndarray, scale: float, pad: Sequence[float], orig_size: Sequence[int]
) -> np.ndarray:
    """xyxy boxes of the letterboxed input -> original image pixels: ``(xyxy - [l, t, l, t]) / scale``, clipped."""
    left, top = float(pad[0]), float(pad[1])
    h, w = int(orig_size[0]), int(orig_size[1])
    out = (boxes - np.asarray([left, top, left, top], dtype=boxes.dtype)) / np.float32(scale)
    return np.minimum(np.clip(out, 0, None), np.asarray([w, h, w, h], dtype=boxes.dtype))


def onnx_metadata_numpy(session: object) -> dict[str, object]:
    """The metadata of an exported cspwrc ONNX file from an ``onnxruntime.InferenceSession``, JSON values decoded:
    ``names`` (list), ``imgsz`` ([S, S]), ``stride``, ``category_ids``, ``nms`` (dict, or None: run
    :func:`postprocess_numpy`), ``input``/``outputs`` (text), ``cspwrc_version``, ``model``."""
    return decode_metadata(session.get_modelmeta().custom_metadata_map)  # type: ignore[attr-defined]


def decode_metadata(props: Mapping[str, str]) -> dict[str, object]:
    """The string values of a cspwrc export's metadata (ONNX ``metadata_props``, OpenVINO ``rt_info``, TorchScript
    extra file) with the JSON ones decoded."""
    out: dict[str, object] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value  # plain text (input, outputs, model, version)
    return out
