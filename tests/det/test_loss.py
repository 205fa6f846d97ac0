"""Loss terms against their formulas, normalisation, and images without boxes."""

import math

import pytest
import torch
import torch.nn.functional as F

from cspwrc.det.assigner import AssignerCfg
from cspwrc.det.head import HeadOutputs, decode_boxes, make_anchor_points
from cspwrc.det.loss import DetectionLoss, LossCfg, dfl_loss, l1_side_loss, pad_targets, varifocal_loss


def test_dfl_loss_formula():
    logits = torch.randn(5, 4, 16)
    target = torch.rand(5, 4) * 14.9
    left = target.floor()
    logp = logits.log_softmax(-1)
    lp = lambda idx: logp.gather(-1, idx.long()[..., None]).squeeze(-1)  # noqa: E731
    expected = -(lp(left) * (left + 1 - target) + lp(left + 1) * (target - left)).mean(-1)
    torch.testing.assert_close(dfl_loss(logits, target), expected)
    # An integer target is plain cross-entropy on that bin.
    t = torch.full((1, 4), 3.0)
    torch.testing.assert_close(dfl_loss(logits[:1], t), -logp[:1, :, 3].mean(-1))


def test_varifocal_weights():
    logits = torch.tensor([0.3, -1.0, 2.0])
    target = torch.tensor([0.8, 0.0, 0.0])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = logits.sigmoid()
    expected = bce * torch.tensor([0.8, 0.75 * p[1] ** 2, 0.75 * p[2] ** 2])
    torch.testing.assert_close(varifocal_loss(logits, target), expected)


