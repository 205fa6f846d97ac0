"""The numpy post-processing for exported models agrees with the detector's torch post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cspwrc.deploy.postprocess import nms_numpy, postprocess_numpy, topk_numpy, undo_letterbox_numpy
from cspwrc.det.postprocess import postprocess, topk_detections, undo_letterbox


def _raw(batch: int, anchors: int, classes: int, seed: int = 0) -> torch.Tensor:
    """Random but NMS-relevant predictions: clustered boxes so that suppression really happens."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, anchors, 2, generator=g) * 64
    sizes = torch.rand(batch, anchors, 2, generator=g) * 20 + 2
    boxes = torch.cat((centres - sizes / 2, centres + sizes / 2), -1)
    probs = torch.rand(batch, anchors, classes, generator=g) ** 4
    return torch.cat((boxes, probs), -1)


@pytest.mark.parametrize("score_thresh, topk", [(0.001, 3000), (0.3, 50)])
def test_postprocess_numpy_matches_torch(score_thresh: float, topk: int) -> None:
    raw = _raw(2, 400, 5)
    kwargs = dict(score_thresh=score_thresh, nms_iou=0.6, max_det=100, pre_nms_topk=topk, image_size=(60, 64))
    expected = postprocess(raw, **kwargs)
    actual = postprocess_numpy(raw.numpy(), **kwargs)
    for exp, act in zip(expected, actual, strict=True):
        assert len(act["scores"]) == len(exp["scores"]) > 0
        np.testing.assert_allclose(act["boxes"], exp["boxes"].numpy(), atol=1e-5)
        np.testing.assert_allclose(act["scores"], exp["scores"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(act["labels"], exp["labels"].numpy())


def test_nms_numpy_suppresses_overlaps_only() -> None:
    boxes = np.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.asarray([0.5, 0.9, 0.8], dtype=np.float32)
    np.testing.assert_array_equal(nms_numpy(boxes, scores, 0.5), [1, 2])


def test_empty_predictions() -> None:
    out = postprocess_numpy(np.zeros((1, 10, 4 + 3), dtype=np.float32), score_thresh=0.5)
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].dtype == np.int64


def test_undo_letterbox_numpy_matches_torch() -> None:
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [-5.0, 0.0, 700.0, 630.0]])
    args = (0.5, (32.0, 80.0), (960, 1200))
    expected = undo_letterbox(boxes, *args)
    np.testing.assert_allclose(undo_letterbox_numpy(boxes.numpy(), *args), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("score_thresh, max_det", [(0.001, 300), (0.3, 20)])
def test_topk_numpy_matches_torch(score_thresh: float, max_det: int) -> None:
    """An end-to-end head's raw export post-processed with numpy = the detector's own top-k."""
    raw = _raw(2, 400, 5, seed=1)
    expected = topk_detections(raw, score_thresh, max_det, image_size=(60, 64))
    actual = topk_numpy(raw.numpy(), score_thresh, max_det, image_size=(60, 64))
    for exp, act in zip(expected, actual, strict=True):
        assert len(act["scores"]) == len(exp["scores"]) > 0
        np.testing.assert_allclose(act["scores"], exp["scores"].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(act["labels"], exp["labels"].numpy())
        np.testing.assert_allclose(act["boxes"], exp["boxes"].numpy(), rtol=1e-6)
