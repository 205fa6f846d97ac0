"""Detection loss: assignment, then classification (BCE or varifocal), IoU (torchvision CIoU/GIoU) and a distance
term: DFL on the box distributions (``reg_max > 1``) or, for direct regression (``reg_max == 1``, YOLO26), L1 on the
box sides divided by the image size (Ultralytics' normalisation, so the term does not grow with the input size).

Every term is a sum over points divided by the total classification target of the batch
(``max(sum(target_scores), 1)``, the "number of positives" softened by their quality, as in YOLOv8 /
PP-YOLOE). Box and DFL terms of a positive are weighted by its target score, so the points the assigner
trusts most pull hardest. Images without boxes contribute background-only classification loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from cspwrc.validate import require

from .assigner import AssignerCfg, Assignment, AtssAssigner, TaskAlignedAssigner
from .head import HeadCfg, HeadOutputs

__all__ = ["DetectionLoss", "LossCfg", "dfl_loss", "l1_side_loss", "pad_targets", "varifocal_loss"]


def pad_targets(targets: Sequence[dict[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image targets into padded tensors.

    Returns:
        ``labels [B, M]`` int64, ``boxes [B, M, 4]`` float32 and ``mask [B, M]`` bool with
        ``M = max(1, max boxes per image)`` (at least one slot so that images without boxes need no special case).
    """
    m = max([1] + [len(t["labels"]) for t in targets])
    b = len(targets)
    labels = torch.zeros(b, m, dtype=torch.int64, device=device)
    boxes = torch.zeros(b, m, 4, dtype=torch.float32, device=device)
    mask = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        labels[i, :n] = t["labels"].to(device)
        boxes[i, :n] = t["boxes"].to(device=device, dtype=torch.float32)
        mask[i, :n] = True
    return labels, boxes, mask


def varifocal_loss(logits: Tensor, target: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Element-wise varifocal loss (Zhang et al. 2021, VarifocalNet).

    Positives (``target > 0``) are weighted by their IoU-aware target ``q``; negatives are down-weighted by
    ``alpha * p**gamma`` like a focal loss, so easy background stops dominating.
    """
    p = logits.sigmoid().detach()
    weight = torch.where(target > 0, target, alpha * p.pow(gamma))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


def l1_side_loss(pred_boxes: Tensor, target_boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Mean absolute error of the four box sides, x in image widths and y in image heights.

    Args:
        pred_boxes / target_boxes: ``[N, 4]`` xyxy pixels (a side's error is the error of the distance from the
            anchor point to it). image_size: ``(height, width)`` of the input.

    Returns:
        ``[N]`` loss per point (mean over the four sides).
    """
    h, w = image_size
    scale = pred_boxes.new_tensor([w, h, w, h])
    return ((pred_boxes - target_boxes).abs() / scale).mean(-1)


def dfl_loss(box_logits: Tensor, target_dist: Tensor) -> Tensor:
    """Distribution focal loss (Li et al. 2020, GFL): cross-entropy on the two bins around each target distance.

    Args:
        box_logits: ``[N, 4, reg_max]``.
        target_dist: ``[N, 4]`` distances in stride units, within ``[0, reg_max - 1)``.

    Returns:
        ``[N]`` loss per point (mean over the four sides).
    """
    left = target_dist.long()
    w_right = target_dist - left
    logp = box_logits.log_softmax(-1)
    lp_left = logp.gather(-1, left[..., None]).squeeze(-1)
    lp_right = logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return -(lp_left * (1 - w_right) + lp_right * w_right).mean(-1)


@dataclass
class LossCfg:
    """Loss terms and weights (YOLOv8 weights 0.5 / 7.5 / 1.5), and the assigners (:class:`AssignerCfg`).

    Attributes:
        cls_loss: ``"bce"`` or ``"varifocal"``.
        o2m_weight_start / o2m_weight_end: an end-to-end head's loss is ``w * one-to-many + (1 - w) * one-to-one``
            with ``w`` moving linearly from start (first epoch) to end (last epoch), YOLO26's 0.8 -> 0.1: the
            backbone first learns from the dense one-to-many targets, the one-to-one branch takes over later.
        iou_loss: ``"ciou"`` or ``"giou"`` (torchvision.ops).
        cls_weight / box_weight / dfl_weight: multipliers of the three terms (``dfl_weight``: the distance term,
            DFL or L1 by ``reg_max``, as Ultralytics' ``dfl`` gain).
    """

    cls_loss: Literal["bce", "varifocal"] = "bce"
    iou_loss: Literal["ciou", "giou"] = "ciou"
    cls_weight: float = 0.5
    box_weight: float = 7.5
    dfl_weight: float = 1.5
    o2m_weight_start: float = 0.8
    o2m_weight_end: float = 0.1
    assigner: AssignerCfg = field(default_factory=AssignerCfg)

    def __post_init__(self) -> None:
        for key in ("o2m_weight_start", "o2m_weight_end"):
            require(0.0 <= getattr(self, key) <= 1.0, key, "in [0, 1]", getattr(self, key))
        require(self.cls_loss in ("bce", "varifocal"), "cls_loss", "'bce' or 'varifocal'", self.cls_loss)
        require(self.iou_loss in ("ciou", "giou"), "iou_loss", "'ciou' or 'giou'", self.iou_loss)
        for key in ("cls_weight", "box_weight", "dfl_weight"):
            require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))


