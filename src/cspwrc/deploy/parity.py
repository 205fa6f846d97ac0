"""Does an end-to-end ONNX export (NonMaxSuppression in the graph) keep what the PyTorch post-processing keeps?

onnxruntime and PyTorch compute the same boxes and probabilities up to float rounding (~1e-6 on a probability), and
rounding may flip a decision that sits on an edge: a score at the threshold, at the image's k-th candidate score
(pre-NMS top-k) or at the lowest score of an image that is at ``max_det``; two overlapping boxes of one class whose
scores are near-tied (NMS keeps either). :func:`compare_nms` checks what must hold and excuses only such edges, each
within a stated :class:`NmsTolerance`:

1. every ONNX detection is a candidate of the PyTorch model: a (point, class) of its raw output with the same class,
   a score within ``score`` and a box within ``box_px`` pixels (this bounds the box difference);
2. the ONNX side keeps its own rules: scores above the threshold and within the top-k (less ``score``), at most
   ``max_det``, no two kept boxes of one class overlapping by more than the NMS IoU (plus ``iou``);
3. the same detections are kept: a detection more than ``score`` above every cut, kept on one side, is kept on the
   other too, unless a kept box of its class there overlaps it by the NMS IoU (less ``iou``) with a score at least
   as high (less ``score``): an NMS near-tie. Detections within ``score`` of a cut are counted, not compared.

Arrays: ``raw float [A, 4 + C]`` (xyxy input pixels, then class probabilities), detections ``{"boxes" [K, 4],
"scores" [K], "labels" int [K]}``, numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cspwrc.errors import RunStopped

__all__ = ["HALF_TOLERANCE", "ExportMismatch", "NmsParity", "NmsTolerance", "box_iou", "compare_nms", "parity_report",
           "raw_parity"]

MAX_FAULTS = 3  # per image in a message: the first few say what is wrong


class ExportMismatch(RunStopped):
    """The exported file does not reproduce the PyTorch model within the tolerance (exit 3); the message says
    where and by how much."""


@dataclass(frozen=True)
class NmsTolerance:
    """How far onnxruntime may differ from PyTorch: box corners in pixels, probabilities, IoU."""

    box_px: float = 0.05
    score: float = 1e-4
    iou: float = 1e-3

    def __str__(self) -> str:
        return f"boxes {self.box_px:g} px, scores {self.score:g}, IoU {self.iou:g}"


# fp16 inside the graph (export --half): ~3 significant digits per op, so a 600 px corner moves by up to ~1 px.
HALF_TOLERANCE = NmsTolerance(box_px=1.0, score=1e-2)


def raw_parity(expected: np.ndarray, actual: np.ndarray, tol: NmsTolerance, what: str) -> str:
    """A raw export (``[B, A, 4 + C]``, no post-processing) against PyTorch's output on the same images: one line
    with the largest box and probability differences, or :class:`ExportMismatch` (exit 3) naming the worse one and
    the tolerance."""
    if expected.shape != actual.shape:
        raise ExportMismatch(f"the exported {what} gives output {list(actual.shape)}, PyTorch {list(expected.shape)}. "
                             "The file is written; do not deploy it")
    box = float(np.abs(expected[..., :4] - actual[..., :4]).max(initial=0.0))
    score = float(np.abs(expected[..., 4:] - actual[..., 4:]).max(initial=0.0))
    if not (np.isfinite(box) and np.isfinite(score)):
        raise ExportMismatch(f"the exported {what} gives non-finite outputs where PyTorch's are finite. The file is "
                             "written; do not deploy it")
    line = f"boxes max {box:.3g} px, probabilities max {score:.3g} (tolerance: {tol})"
    if box > tol.box_px or score > tol.score:
        raise ExportMismatch(f"the exported {what} does not reproduce the PyTorch output on a random batch: {line}. "
                             "The file is written; do not deploy it")
    return f"{what} parity on a random batch: {line}"


@dataclass
class NmsParity:
    """One image: detections kept by PyTorch and ONNX, how many were matched, how many differences were excused
    (near a cut, NMS near-ties), the largest box difference of an ONNX detection, and the faults (none: a pass)."""

    image: int
    expected: int
    actual: int
    matched: int = 0
    near_cut: int = 0
    near_tie: int = 0
    max_box_diff: float = 0.0
    faults: list[str] = field(default_factory=list)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of xyxy boxes ``a [N, 4]`` and ``b [M, 4]``; 0 where both are empty."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    union = _area(a)[:, None] + _area(b)[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _describe(det: dict[str, np.ndarray], i: int) -> str:
    box = ", ".join(f"{v:.1f}" for v in det["boxes"][i])
    return f"label {int(det['labels'][i])} score {float(det['scores'][i]):.4g} box [{box}]"


def _pairs(exp: dict[str, np.ndarray], act: dict[str, np.ndarray], tol: NmsTolerance) -> tuple[set[int], set[int]]:
    """The same detection on both sides: label equal, scores within ``tol.score``, boxes within ``tol.box_px``;
    closest boxes first. Returns the paired indices of ``exp`` and of ``act``."""
    if not len(exp["scores"]) or not len(act["scores"]):
        return set(), set()
    diff = np.abs(exp["boxes"][:, None] - act["boxes"][None]).max(-1)
    ok = (exp["labels"][:, None] == act["labels"][None]) & (diff <= tol.box_px) & \
        (np.abs(exp["scores"][:, None] - act["scores"][None]) <= tol.score)
    used_e: set[int] = set()
    used_a: set[int] = set()
    for flat in np.argsort(np.where(ok, diff, np.inf), axis=None, kind="stable")[:int(ok.sum())]:
        i, j = (int(v) for v in np.unravel_index(flat, diff.shape))
        if i not in used_e and j not in used_a:
            used_e.add(i)
            used_a.add(j)
    return used_e, used_a


def compare_nms(raw: np.ndarray, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], img: int,
                score_thresh: float, nms_iou: float | None, max_det: int, pre_nms_topk: int, image: int = 0,
                tol: NmsTolerance = NmsTolerance()) -> NmsParity:
    """Compare one image's ONNX detections (``actual``) with PyTorch's (``expected``, from ``raw``) (module doc).
    ``nms_iou=None``: the graph of an end-to-end head (a top-k, no NMS), so no overlap rule and no NMS near-ties."""
    boxes, probs = np.clip(raw[:, :4], 0, img), raw[:, 4:]
    out = NmsParity(image, len(expected["scores"]), len(actual["scores"]))
    # 1. every ONNX detection is a candidate of the model
    for j, (box, score, label) in enumerate(zip(actual["boxes"], actual["scores"], actual["labels"], strict=True)):
        close = np.abs(probs[:, int(label)] - score) <= tol.score
        if not close.any():
            out.faults.append(f"ONNX {_describe(actual, j)} is no detection candidate of the PyTorch model (no "
                              "matching detection: no point has that score for its label)")
            continue
        diff = float(np.abs(boxes[close] - box).max(-1).min())
        out.max_box_diff = max(out.max_box_diff, diff)
        if diff > tol.box_px:
            why = f"nearest box {diff:.3g} px off"
            out.faults.append(f"ONNX {_describe(actual, j)} is no detection candidate of the PyTorch model ({why})")
    # 2. the ONNX side keeps the rules of the post-processing
    candidates = probs[probs > score_thresh]
    kth = float(np.partition(candidates, -pre_nms_topk)[-pre_nms_topk]) if candidates.size > pre_nms_topk else -np.inf
    floor = max(score_thresh, kth) - tol.score
    out.faults += [f"ONNX {_describe(actual, j)} is below the score threshold or the top-{pre_nms_topk} cut "
                   f"({max(score_thresh, kth):.4g})" for j in np.flatnonzero(actual["scores"] <= floor)]
    if out.actual > max_det:
        out.faults.append(f"ONNX kept {out.actual} detections, more than max_det {max_det}")
    for label in np.unique(actual["labels"]) if nms_iou is not None else ():
        idx = np.flatnonzero(actual["labels"] == label)
        over = np.argwhere(np.triu(box_iou(actual["boxes"][idx], actual["boxes"][idx]), 1) > nms_iou + tol.iou)
        out.faults += [f"ONNX kept {_describe(actual, idx[a])} and {_describe(actual, idx[b])}, which overlap by more "
                       f"than the NMS IoU {nms_iou}" for a, b in over]
    # 3. the same detections are kept, but for those near a cut and NMS near-ties
    full = [float(d["scores"].min()) for d in (expected, actual) if len(d["scores"]) >= max_det]
    cut = max([score_thresh, kth, *full])
    paired = _pairs(expected, actual, tol)
    out.matched = len(paired[0])
    for side, other, mine, name, other_name in ((expected, actual, paired[0], "PyTorch", "ONNX"),
                                                (actual, expected, paired[1], "ONNX", "PyTorch")):
        for i in sorted(set(range(len(side["scores"]))) - mine):
            score, label = float(side["scores"][i]), side["labels"][i]
            if score <= cut + tol.score:
                out.near_cut += 1
                continue
            overlap = box_iou(side["boxes"][i:i + 1], other["boxes"])[0] if len(other["boxes"]) else np.zeros(0)
            if nms_iou is not None and np.any((other["labels"] == label) & (other["scores"] >= score - tol.score) &
                                              (overlap >= nms_iou - tol.iou)):
                out.near_tie += 1
                continue
            out.faults.append(f"{name} kept {_describe(side, i)}, {other_name} did not (score clear of every cut, "
                              f"{cut:.4g}, and no NMS near-tie)")
    return out


def parity_report(results: list[NmsParity], tol: NmsTolerance) -> str:
    """One line over all images; raises :class:`ExportMismatch` naming each failing image when any failed."""
    bad = [r for r in results if r.faults]
    if bad:
        lines = [f"image {r.image}: PyTorch kept {r.expected} detections, ONNX {r.actual}, {r.matched} matched "
                 f"(max box diff {r.max_box_diff:.3g} px): " + "; ".join(r.faults[:MAX_FAULTS]) +
                 (f"; and {len(r.faults) - MAX_FAULTS} more" if len(r.faults) > MAX_FAULTS else "") for r in bad]
        raise ExportMismatch(f"the exported NMS graph does not reproduce the PyTorch detections (tolerance: {tol}): "
                             + " | ".join(lines) + ". The file is written; do not deploy it")
    worst = max((r.max_box_diff for r in results), default=0.0)
    return (f"NMS parity on {len(results)} images: {sum(r.matched for r in results)} detections matched (max box "
            f"diff {worst:.2e} px); not compared: {sum(r.near_cut for r in results)} near a score/top-k/max_det cut, "
            f"{sum(r.near_tie for r in results)} NMS near-ties; tolerance: {tol}")