def test_pad_targets():
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]), "labels": torch.tensor([3, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    labels, boxes, mask = pad_targets(targets, torch.device("cpu"))
    assert labels.tolist() == [[3, 4], [0, 0]] and mask.tolist() == [[True, True], [False, False]]
    assert boxes.shape == (2, 2, 4)
    _, _, mask = pad_targets(targets[1:], torch.device("cpu"))
    assert mask.shape == (1, 1) and not mask.any()  # one padded slot even when no image has boxes


def _perfect_predictions(box, label, num_classes=2, reg_max=16):
    """Logits that decode to ``box`` at every point inside it (within DFL's resolution) and score ``label``."""
    points, strides = make_anchor_points([(4, 4)], [8], device=torch.device("cpu"), dtype=torch.float32)
    dist = torch.cat((points - box[:2], box[2:] - points), -1) / strides  # [A, 4]
    dist = dist.clamp(0, reg_max - 1.01)
    left = dist.floor().long()
    w = dist - left
    probs = torch.zeros(len(points), 4, reg_max)
    probs.scatter_(-1, left[..., None], (1 - w)[..., None])
    probs.scatter_add_(-1, (left + 1)[..., None], w[..., None])
    box_logits = probs.clamp(min=1e-9).log()[None]
    cls_logits = torch.full((1, len(points), num_classes), -12.0)
    return points, strides, box_logits, cls_logits


@pytest.mark.parametrize("epoch", [0, 5])
def test_loss_is_small_for_perfect_predictions_and_large_for_wrong_ones(epoch):
    box = torch.tensor([0.0, 0.0, 16.0, 16.0])
    points, strides, box_logits, cls_logits = _perfect_predictions(box, 1)
    inside = ((points > 0) & (points < 16)).all(-1)
    cls_logits[0, inside, 1] = 12.0
    pred_boxes = decode_boxes(box_logits, points, strides)
    loss_fn = DetectionLoss(num_classes=2, cfg=LossCfg(assigner=AssignerCfg(static_epochs=1)))
    loss_fn.epoch = epoch
    targets = [{"boxes": box[None], "labels": torch.tensor([1])}]
    pred = HeadOutputs(box_logits, cls_logits, pred_boxes, points, strides, [16])
    good = loss_fn(pred, targets, (32, 32))
    assert good["loss_box"] < 1e-4 and good["loss_cls"] < 0.01
    # DFL's minimum is the entropy of the two-bin target, not 0: bounded by log(2) per side.
    assert good["loss_dfl"] <= 1.5 * math.log(2) + 1e-4
    wrong = loss_fn(pred, [{"boxes": torch.tensor([[16.0, 16.0, 32.0, 32.0]]), "labels": torch.tensor([0])}], (32, 32))
    assert wrong["loss_box"] > 1.0 and wrong["loss_cls"] > 1.0


def test_background_only_loss_is_normalised_by_one():
    # No positives: the normaliser is max(sum of targets, 1) = 1, so loss_cls = 0.5 * sum of BCE(logit, 0).
    points, strides = make_anchor_points([(2, 2)], [8], device=torch.device("cpu"), dtype=torch.float32)
    cls_logits = torch.full((1, 4, 3), -2.0)
    box_logits = torch.zeros(1, 4, 4, 16)
    losses = DetectionLoss(num_classes=3)(
        HeadOutputs(box_logits, cls_logits, decode_boxes(box_logits, points, strides), points, strides, [4]),
        [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], (16, 16),
    )
    torch.testing.assert_close(losses["loss_cls"], 0.5 * 12 * F.softplus(torch.tensor(-2.0)))
    assert losses["loss_box"] == 0 and losses["loss_dfl"] == 0


def test_direct_regression_l1_term_is_zero_for_exact_boxes_and_scales_with_the_image():
    """reg_max 1: the distance term is L1 on the box sides over the image size (0 for an exact box)."""
    box = torch.tensor([[8.0, 8.0, 40.0, 24.0]])
    assert l1_side_loss(box, box, (32, 64)).item() == 0
    moved = box + torch.tensor([[4.0, 2.0, 4.0, 2.0]])
    torch.testing.assert_close(l1_side_loss(moved, box, (32, 64)), torch.tensor([(4 / 64 + 2 / 32) / 2]))
    points, strides = make_anchor_points([(4, 4)], [16], device=torch.device("cpu"), dtype=torch.float32)
    target = torch.tensor([16.0, 16.0, 48.0, 48.0])
    dist = torch.cat((points - target[:2], target[2:] - points), -1) / strides  # exact distances, stride units
    box_out = torch.log(torch.expm1(dist.clamp(min=1e-3)))[None, :, :, None]  # [1, A, 4, 1], before the softplus
    loss_fn = DetectionLoss(num_classes=1, reg_max=1, cfg=LossCfg(assigner=AssignerCfg(static_epochs=0)))
    cls_logits = torch.full((1, len(points), 1), 8.0)
    pred = HeadOutputs(box_out, cls_logits, decode_boxes(box_out, points, strides), points, strides, [16])
    losses = loss_fn(pred, [{"boxes": target[None], "labels": torch.tensor([0])}], (64, 64))
    assert losses["loss_dfl"] < 1e-6 and losses["loss_box"] < 1e-4


def test_one_to_one_assigner_keeps_one_point_per_object_and_the_weights_move_to_it():
    """End-to-end: the one-to-one TAL (topk 7, then 1) gives each object exactly one positive where the one-to-many
    TAL gives several; the one-to-many share of the loss moves 0.8 -> 0.1 over the epochs (YOLO26's E2ELoss)."""
    points, strides = make_anchor_points([(8, 8)], [8], device=torch.device("cpu"), dtype=torch.float32)
    gt_boxes = torch.tensor([[[4.0, 4.0, 36.0, 36.0], [30.0, 30.0, 62.0, 60.0]]])
    gt = (torch.tensor([[0, 1]]), gt_boxes, torch.ones(1, 2, dtype=torch.bool))
    scores = torch.full((1, 64, 2), 0.5)
    loss_fn = DetectionLoss(num_classes=2, cfg=LossCfg(assigner=AssignerCfg(static_epochs=0)))
    # Predictions that overlap both boxes a little everywhere: every point is a candidate.
    pred_boxes = torch.cat((points - 12, points + 12), -1)[None]
    pred = HeadOutputs(torch.zeros(1, 64, 4, 16), scores.logit(), pred_boxes, points, strides, [64])
    o2m, o2o = loss_fn.assign(pred, gt), loss_fn.assign(pred, gt, one2one=True)
    assert o2m.fg_mask.sum() > 2
    assert o2o.fg_mask.sum() == 2 and sorted(o2o.gt_index[o2o.fg_mask].tolist()) == [0, 1]
    weights = []
    for epoch in range(5):
        loss_fn.epoch, loss_fn.epochs = epoch, 5
        weights.append(loss_fn.o2m_weight)
    assert weights == pytest.approx([0.8, 0.625, 0.45, 0.275, 0.1])
    combined = loss_fn.end_to_end({"loss": torch.tensor(1.0)}, {"loss": torch.tensor(3.0)})
    assert combined["loss"].item() == pytest.approx(0.1 * 1.0 + 0.9 * 3.0)
