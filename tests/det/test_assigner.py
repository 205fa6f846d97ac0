"""Assigners on hand-made cases: which points are positive, with which targets."""

import pytest
import torch

from cspwrc.det.assigner import AtssAssigner, TaskAlignedAssigner, points_in_boxes
from cspwrc.det.head import make_anchor_points


def _grid_4x4():
    # One level, stride 8, 32x32 image: point i = row * 4 + col at ((col + .5) * 8, (row + .5) * 8),
    # i.e. coordinates 4, 12, 20, 28.
    return make_anchor_points([(4, 4)], [8], device=torch.device("cpu"), dtype=torch.float32)


def test_points_in_boxes_is_strict():
    points = torch.tensor([[4.0, 4.0], [16.0, 4.0], [20.0, 4.0]])
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    # (16, 4) is on the right edge: not inside.
    assert points_in_boxes(points, boxes).tolist() == [[[True, False, False]]]


def test_points_in_boxes_widens_small_boxes_about_their_centre():
    """A 4x4 box between the stride-8 points holds none of them; widened to 16 px it holds the four around it."""
    points, _ = _grid_4x4()
    box = torch.tensor([[[13.0, 13.0, 17.0, 17.0]]])
    assert not points_in_boxes(points, box).any()
    inside = points_in_boxes(points, box, min_side=16.0)[0, 0].nonzero().flatten().tolist()
    assert inside == [5, 6, 9, 10]  # (12, 12), (20, 12), (12, 20), (20, 20)
    wide = torch.tensor([[[0.0, 13.0, 32.0, 17.0]]])  # only the short side is widened
    assert points_in_boxes(points, wide, min_side=16.0)[0, 0].nonzero().flatten().tolist() == [4, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.parametrize("min_box_side, positives", [(16.0, 2), (0.0, 0)])
def test_small_box_gets_positives_only_when_widened(min_box_side, positives):
    points, strides = _grid_4x4()
    gt_boxes, gt_labels, mask = torch.tensor([[[13.0, 13.0, 17.0, 17.0]]]), torch.tensor([[0]]), torch.tensor([[True]])
    pred_boxes = gt_boxes.expand(1, 16, 4).clone()
    pred_scores = torch.full((1, 16, 1), 0.5)
    tal = TaskAlignedAssigner(num_classes=1, topk=2, min_box_side=min_box_side)
    assert int(tal(pred_scores, pred_boxes, points, gt_labels, gt_boxes, mask).fg_mask.sum()) == positives
    atss = AtssAssigner(num_classes=1, topk=4, min_box_side=min_box_side)
    assert bool(atss(points, strides, [16], gt_labels, gt_boxes, mask).fg_mask.any()) == (positives > 0)


def test_tal_picks_topk_aligned_points_inside_the_box():
    points, _ = _grid_4x4()
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])  # contains points 0, 1, 4, 5
    gt_labels = torch.tensor([[1]])
    pred_boxes = gt_boxes.expand(1, 16, 4).clone()  # every prediction has IoU 1 with the box
    pred_scores = torch.zeros(1, 16, 2)
    pred_scores[0, [0, 1, 4, 5], 1] = torch.tensor([0.9, 0.5, 0.2, 0.1])
    pred_scores[0, 15, 1] = 0.99  # confident but outside the box: never a candidate
    tal = TaskAlignedAssigner(num_classes=2, topk=2, alpha=1.0, beta=6.0)
    a = tal(pred_scores, pred_boxes, points, gt_labels, gt_boxes, torch.tensor([[True]]))

    assert a.fg_mask[0].nonzero().flatten().tolist() == [0, 1]
    assert a.labels[0, [0, 1]].tolist() == [1, 1]
    assert torch.equal(a.boxes[0, 0], gt_boxes[0, 0])
    # Alignment t = s * IoU**6 = s; target = t / max_t * max_IoU: 0.9/0.9 = 1 and 0.5/0.9.
    expected = torch.zeros(16, 2)
    expected[0, 1], expected[1, 1] = 1.0, 0.5 / 0.9
    torch.testing.assert_close(a.scores[0], expected)


def test_tal_point_claimed_by_two_boxes_goes_to_higher_iou():
    points, _ = _grid_4x4()
    # Point 1 (12, 4) lies in both boxes. Its predicted box equals box 1, IoU with box 0 is 128 / 512 = 0.25.
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [8.0, 0.0, 32.0, 16.0]]])
    gt_labels = torch.tensor([[0, 1]])
    pred_boxes = torch.zeros(1, 16, 4)
    pred_boxes[0, :] = torch.tensor([0.0, 0.0, 16.0, 16.0])
    pred_boxes[0, [1, 2, 3, 6, 7]] = torch.tensor([8.0, 0.0, 32.0, 16.0])
    pred_scores = torch.full((1, 16, 2), 0.5)
    # topk 6 >= points inside either box, so every inside point is a candidate of each box containing it.
    tal = TaskAlignedAssigner(num_classes=2, topk=6, alpha=1.0, beta=1.0)
    a = tal(pred_scores, pred_boxes, points, gt_labels, gt_boxes, torch.tensor([[True, True]]))
    assert a.fg_mask[0, 1] and a.gt_index[0, 1] == 1 and a.labels[0, 1] == 1
    # Point 5 (12, 12) is in both too, but predicts box 0 exactly: it goes to box 0.
    assert a.fg_mask[0, 5] and a.gt_index[0, 5] == 0 and a.labels[0, 5] == 0
    assert a.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert a.scores[0, 1, 0] == 0  # one-hot on the assigned class only


