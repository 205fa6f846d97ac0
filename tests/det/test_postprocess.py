"""Post-processing: thresholds, class-aware NMS, max detections, and boxes back through a letterbox."""

import pytest
import torch
import torch.nn.functional as F

from cspwrc.det.postprocess import postprocess, topk_detections, undo_letterbox


def _raw(boxes, probs):
    return torch.cat((torch.tensor(boxes, dtype=torch.float32), torch.tensor(probs, dtype=torch.float32)), -1)[None]


def test_nms_is_class_aware_and_thresholded():
    boxes = [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    probs = [[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.0, 0.05]]
    (det,) = postprocess(_raw(boxes, probs), score_thresh=0.1, nms_iou=0.5)
    # Box 1 overlaps box 0 of the same class (IoU 0.81): suppressed. Box 2 is the same place but another class:
    # kept. Box 3 is below the score threshold.
    assert det["labels"].tolist() == [0, 1]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]))
    assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64


def test_multi_label_max_det_and_clipping():
    # One point, both classes above threshold: two detections (multi-label); max_det keeps the best one.
    raw = _raw([[-5, -5, 30, 20]], [[0.6, 0.8]])
    (det,) = postprocess(raw, score_thresh=0.5)
    assert det["labels"].tolist() == [1, 0]
    (det,) = postprocess(raw, score_thresh=0.5, max_det=1, image_size=(16, 24))
    assert det["labels"].tolist() == [1]
    assert det["boxes"].tolist() == [[0.0, 0.0, 24.0, 16.0]]


def test_empty_input_gives_empty_tensors():
    (det,) = postprocess(_raw([[0, 0, 1, 1]], [[0.0001, 0.0]]), score_thresh=0.5)
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)


def _letterbox(image: torch.Tensor, size: int):
    """Letterbox as docs/design.md specifies: centred, scale = min(size / h, size / w), grey padding."""
    h, w = image.shape[-2:]
    scale = min(size / h, size / w)
    nh, nw = round(h * scale), round(w * scale)
    left, top = (size - nw) / 2, (size - nh) / 2
    out = torch.full((3, size, size), 114 / 255)
    resized = F.interpolate(image[None], size=(nh, nw), mode="nearest")[0]
    out[:, int(top) : int(top) + nh, int(left) : int(left) + nw] = resized
    return out, scale, (float(int(left)), float(int(top)))


def test_undo_letterbox_round_trip_through_pixels():
    # A 60x100 image with a white box; letterbox to 64; find the box in the letterboxed pixels; map it back.
    image = torch.zeros(3, 60, 100)
    image[:, 10:40, 20:70] = 1.0  # box xyxy (20, 10, 70, 40)
    lb, scale, pad = _letterbox(image, 64)
    ys, xs = (lb[0] == 1.0).nonzero(as_tuple=True)
    found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    back = undo_letterbox(found, scale, pad, orig_size=(60, 100))
    # One letterboxed pixel is 1 / scale = 1.5625 original pixels: that is the quantisation error.
    torch.testing.assert_close(back, torch.tensor([[20.0, 10.0, 70.0, 40.0]]), atol=1 / scale, rtol=0)


def test_undo_letterbox_formula_and_clipping():
    boxes = torch.tensor([[14.0, 4.0, 50.0, 40.0], [0.0, 0.0, 64.0, 64.0]])
    out = undo_letterbox(boxes, scale=0.5, pad=(10.0, 2.0), orig_size=(100, 80))
    # (x - 10) / 0.5, (y - 2) / 0.5; the second box clips to the 80x100 (w x h) image.
    assert out.tolist() == [[8.0, 4.0, 80.0, 76.0], [0.0, 0.0, 80.0, 100.0]]


def test_topk_detections_keeps_the_best_pairs_without_nms():
    """An end-to-end head's output: the max_det best (point, class) pairs over the score threshold, duplicates kept
    (no NMS), a point may give several classes, boxes clipped."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 90.0, 40.0],
                          [5.0, 5.0, 8.0, 8.0]])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.05, 0.3], [0.01, 0.02]])
    raw = torch.cat((boxes, probs), -1)[None]
    (det,) = topk_detections(raw, score_thresh=0.2, max_det=3, image_size=(64, 64))
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert det["labels"].tolist() == [0, 0, 1]
    (det,) = topk_detections(raw, score_thresh=0.2, max_det=10, image_size=(32, 64))
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.3])
    assert det["boxes"][-1].tolist() == [20.0, 20.0, 64.0, 32.0]  # clipped to (h 32, w 64)
    empty = topk_detections(torch.zeros(2, 4, 6), score_thresh=0.5, max_det=5)
    assert [len(d["scores"]) for d in empty] == [0, 0]
