"""Label assignment: which anchor points learn which ground-truth box.

Two assigners with one output type (:class:`Assignment`):

* :class:`AtssAssigner` – static (prediction independent) ATSS, used for the first
  :attr:`AssignerCfg.static_epochs` epochs. A freshly initialised detector predicts noise, and on a tiny data set a
  prediction-dependent assigner would keep reinforcing its own early mistakes; ATSS only looks at geometry.
* :class:`TaskAlignedAssigner` – TAL (TOOD, YOLOv8, PP-YOLOE): picks the points whose prediction is already
  good for the box (``score**alpha * IoU**beta``) and gives them soft, IoU-scaled class targets.

Shapes: ``B`` images, ``M`` ground-truth slots per image (padded; ``gt_mask`` marks real boxes), ``A`` anchor
points over all levels, ``C`` classes. Boxes are xyxy pixels of the input image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from cspwrc.validate import require

__all__ = ["AssignerCfg", "Assignment", "AtssAssigner", "TaskAlignedAssigner", "points_in_boxes"]


@dataclass
class AssignerCfg:
    """Which assigner runs when, and their parameters (the one place their defaults are stated).

    Attributes:
        static_epochs: epochs ``< this`` use :class:`AtssAssigner`, later ones :class:`TaskAlignedAssigner`.
        tal_topk / tal_alpha / tal_beta: TAL's ``topk`` and alignment exponents.
        atss_topk: ATSS candidates per level.
        min_box_side: when choosing the candidate points of a box (both assigners), a side shorter than this many
            pixels counts as this long, about the box's centre. A box under the stride-8 grid's spacing may hold no
            anchor point at all and would never get a positive; 16 (the middle stride) is what Ultralytics 8.4's
            TAL uses. 0 keeps the strict "point inside the box" rule. The loss still regresses the true box.
        o2o_topk: TAL's ``topk`` for the one-to-one branch of an end-to-end head (``head.end2end``), which then keeps
            each object's single best point (Ultralytics' ``tal_topk=7, tal_topk2=1``).
    """

    static_epochs: int = 3  # ATSS while the boxes are still random, then TAL (the real and the demo recipe's)
    tal_topk: int = 10
    tal_alpha: float = 0.5
    tal_beta: float = 6.0
    atss_topk: int = 9
    min_box_side: float = 16.0
    o2o_topk: int = 7

    def __post_init__(self) -> None:
        require(self.static_epochs >= 0, "static_epochs", ">= 0 (0: TAL from the first epoch)", self.static_epochs)
        for key in ("tal_topk", "atss_topk", "o2o_topk"):
            require(getattr(self, key) >= 1, key, ">= 1", getattr(self, key))
        for key in ("tal_alpha", "tal_beta", "min_box_side"):
            require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))


class Assignment(NamedTuple):
    """Per-point training targets.

    Attributes:
        fg_mask: ``[B, A]`` bool, the positive (foreground) points.
        gt_index: ``[B, A]`` int64, index of the assigned ground-truth slot (0 where background).
        labels: ``[B, A]`` int64, assigned class (0 where background; use ``fg_mask``).
        boxes: ``[B, A, 4]`` assigned box (xyxy pixels; the box of slot 0 where background).
        scores: ``[B, A, C]`` classification target in ``[0, 1]``; zero for background.
    """

    fg_mask: Tensor
    gt_index: Tensor
    labels: Tensor
    boxes: Tensor
    scores: Tensor


def points_in_boxes(points: Tensor, boxes: Tensor, min_side: float = 0.0, eps: float = 1e-9) -> Tensor:
    """``[B, M, A]`` bool: point ``a`` lies strictly inside box ``m`` (``points [A, 2]``, ``boxes [B, M, 4]``),
    each box side first widened to at least ``min_side`` about its centre (:attr:`AssignerCfg.min_box_side`)."""
    if min_side > 0:
        centre, half = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]).clamp(min=min_side) / 2
        boxes = torch.cat((centre - half, centre + half), -1)
    lt = points[None, None] - boxes[..., None, :2]
    rb = boxes[..., None, 2:] - points[None, None]
    return torch.cat((lt, rb), -1).amin(-1) > eps


def _batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU per image: ``[B, M, 4] x [B, A, 4] -> [B, M, A]`` (``boxes2`` may also be ``[A, 4]``)."""
    if boxes2.dim() == 2:
        return box_iou(boxes1.reshape(-1, 4), boxes2).reshape(boxes1.shape[0], boxes1.shape[1], -1)
    return torch.stack([box_iou(b1, b2) for b1, b2 in zip(boxes1, boxes2, strict=True)])