def test_tal_padding_and_image_without_boxes():
    points, _ = _grid_4x4()
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]], [[0.0, 0.0, 16.0, 16.0]]])
    gt_mask = torch.tensor([[True], [False]])  # image 1 has no boxes: its slot is padding
    pred_boxes = gt_boxes[:1].expand(2, 16, 4).clone()
    pred_scores = torch.full((2, 16, 3), 0.5)
    a = TaskAlignedAssigner(num_classes=3)(pred_scores, pred_boxes, points, torch.zeros(2, 1, dtype=torch.long),
                                           gt_boxes, gt_mask)
    assert a.fg_mask[0].sum() == 4  # the four points inside, topk=10 > 4
    assert not a.fg_mask[1].any() and a.scores[1].sum() == 0


# Pseudo-anchors are 40x40 (anchor_scale 5 x stride 8). Ground truth [0, 0, 20, 20], centre (10, 10), area 400.
ATSS_POINTS = torch.tensor([
    [10.0, 10.0], [6.0, 10.0], [14.0, 10.0],  # inside: anchor covers the box, IoU 400 / 1600 = 0.25, dist 0, 4, 4
    [30.0, 10.0], [-10.0, 10.0], [10.0, 30.0], [10.0, -10.0],  # IoU 200 / 1800 = 0.111, dist 20
    [30.0, 30.0], [-10.0, -10.0],  # IoU 100 / 1900 = 0.0526, dist 28.3
    [50.0, 50.0],  # 10th point, dist 56.6: not among the 9 nearest candidates
])


def _atss(points, topk, boxes=((0.0, 0.0, 20.0, 20.0),)):
    strides = torch.full((len(points), 1), 8.0)
    gt_boxes = torch.tensor([list(boxes)])
    n = gt_boxes.shape[1]
    return AtssAssigner(num_classes=2, topk=topk)(
        points, strides, [len(points)], torch.ones(1, n, dtype=torch.long), gt_boxes, torch.ones(1, n, dtype=torch.bool)
    )


def test_atss_threshold_mean_plus_std():
    # 9 candidates, IoUs [.25 x3, .111 x4, .0526 x2]: mean 0.1444, unbiased std 0.0827, threshold 0.2271,
    # so exactly the three 0.25 points pass (and they are inside the box).
    a = _atss(ATSS_POINTS, topk=9)
    assert a.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert a.labels[0, :3].tolist() == [1, 1, 1]
    assert a.scores[0, :3, 1].tolist() == [1.0, 1.0, 1.0] and a.scores[0, 3:].sum() == 0


def test_atss_fallback_keeps_best_candidate():
    # Candidates: points 3, 1, 0 with IoUs .111, .25, .25: mean .204, std .080, threshold .284 -> no point passes
    # mean + std (a tie). The fallback keeps the best candidate inside the box: points 1 and 0 tie at .25, the
    # first of them (index 1 here) wins.
    pts = ATSS_POINTS[[3, 1, 0]]
    assert _atss(pts, topk=3).fg_mask[0].nonzero().flatten().tolist() == [1]
    # Without any candidate inside the box (points 3 and 7 lie outside) the box stays unassigned.
    assert not _atss(ATSS_POINTS[[3, 7]], topk=2).fg_mask.any()
    # A clear winner needs no fallback: IoUs .25, .111, .0526 -> threshold .239 -> only point 0.
    assert _atss(ATSS_POINTS[[0, 3, 7]], topk=3).fg_mask[0].nonzero().flatten().tolist() == [0]


@pytest.mark.parametrize("assigner", ["atss", "tal"])
def test_no_ground_truth_gives_all_background(assigner):
    points, strides = _grid_4x4()
    gt_boxes = torch.zeros(2, 1, 4)
    gt_labels = torch.zeros(2, 1, dtype=torch.long)
    gt_mask = torch.zeros(2, 1, dtype=torch.bool)
    if assigner == "atss":
        a = AtssAssigner(3)(points, strides, [16], gt_labels, gt_boxes, gt_mask)
    else:
        a = TaskAlignedAssigner(3)(torch.rand(2, 16, 3), torch.rand(2, 16, 4) * 4 + torch.tensor([0, 0, 8, 8]),
                                   points, gt_labels, gt_boxes, gt_mask)
    assert not a.fg_mask.any() and a.scores.sum() == 0
