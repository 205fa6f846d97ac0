"""Anchor-free decoupled head with distribution-focal (DFL) box regression.

Data flow: neck features ``P3..P5`` → :class:`DecoupledHead` (per level ``[B, 4 * reg_max + C, H_i, W_i]``)
→ :meth:`DecoupledHead.flatten` (``[B, A, 4, reg_max]`` box logits, ``[B, A, C]`` class logits, ``A = sum H_i W_i``)
→ :func:`make_anchor_points` + :func:`dfl_decode` (``[B, A, 4]`` xyxy boxes in input-image pixels).

Box regression choice: each anchor point predicts its distances to the four box sides (left, top, right,
bottom, in units of the level's stride) as a *discrete distribution* over ``reg_max`` bins ``0 .. reg_max - 1``
(Generalized Focal Loss, as used by YOLOv8 / PP-YOLOE / RTMDet). The distance is the expectation of that
distribution. Compared with regressing one number per side this lets the head express ambiguous edges (blur,
occlusion) as a spread-out distribution instead of a compromise value, gives a bounded and well-conditioned
output (softmax over bins, no exp/scale tricks per level), and the DFL term supplies a dense gradient around
the true edge from the first step. ``reg_max = 16`` covers distances up to ``15 * stride`` (480 px at
stride 32), enough for a 640 px input; raise it for larger inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timm.layers import get_act_layer, get_norm_layer
from torch import Tensor, nn

from cspwrc.layers import FoldableConvNormAct
from cspwrc.validate import require

__all__ = ["DecoupledHead", "HeadCfg", "check_layer_names", "dfl_decode", "make_anchor_points"]


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
        reg_max: DFL bins per box side (see module docstring); the loss uses the same value.
        prior_prob: initial foreground probability of every class logit; ``bias = -log((1 - p) / p)``
            (RetinaNet), so the thousands of background points do not swamp the loss in the first steps.
        cls_channels / box_channels: branch widths; ``None`` follows YOLOv8 (``max(C3, min(C, 100))`` and
            ``max(16, C3 // 4, 4 * reg_max)`` with ``C3`` the P3 width).
        act_layer / norm_layer: timm layer names of the conv-norm-act layers.
    """

    reg_max: int = 16
    prior_prob: float = 0.01
    cls_channels: int | None = None
    box_channels: int | None = None
    act_layer: str = "silu"
    norm_layer: str = "batchnorm"

    def __post_init__(self) -> None:
        require(self.reg_max >= 2, "reg_max", ">= 2 (a distribution needs two bins)", self.reg_max)
        require(0.0 < self.prior_prob < 1.0, "prior_prob", "in (0, 1)", self.prior_prob)
        for key in ("cls_channels", "box_channels"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, ">= 1 (or null: YOLOv8's width)", value)
        check_layer_names(self.act_layer, self.norm_layer)


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


def dfl_decode(box_logits: Tensor, points: Tensor, stride_per_point: Tensor) -> Tensor:
    """Decode DFL box logits into xyxy boxes.

    Args:
        box_logits: ``[B, A, 4, reg_max]`` logits over distance bins for (left, top, right, bottom).
        points: ``[A, 2]`` anchor points in pixels.
        stride_per_point: ``[A, 1]`` stride of each anchor point.

    Returns:
        ``[B, A, 4]`` boxes ``(x1, y1, x2, y2)`` in input-image pixels; always ``x2 >= x1`` and ``y2 >= y1``.
    """
    reg_max = box_logits.shape[-1]
    bins = torch.arange(reg_max, device=box_logits.device, dtype=box_logits.dtype)
    dist = box_logits.softmax(-1).matmul(bins) * stride_per_point  # [B, A, 4] pixels
    lt, rb = dist[..., :2], dist[..., 2:]
    return torch.cat((points - lt, points + rb), -1)


class _Branch(nn.Sequential):
    """Two 3x3 conv-norm-act layers followed by a 1x1 prediction conv (with bias).

    The conv-norm-acts are timm ``ConvNormAct`` subclasses that ``timm.utils.reparameterize_model`` folds.
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, act_layer: str, norm_layer: str) -> None:
        super().__init__(
            FoldableConvNormAct(in_chs, mid_chs, 3, act_layer=act_layer, norm_layer=norm_layer),
            FoldableConvNormAct(mid_chs, mid_chs, 3, act_layer=act_layer, norm_layer=norm_layer),
            nn.Conv2d(mid_chs, out_chs, 1),
        )


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
            _Branch(c, cls_channels, num_classes, act_layer, norm_layer) for c in in_channels
        )
        self.init_bias(cfg.prior_prob)

    @torch.no_grad()
    def init_bias(self, prior_prob: float) -> None:
        """Prior-probability bias for class logits; box logits start flat (uniform distribution over bins)."""
        for branch in self.cls_branches:
            branch[-1].bias.fill_(-math.log((1.0 - prior_prob) / prior_prob))
        for branch in self.box_branches:
            # Equal bias for all bins: the initial distances are the bin mean ((reg_max - 1) / 2 strides), i.e.
            # large boxes that overlap most objects, so the IoU-based TAL assigner finds candidates at step 0.
            branch[-1].bias.fill_(1.0)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Per level ``[B, 4 * reg_max + C, H_i, W_i]``: box logits first, then class logits."""
        branches = zip(feats, self.box_branches, self.cls_branches, strict=True)
        return [torch.cat((bb(f), cb(f)), 1) for f, bb, cb in branches]

    def flatten(self, outs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Concatenate levels: box logits ``[B, A, 4, reg_max]`` and class logits ``[B, A, C]``."""
        b = outs[0].shape[0]
        flat = torch.cat([o.flatten(2) for o in outs], 2).transpose(1, 2)  # [B, A, 4 * reg_max + C]
        box_logits, cls_logits = flat.split((4 * self.reg_max, self.num_classes), -1)
        return box_logits.reshape(b, -1, 4, self.reg_max), cls_logits
