"""cspwrc.deploy.parity: what the --nms export check excuses (edges a float rounding may flip) and what it does not."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cspwrc.deploy.parity import ExportMismatch, NmsTolerance, box_iou, compare_nms, parity_report
from cspwrc.det.postprocess import postprocess

IMG, THRESH, IOU, MAX_DET, TOPK = 64, 0.3, 0.6, 10, 100
#                      box                        class 0  class 1
POINTS = [([4.0, 4.0, 20.0, 20.0], (0.90, 0.05)),     # 0: clear
          ([40.0, 40.0, 60.0, 60.0], (0.05, 0.80)),   # 1: clear
          ([30.0, 4.0, 50.0, 20.0], (0.300002, 0.0)),  # 2: a hair above the score threshold
          ([4.0, 30.0, 24.0, 50.0], (0.700001, 0.0)),  # 3 and 4: overlapping (IoU 0.90), near-tied scores
          ([5.0, 31.0, 24.0, 50.0], (0.70, 0.0)),
          ([5.0, 5.0, 21.0, 21.0], (0.50, 0.0)),      # 5: suppressed by point 0 (IoU 0.78)
          ([44.0, 4.0, 60.0, 20.0], (0.20, 0.0))]     # 6: below the threshold


@pytest.fixture
def case() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    raw = np.array([box + list(probs) for box, probs in POINTS], dtype=np.float32)
    (expected,) = postprocess(torch.from_numpy(raw)[None], THRESH, IOU, MAX_DET, TOPK, image_size=(IMG, IMG))
    return raw, {k: v.numpy() for k, v in expected.items()}


def _compare(raw: np.ndarray, expected: dict, actual: dict):
    return compare_nms(raw, expected, actual, IMG, THRESH, IOU, MAX_DET, TOPK)


def _without(det: dict, keep: np.ndarray) -> dict:
    return {k: v[keep] for k, v in det.items()}


def _plus(det: dict, raw: np.ndarray, point: int, label: int) -> dict:
    return {"boxes": np.concatenate([det["boxes"], raw[point:point + 1, :4]]),
            "scores": np.concatenate([det["scores"], raw[point:point + 1, 4 + label]]),
            "labels": np.concatenate([det["labels"], [label]])}


def test_the_reference_case(case):
    raw, expected = case
    assert sorted(expected["scores"].tolist()) == pytest.approx([0.300002, 0.700001, 0.8, 0.9])
    result = _compare(raw, expected, expected)
    assert (result.matched, result.near_cut, result.near_tie, result.faults) == (4, 0, 0, [])


def test_a_detection_at_the_score_threshold_may_be_missing(case):
    raw, expected = case
    result = _compare(raw, expected, _without(expected, expected["scores"] > 0.31))
    assert result.faults == [] and result.near_cut == 1
    assert "NMS parity on 1 images: 3 detections matched" in parity_report([result], NmsTolerance())


def test_an_nms_near_tie_may_keep_the_other_box(case):
    raw, expected = case
    swapped = _plus(_without(expected, np.abs(expected["scores"] - 0.700001) > 1e-6), raw, 4, 0)  # 4 instead of 3
    result = _compare(raw, expected, swapped)
    assert result.faults == [] and result.near_tie == 2 and result.matched == 3


def test_a_clear_detection_missing_fails_and_says_what_and_where(case):
    raw, expected = case
    result = _compare(raw, expected, _without(expected, expected["scores"] != expected["scores"].max()))
    assert len(result.faults) == 1 and "PyTorch kept label 0 score 0.9 box [4.0, 4.0, 20.0, 20.0]" in result.faults[0]
    with pytest.raises(ExportMismatch, match=re.escape("(tolerance: boxes 0.05 px, scores 0.0001, IoU 0.001): image 0: "
                                                       "PyTorch kept 4 detections, ONNX 3, 3 matched")):
        parity_report([result], NmsTolerance())


def test_boxes_off_by_more_than_the_tolerance_fail(case):
    raw, expected = case
    moved = {**expected, "boxes": expected["boxes"] + np.array([0.0, 0.0, 0.2, 0.0], dtype=np.float32)}
    result = _compare(raw, expected, moved)
    assert result.max_box_diff == pytest.approx(0.2, abs=1e-5) and len(result.faults) >= 4
    assert "nearest box 0.2 px off" in result.faults[0]
    assert not _compare(raw, expected, {**expected, "boxes": expected["boxes"] + 0.01}).faults  # within 0.05 px


def test_the_onnx_side_must_keep_the_rules(case):
    raw, expected = case
    unsuppressed = _compare(raw, expected, _plus(expected, raw, 5, 0))
    assert any("overlap by more than the NMS IoU 0.6" in f for f in unsuppressed.faults)
    below = _compare(raw, expected, _plus(expected, raw, 6, 0))
    assert any("label 0 score 0.2 box [44.0, 4.0, 60.0, 20.0] is below the score threshold" in f for f in below.faults)
    other_score = {**expected, "scores": expected["scores"] * 0.9}
    assert any("no point has that score" in f for f in _compare(raw, expected, other_score).faults)


def test_box_iou():
    a = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_allclose(box_iou(a, np.array([[5.0, 0.0, 15.0, 10.0]])), [[1 / 3], [0.0]])
