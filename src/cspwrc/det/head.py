"""Anchor-free decoupled head; box sides as a distribution (DFL, ``reg_max > 1``) or regressed directly (``1``).

Data flow: neck features ``P3..P5`` → :class:`DecoupledHead` (per level ``[B, 4 * reg_max + C, H_i, W_i]``)
→ :meth:`DecoupledHead.flatten` (``[B, A, 4, reg_max]`` box logits, ``[B, A, C]`` class logits, ``A = sum H_i W_i``)
→ :func:`make_anchor_points` + :func:`decode_boxes` (``[B, A, 4]`` xyxy boxes in input-image pixels).

Box regression: each anchor point predicts its distances to the four box sides (left, top, right, bottom, in units
of the level's stride). With ``reg_max > 1`` each distance is a *discrete distribution* over ``reg_max`` bins
``0 .. reg_max - 1`` and the distance is its expectation (Generalized Focal Loss, as used by YOLOv8 / PP-YOLOE /
RTMDet): ambiguous edges (blur, occlusion) can be expressed as a spread-out distribution, the output is bounded, and
the DFL term gives a dense gradient around the true edge from the first step. ``reg_max = 16`` covers distances up
to ``15 * stride`` (480 px at stride 32). With ``reg_max = 1`` (YOLO26) the branch regresses the four distances
directly, trained by an L1 term beside the IoU loss: a 4-channel output instead of 64, a box branch a quarter as
wide (its default width follows ``4 * reg_max``), no softmax in the exported graph, any distance reachable. The
distance is ``softplus(output)``, not the raw output as in Ultralytics: a negative distance makes an inverted box,
whose IoU is 0 and whose CIoU penalties (centre distance, aspect ratio) an inverted box can satisfy too, so under
AdamW such boxes stayed inverted and the loss diverged (race arm A, docs/race/shwd_60min_v3). Non-negative
distances keep every box valid and containing its anchor point, as DFL's do.

Classification branch (``cls_branch``): two 3x3 convs (``"conv"``, YOLOv8) or two depthwise-separable pairs, a 3x3
depthwise conv then a 1x1 conv (``"dw"``, YOLO11 / YOLO26): about a tenth of the multiply-adds at equal width.

End-to-end (``end2end``, YOLOv10 / YOLO26): a second, one-to-one copy of the box and class branches
(:meth:`DecoupledHead.one2one`) is trained beside the one-to-many branches on *detached* neck features, with one
positive point per object (:class:`~cspwrc.det.assigner.TaskAlignedAssigner` ``topk2=1``), so that its duplicates
learn to score low and inference needs no NMS: the detector then predicts with it and keeps the top ``max_det``
(:func:`~cspwrc.det.postprocess.topk_detections`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import get_act_layer, get_norm_layer
from torch import Tensor, nn

from cspwrc.layers import FoldableConvNormAct
from cspwrc.validate import require

__all__ = ["CLS_BRANCHES", "DecoupledHead", "HeadCfg", "HeadOutputs", "check_layer_names", "decode_boxes",
           "make_anchor_points"]

CLS_BRANCHES = ("conv", "dw")


def check_layer_names(act_layer: str, norm_layer: str) -> None:
    """A typo in a timm layer name is a config error when the config is read, not a ``KeyError`` inside a build."""
    for key, name, lookup, examples in (("act_layer", act_layer, get_act_layer, "silu, relu, gelu, ..."),
                                        ("norm_layer", norm_layer, get_norm_layer, "batchnorm, groupnorm1, ...")):
        try:
            lookup(name)
            known = True
        except (KeyError, ValueError, TypeError):
            known = False
        require(known, key, f"a timm layer name ({examples})", name)


@dataclass
class HeadCfg:
    """Options of :class:`DecoupledHead`.

    Attributes:
        reg_max: DFL bins per box side, or 1: direct regression of the four distances (see module docstring); the
            loss uses the same value.
        prior_prob: initial foreground probability of every class logit; ``bias = -log((1 - p) / p)``
            (RetinaNet), so the thousands of background points do not swamp the loss in the first steps.
        cls_channels / box_channels: branch widths; ``None`` follows YOLOv8 (``max(C3, min(C, 100))`` and
            ``max(16, C3 // 4, 4 * reg_max)`` with ``C3`` the P3 width).
        cls_branch: ``"conv"`` (two 3x3 convs) or ``"dw"`` (two depthwise 3x3 + 1x1 pairs), see module docstring.
        end2end: add the one-to-one branches and predict with them, without NMS (module docstring).
        act_layer / norm_layer: timm layer names of the conv-norm-act layers.
    """

    reg_max: int = 16
    prior_prob: float = 0.01
    cls_channels: int | None = None
    box_channels: int | None = None
    cls_branch: str = "conv"
    end2end: bool = False
    act_layer: str = "silu"
    norm_layer: str = "batchnorm"

    def __post_init__(self) -> None:
        require(self.reg_max >= 1, "reg_max", ">= 1 (1: direct regression, >= 2: DFL bins)", self.reg_max)
        require(self.cls_branch in CLS_BRANCHES, "cls_branch", f"one of {', '.join(CLS_BRANCHES)}", self.cls_branch)
        require(0.0 < self.prior_prob < 1.0, "prior_prob", "in (0, 1)", self.prior_prob)
        for key in ("cls_channels", "box_channels"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, ">= 1 (or null: YOLOv8's width)", value)
        check_layer_names(self.act_layer, self.norm_layer)


class HeadOutputs(NamedTuple):
    """One branch's predictions over all levels, decoded (what the loss takes; ``A`` points, ``C`` classes).

    Attributes:
        box_logits: ``[B, A, 4, reg_max]`` box outputs (:func:`decode_boxes`); cls_logits ``[B, A, C]``.
        boxes: ``[B, A, 4]`` decoded xyxy boxes, input-image pixels.
        points: ``[A, 2]`` anchor points (pixels); stride_per_point ``[A, 1]``.
        num_points_per_level: points per level, in the order of ``points``.
    """

    box_logits: Tensor
    cls_logits: Tensor
    boxes: Tensor
    points: Tensor
    stride_per_point: Tensor
    num_points_per_level: list[int]


def make_anchor_points(
    feat_shapes: Sequence[tuple[int, int]], strides: Sequence[int], *, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Anchor points (cell centres) of all levels, in input-image pixels.

    Args:
        feat_shapes: ``(H_i, W_i)`` per level.
        strides: stride per level (8, 16, 32).

    Returns:
        ``points [A, 2]`` (x, y) pixel coordinates of the cell centres ``(j + 0.5) * stride``, levels in order,
        row-major inside a level (matches :meth:`DecoupledHead.flatten`), and ``stride_per_point [A, 1]``.
    """
    points, stride_list = [], []
    for (h, w), s in zip(feat_shapes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx, yy), -1).reshape(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_list)


def decode_boxes(box_logits: Tensor, points: Tensor, stride_per_point: Tensor) -> Tensor:
    """Decode box outputs into xyxy boxes.

    Args:
        box_logits: ``[B, A, 4, reg_max]``: logits over distance bins for (left, top, right, bottom), or with
            ``reg_max == 1`` the four distances before their softplus (stride units).
        points: ``[A, 2]`` anchor points in pixels.
        stride_per_point: ``[A, 1]`` stride of each anchor point.

    Returns:
        ``[B, A, 4]`` boxes ``(x1, y1, x2, y2)`` in input-image pixels; always ``x2 >= x1`` and ``y2 >= y1``.
    """
    reg_max = box_logits.shape[-1]
    if reg_max == 1:
        dist = F.softplus(box_logits.squeeze(-1)) * stride_per_point  # [B, A, 4] pixels, >= 0 (module docstring)
    else:
        bins = torch.arange(reg_max, device=box_logits.device, dtype=box_logits.dtype)
        dist = box_logits.softmax(-1).matmul(bins) * stride_per_point
    lt, rb = dist[..., :2], dist[..., 2:]
    return torch.cat((points - lt, points + rb), -1)


class _Branch(nn.Sequential):
    """Two feature layers followed by a 1x1 prediction conv (with bias).

    A feature layer is a 3x3 conv-norm-act (``depthwise=False``) or a depthwise 3x3 conv-norm-act then a 1x1
    conv-norm-act (``depthwise=True``, YOLO11's ``DWConv`` + ``Conv``). All are timm ``ConvNormAct`` subclasses that
    ``timm.utils.reparameterize_model`` folds.
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, act_layer: str, norm_layer: str,
                 depthwise: bool = False) -> None:
        kw = dict(act_layer=act_layer, norm_layer=norm_layer)

        def layer(c_in: int) -> nn.Module:
            if not depthwise:
                return FoldableConvNormAct(c_in, mid_chs, 3, **kw)
            return nn.Sequential(FoldableConvNormAct(c_in, c_in, 3, groups=c_in, **kw),
                                 FoldableConvNormAct(c_in, mid_chs, 1, **kw))

        super().__init__(layer(in_chs), layer(mid_chs), nn.Conv2d(mid_chs, out_chs, 1))


class DecoupledHead(nn.Module):
    """Decoupled anchor-free head: a classification branch and a box branch per level (YOLOv8 / YOLOX style).

    Args:
        in_channels: channels of each input level (P3, P4, P5).
        num_classes: number of classes ``C``.
        strides: stride of each level.
        cfg: head options (default :class:`HeadCfg`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        cfg: HeadCfg | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or HeadCfg()
        reg_max, act_layer, norm_layer = cfg.reg_max, cfg.act_layer, cfg.norm_layer
        if len(in_channels) != len(strides):
            raise ValueError(f"in_channels {tuple(in_channels)} and strides {tuple(strides)} differ in length")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = tuple(int(s) for s in strides)
        c3 = in_channels[0]
        cls_channels = cfg.cls_channels or max(c3, min(num_classes, 100))
        box_channels = cfg.box_channels or max(16, c3 // 4, 4 * reg_max)
        self.box_branches = nn.ModuleList(
            _Branch(c, box_channels, 4 * reg_max, act_layer, norm_layer) for c in in_channels
        )
        self.cls_branches = nn.ModuleList(
            _Branch(c, cls_channels, num_classes, act_layer, norm_layer, cfg.cls_branch == "dw") for c in in_channels
        )
        self.init_bias(cfg.prior_prob)
        # The one-to-one copy starts where the one-to-many branches start (YOLO26 deep-copies them the same way).
        self.o2o_box_branches = copy.deepcopy(self.box_branches) if cfg.end2end else None
        self.o2o_cls_branches = copy.deepcopy(self.cls_branches) if cfg.end2end else None

    @torch.no_grad()
    def init_bias(self, prior_prob: float) -> None:
        """Prior-probability bias for class logits; box outputs start at boxes that overlap nearby objects."""
        for branch in self.cls_branches:
            branch[-1].bias.fill_(-math.log((1.0 - prior_prob) / prior_prob))
        for branch in self.box_branches:
            # DFL: equal bias for all bins, the initial distances are the bin mean ((reg_max - 1) / 2 strides).
            # Direct: softplus(bias) = 2 strides per side (Ultralytics' value). Either way large boxes that overlap
            # most objects, so the IoU-based TAL assigner finds candidates at step 0.
            branch[-1].bias.fill_(1.0 if self.reg_max > 1 else math.log(math.expm1(2.0)))

    @property
    def end2end(self) -> bool:
        return self.o2o_box_branches is not None

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """One-to-many branches, per level ``[B, 4 * reg_max + C, H_i, W_i]``: box logits first, then class logits."""
        return _outputs(feats, self.box_branches, self.cls_branches)

    def one2one(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """The end-to-end head's one-to-one branches, same layout as :meth:`forward` (the caller detaches ``feats``
        when training, so that only the one-to-many loss trains the backbone and neck)."""
        if not self.end2end:
            raise ValueError("this head has no one-to-one branches (head.end2end is false)")
        return _outputs(feats, self.o2o_box_branches, self.o2o_cls_branches)

    def flatten(self, outs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Concatenate levels: box logits ``[B, A, 4, reg_max]`` and class logits ``[B, A, C]``."""
        b = outs[0].shape[0]
        flat = torch.cat([o.flatten(2) for o in outs], 2).transpose(1, 2)  # [B, A, 4 * reg_max + C]
        box_logits, cls_logits = flat.split((4 * self.reg_max, self.num_classes), -1)
        return box_logits.reshape(b, -1, 4, self.reg_max), cls_logits

    def decode(self, outs: Sequence[Tensor]) -> HeadOutputs:
        """Per-level outputs (:meth:`forward` / :meth:`one2one`) -> :class:`HeadOutputs` (anchor points + boxes)."""
        box_logits, cls_logits = self.flatten(outs)
        shapes = [tuple(o.shape[-2:]) for o in outs]
        points, stride_per_point = make_anchor_points(shapes, self.strides, device=outs[0].device,
                                                      dtype=box_logits.dtype)
        boxes = decode_boxes(box_logits, points, stride_per_point)
        return HeadOutputs(box_logits, cls_logits, boxes, points, stride_per_point, [h * w for h, w in shapes])


def _outputs(feats: Sequence[Tensor], box_branches: nn.ModuleList, cls_branches: nn.ModuleList) -> list[Tensor]:
    return [torch.cat((bb(f), cb(f)), 1) for f, bb, cb in zip(feats, box_branches, cls_branches, strict=True)]