def _resolve(pos: Tensor, ious: Tensor) -> Tensor:
    """Keep one ground truth per point, the one with the highest IoU: ``pos [B, M, A]`` (several ground truths per
    point possible) -> the same with at most one ``True`` per point; ``ious [B, M, A]`` breaks the ties."""
    multi = pos.sum(1, keepdim=True) > 1  # [B, 1, A]
    best = ious.masked_fill(~pos, -1.0).argmax(1, keepdim=True)  # [B, 1, A]
    best_mask = torch.zeros_like(pos).scatter_(1, best, True)
    return torch.where(multi, best_mask & pos, pos)


def _gather(pos: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per point its ground truth's slot, label and box from ``pos [B, M, A]`` (at most one ``True`` per point).

    Returns:
        ``fg_mask [B, A]``, ``gt_index [B, A]``, ``labels [B, A]``, ``boxes [B, A, 4]``.
    """
    fg_mask = pos.any(1)
    gt_index = pos.to(torch.float32).argmax(1)  # [B, A]; 0 for background (float: argmax on bool is unsupported)
    labels = gt_labels.gather(1, gt_index)
    boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
    return fg_mask, gt_index, labels, boxes


class AtssAssigner(nn.Module):
    """Adaptive Training Sample Selection (Zhang et al. 2020), static: uses geometry only.

    For each ground truth: take the ``topk`` points per level closest to its centre as candidates, measure the
    IoU of each candidate's square pseudo-anchor (side ``anchor_scale * stride``) with the box, and keep the
    candidates whose IoU is at least ``mean + std`` of the candidates' IoUs and whose centre lies inside the box
    (small boxes widened, :attr:`AssignerCfg.min_box_side`).
    A point claimed by several boxes goes to the one with the highest IoU. Class targets are one-hot (1.0).

    One addition to the paper: a ground truth whose candidates all fall below the threshold (e.g. a box placed
    symmetrically between points, so the candidates tie) keeps its best candidate inside the box, so no object
    is silently left without a positive.
    """

    def __init__(self, num_classes: int, topk: int = AssignerCfg.atss_topk, anchor_scale: float = 5.0,
                 min_box_side: float = AssignerCfg.min_box_side) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.topk = topk
        self.anchor_scale = anchor_scale
        self.min_box_side = min_box_side

    @torch.no_grad()
    def forward(
        self,
        points: Tensor,
        stride_per_point: Tensor,
        num_points_per_level: Sequence[int],
        gt_labels: Tensor,
        gt_boxes: Tensor,
        gt_mask: Tensor,
    ) -> Assignment:
        """Assign.

        Args:
            points: ``[A, 2]`` anchor points (pixels); stride_per_point ``[A, 1]``.
            num_points_per_level: points per level, in the order of ``points``.
            gt_labels: ``[B, M]`` int64; gt_boxes ``[B, M, 4]``; gt_mask ``[B, M]`` bool.
        """
        half = stride_per_point * (self.anchor_scale / 2)
        anchors = torch.cat((points - half, points + half), -1)  # [A, 4]
        ious = _batched_box_iou(gt_boxes, anchors)  # [B, M, A]
        centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        dist = (centres[..., None, :] - points[None, None]).norm(dim=-1)  # [B, M, A]

        candidate = torch.zeros_like(ious, dtype=torch.bool)
        start = 0
        for n in num_points_per_level:
            k = min(self.topk, n)
            idx = dist[..., start : start + n].topk(k, dim=-1, largest=False).indices + start
            candidate.scatter_(-1, idx, True)
            start += n

        cand_iou = torch.where(candidate, ious, torch.zeros_like(ious))
        n_cand = candidate.sum(-1, keepdim=True).clamp(min=1)
        mean = cand_iou.sum(-1, keepdim=True) / n_cand
        # Unbiased standard deviation over the candidates, as in the paper's reference implementation.
        var = torch.where(candidate, (ious - mean) ** 2, torch.zeros_like(ious)).sum(-1, keepdim=True)
        std = (var / (n_cand - 1).clamp(min=1)).sqrt()

        inside = points_in_boxes(points, gt_boxes, self.min_box_side) & gt_mask[..., None]
        pos = candidate & inside & (ious >= mean + std)
        # Fallback for ground truths with no positive: their best candidate inside the box.
        usable = candidate & inside
        best = torch.where(usable, ious, torch.full_like(ious, -1.0)).argmax(-1, keepdim=True)
        fallback = torch.zeros_like(pos).scatter_(-1, best, True) & usable
        pos = torch.where(pos.any(-1, keepdim=True), pos, fallback)

        fg_mask, gt_index, labels, boxes = _gather(_resolve(pos, ious), gt_labels, gt_boxes)
        scores = F.one_hot(labels, self.num_classes).to(gt_boxes.dtype) * fg_mask[..., None]
        return Assignment(fg_mask, gt_index, labels, boxes, scores)


class TaskAlignedAssigner(nn.Module):
    """Task-aligned assigner (TOOD, Feng et al. 2021; YOLOv8 flavour).

    For each ground truth, among the points inside the box (small boxes widened, :attr:`AssignerCfg.min_box_side`),
    the ``topk`` with the largest alignment ``t = s**alpha * u**beta`` are positive, where ``s`` is the predicted
    probability of the box's class and ``u`` the IoU of the predicted box with it. A point claimed by several boxes
    goes to the highest IoU.
    The class target of a positive is ``t / max_t * max_u`` per ground truth (its best point gets that
    ground truth's best IoU), so the classifier learns to rank by localisation quality.

    ``topk2`` (default ``topk``): after the conflicts are resolved, keep only each ground truth's ``topk2`` best
    points; ``topk2=1`` is the one-to-one assignment of an NMS-free head (YOLOv10 / YOLO26: one point per object, so
    duplicates learn to score low).
    """

    def __init__(
        self,
        num_classes: int,
        topk: int = AssignerCfg.tal_topk,
        alpha: float = AssignerCfg.tal_alpha,
        beta: float = AssignerCfg.tal_beta,
        min_box_side: float = AssignerCfg.min_box_side,
        eps: float = 1e-9,
        topk2: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.topk = topk
        self.topk2 = topk2 or topk
        self.alpha = alpha
        self.beta = beta
        self.min_box_side = min_box_side
        self.eps = eps

    @torch.no_grad()
    def forward(
        self,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        points: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        gt_mask: Tensor,
    ) -> Assignment:
        """Assign.

        Args:
            pred_scores: ``[B, A, C]`` predicted class probabilities (after sigmoid).
            pred_boxes: ``[B, A, 4]`` predicted boxes, xyxy pixels.
            points: ``[A, 2]`` anchor points (pixels).
            gt_labels: ``[B, M]`` int64; gt_boxes ``[B, M, 4]``; gt_mask ``[B, M]`` bool.
        """
        inside = points_in_boxes(points, gt_boxes, self.min_box_side) & gt_mask[..., None]  # [B, M, A]
        ious = _batched_box_iou(gt_boxes, pred_boxes).clamp(min=0) * inside
        # Probability of each ground truth's class at every point: [B, M, A].
        cls_prob = pred_scores.transpose(1, 2).gather(1, gt_labels[..., None].expand(-1, -1, pred_scores.shape[1]))
        align = cls_prob.pow(self.alpha) * ious.pow(self.beta) * inside

        k = min(self.topk, align.shape[-1])
        top = align.topk(k, dim=-1).indices
        pos = _resolve(torch.zeros_like(inside).scatter_(-1, top, True) & inside, ious)
        if self.topk2 < k:
            best = (align * pos).topk(self.topk2, dim=-1).indices
            pos &= torch.zeros_like(pos).scatter_(-1, best, True)

        fg_mask, gt_index, labels, boxes = _gather(pos, gt_labels, gt_boxes)
        align = align * pos
        norm = align * ious.mul(pos).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + self.eps)
        quality = norm.amax(1)  # [B, A]
        scores = F.one_hot(labels, self.num_classes).to(pred_scores.dtype) * (quality * fg_mask)[..., None]
        return Assignment(fg_mask, gt_index, labels, boxes, scores)
