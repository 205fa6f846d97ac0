"""PAN neck (YOLOv5/v8 style): SPPF on P5, a top-down path, then a bottom-up path, CSP stages at each merge.

Data flow (``C3, C4, C5`` backbone features at strides 8/16/32; ``cat`` = channel concat)::

    P5  = SPPF(C5)
    T4  = CSP(cat(up(P5), C4))          top-down
    N3  = CSP(cat(up(T4), C3))          -> output P3
    N4  = CSP(cat(down(N3), T4))        bottom-up   -> output P4
    N5  = CSP(cat(down(N4), P5))                    -> output P5

The bottom-up path gives the large-object levels access to the precise localisation of the high-resolution
level (PANet); SPPF widens P5's receptive field cheaply. The CSP stages are :class:`cspwrc.layers.CspStage`
(stride 1); YOLO necks use them without the bottleneck shortcut (``shortcut=False``), and with ``shortcut=True``
the shortcuts are weighted residual connections with the given WRC options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cspwrc.layers import CspStage, FoldableConvNormAct, Sppf
from cspwrc.layers.wrc import WRC_NORMALIZE, WRC_WEIGHTS
from cspwrc.validate import require

from .head import check_layer_names

__all__ = ["NeckCfg", "YoloPan", "default_neck_channels", "default_neck_depth"]


@dataclass
class NeckCfg:
    """Options of :class:`YoloPan`.

    Attributes:
        channels: neck channels of ``P3, P4, P5`` (``None``: :func:`default_neck_channels`).
        depth: bottlenecks per CSP stage (``None``: :func:`default_neck_depth`).
        shortcut: bottleneck shortcuts (WRC) in the CSP stages.
        wrc_weights / wrc_normalize: WRC options of :class:`cspwrc.layers.WeightedResidual` (used with shortcut).
        sppf_kernel: max-pool kernel of SPPF.
        act_layer / norm_layer: timm layer names of the conv-norm-act layers.
    """

    channels: list[int] | None = None
    depth: int | None = None
    shortcut: bool = False
    wrc_weights: str = "scalar"
    wrc_normalize: str = "none"
    sppf_kernel: int = 5
    act_layer: str = "silu"
    norm_layer: str = "batchnorm"

    def __post_init__(self) -> None:
        channels = self.channels
        require(channels is None or (len(channels) == 3 and min(channels) >= 1), "channels",
                "3 positive widths (P3, P4, P5) or null", channels)
        require(self.depth is None or self.depth >= 1, "depth", ">= 1 (or null: from the P5 width)", self.depth)
        require(self.wrc_weights in WRC_WEIGHTS, "wrc_weights", f"one of {', '.join(WRC_WEIGHTS)}", self.wrc_weights)
        require(self.wrc_normalize in WRC_NORMALIZE, "wrc_normalize", f"one of {', '.join(WRC_NORMALIZE)}",
                self.wrc_normalize)
        # An even kernel would shift SPPF's "same" padding and change P5's size.
        require(self.sppf_kernel >= 1 and self.sppf_kernel % 2 == 1, "sppf_kernel", "odd and >= 1", self.sppf_kernel)
        check_layer_names(self.act_layer, self.norm_layer)


def default_neck_channels(backbone_channels: Sequence[int], max_channels: int = 1024) -> tuple[int, ...]:
    """Neck width per level = the backbone's width there (YOLOv8 scales both together), capped for very wide
    backbones (e.g. ResNet-50's 2048) so the neck does not dominate the compute."""
    return tuple(min(int(c), max_channels) for c in backbone_channels)


def default_neck_depth(neck_channels: Sequence[int]) -> int:
    """Bottlenecks per CSP stage from the P5 width, matching the YOLOv5/v8 ladder:
    n/s (256/512 ch) → 1, m (768) → 2, l (1024) → 3, x (1280) → 4."""
    return max(1, round(neck_channels[-1] / 256) - 1)


def _upsample_to(x: Tensor, ref: Tensor) -> Tensor:
    # Size taken from the skip connection, so inputs that are not a multiple of 32 still line up.
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class YoloPan(nn.Module):
    """PAN neck over three levels.

    Args:
        in_channels: backbone channels of ``C3, C4, C5``.
        cfg: neck options (default :class:`NeckCfg`).

    Shapes: ``[C3 [B, c3, H/8, W/8], C4 [B, c4, H/16, W/16], C5 [B, c5, H/32, W/32]]`` →
    ``[P3 [B, o3, H/8, W/8], P4 [B, o4, H/16, W/16], P5 [B, o5, H/32, W/32]]``.
    """

    def __init__(self, in_channels: Sequence[int], cfg: NeckCfg | None = None) -> None:
        super().__init__()
        cfg = cfg or NeckCfg()
        if len(in_channels) != 3:
            raise ValueError(f"YoloPan needs three levels (P3-P5), got in_channels={tuple(in_channels)}")
        c3, c4, c5 = in_channels
        o3, o4, o5 = self.out_channels = tuple(cfg.channels or default_neck_channels(in_channels))
        self.depth = depth = cfg.depth or default_neck_depth((o3, o4, o5))
        ckw = dict(act_layer=cfg.act_layer, norm_layer=cfg.norm_layer)
        csp = dict(depth=depth, shortcut=cfg.shortcut, wrc_weights=cfg.wrc_weights, wrc_normalize=cfg.wrc_normalize,
                   **ckw)

        self.sppf = Sppf(c5, o5, kernel_size=cfg.sppf_kernel, **ckw)
        self.td4 = CspStage(o5 + c4, o4, **csp)
        self.td3 = CspStage(o4 + c3, o3, **csp)
        self.down3 = FoldableConvNormAct(o3, o3, 3, stride=2, **ckw)
        self.bu4 = CspStage(o3 + o4, o4, **csp)
        self.down4 = FoldableConvNormAct(o4, o4, 3, stride=2, **ckw)
        self.bu5 = CspStage(o4 + o5, o5, **csp)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        p5 = self.sppf(c5)
        t4 = self.td4(torch.cat((_upsample_to(p5, c4), c4), 1))
        n3 = self.td3(torch.cat((_upsample_to(t4, c3), c3), 1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), 1))
        return [n3, n4, n5]