class DetectionLoss(nn.Module):
    """Assign, then compute the weighted losses.

    Args:
        num_classes: classes ``C``.
        reg_max: DFL bins per side, 1 for direct regression (the head's, :attr:`HeadCfg.reg_max`).
        cfg: loss options (default :class:`LossCfg`); ``cfg.assigner.static_epochs``: epochs ``< this`` use
            :class:`AtssAssigner`, later ones TAL (the one-to-many branch; a one-to-one branch always uses TAL with
            ``topk2=1``).

    :attr:`epoch` and :attr:`epochs` (set by the detector's ``set_epoch``) choose the assigner and the end-to-end
    weights.
    """

    def __init__(self, num_classes: int, reg_max: int = HeadCfg.reg_max, cfg: LossCfg | None = None) -> None:
        super().__init__()
        cfg = cfg or LossCfg()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.cfg = cfg
        self.epoch = 0
        self.epochs = 1
        a = cfg.assigner
        self.tal = TaskAlignedAssigner(num_classes, topk=a.tal_topk, alpha=a.tal_alpha, beta=a.tal_beta,
                                       min_box_side=a.min_box_side)
        self.atss = AtssAssigner(num_classes, topk=a.atss_topk, min_box_side=a.min_box_side)
        self.o2o_tal = TaskAlignedAssigner(num_classes, topk=a.o2o_topk, alpha=a.tal_alpha, beta=a.tal_beta,
                                           min_box_side=a.min_box_side, topk2=1)

    @property
    def uses_static_assigner(self) -> bool:
        return self.epoch < self.cfg.assigner.static_epochs

    @property
    def o2m_weight(self) -> float:
        """The one-to-many share of an end-to-end loss at :attr:`epoch` of :attr:`epochs` (see :class:`LossCfg`)."""
        start, end = self.cfg.o2m_weight_start, self.cfg.o2m_weight_end
        return max(1.0 - self.epoch / max(self.epochs - 1, 1), 0.0) * (start - end) + end

    def assign(self, pred: HeadOutputs, gt: tuple[Tensor, Tensor, Tensor], one2one: bool = False) -> Assignment:
        """Run the assigner of the current epoch (see :attr:`uses_static_assigner`), or the one-to-one TAL."""
        gt_labels, gt_boxes, gt_mask = gt
        if self.uses_static_assigner and not one2one:
            return self.atss(pred.points, pred.stride_per_point, pred.num_points_per_level, gt_labels, gt_boxes,
                             gt_mask)
        tal = self.o2o_tal if one2one else self.tal
        return tal(pred.cls_logits.detach().sigmoid(), pred.boxes.detach(), pred.points, gt_labels, gt_boxes, gt_mask)

    def end_to_end(self, o2m: dict[str, Tensor], o2o: dict[str, Tensor]) -> dict[str, Tensor]:
        """An end-to-end head's losses: every term ``w * o2m + (1 - w) * o2o`` (``w`` = :attr:`o2m_weight`)."""
        w = self.o2m_weight
        return {k: w * o2m[k] + (1.0 - w) * o2o[k] for k in o2m}

    def forward(self, pred: HeadOutputs, targets: Sequence[dict[str, Tensor]], image_size: tuple[int, int],
                one2one: bool = False) -> dict[str, Tensor]:
        """Compute the losses of one branch.

        Args:
            pred: the branch's decoded outputs (:meth:`~cspwrc.det.head.DecoupledHead.decode`).
            targets: per image ``boxes [N, 4]`` xyxy pixels and ``labels [N]``.
            image_size: ``(height, width)`` of the input images (the L1 term's scale).
            one2one: the one-to-one branch of an end-to-end head (its assigner: one point per object).

        Returns:
            Scalars ``loss_cls``, ``loss_box``, ``loss_dfl`` (the distance term, DFL or L1; each already multiplied
            by its weight) and ``loss = loss_cls + loss_box + loss_dfl``, the one to back-propagate.
        """
        # Losses and assignment in float32 even under autocast (IoU and log-softmax are precision-sensitive).
        pred = HeadOutputs(pred.box_logits.float(), pred.cls_logits.float(), pred.boxes.float(), pred.points.float(),
                           pred.stride_per_point.float(), pred.num_points_per_level)
        box_logits, cls_logits, pred_boxes, points, stride_per_point, _ = pred
        gt = pad_targets(targets, cls_logits.device)
        a = self.assign(pred, gt, one2one)
        target_scores = a.scores.to(cls_logits.dtype)
        norm = target_scores.sum().clamp(min=1.0)

        if self.cfg.cls_loss == "varifocal":
            loss_cls = varifocal_loss(cls_logits, target_scores).sum() / norm
        else:
            loss_cls = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="sum") / norm

        fg = a.fg_mask
        weight = target_scores.sum(-1)[fg]  # [P]
        pos_pred, pos_target = pred_boxes[fg], a.boxes[fg]
        iou_fn = complete_box_iou_loss if self.cfg.iou_loss == "ciou" else generalized_box_iou_loss
        loss_box = (iou_fn(pos_pred, pos_target, reduction="none") * weight).sum() / norm

        if self.reg_max == 1:
            loss_dist = l1_side_loss(pos_pred, pos_target, image_size)
        else:
            # DFL targets: distances from each positive point to its box sides, in stride units, kept strictly
            # below the last bin so both neighbouring bins exist.
            pts = points.expand(fg.shape[0], -1, -1)[fg]
            strides = stride_per_point.expand(fg.shape[0], -1, -1)[fg]
            dist = torch.cat((pts - pos_target[:, :2], pos_target[:, 2:] - pts), -1) / strides
            loss_dist = dfl_loss(box_logits[fg], dist.clamp(0, self.reg_max - 1 - 0.01))
        loss_dfl = (loss_dist * weight).sum() / norm

        losses = {
            "loss_cls": self.cfg.cls_weight * loss_cls,
            "loss_box": self.cfg.box_weight * loss_box,
            "loss_dfl": self.cfg.dfl_weight * loss_dfl,
        }
        losses["loss"] = losses["loss_cls"] + losses["loss_box"] + losses["loss_dfl"]
        return losses
