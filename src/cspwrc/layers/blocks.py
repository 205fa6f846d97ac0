"""Residual, WRC bottleneck, CSP (C3) stage and SPPF blocks built from timm layers.

``WrcBottleneck`` and ``CspStage`` keep the module names and the topology of timm's ``DarkBlock`` and
``CrossStage3`` (as used by ``cs3darknet_*``), so a cs3darknet state dict loads into them; the only extra tensor
is each block's ``wrc.weight``.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerType
from timm.models import checkpoint_seq

from .fold import ConvAct, Foldable, FoldableConvNormAct, fold_conv_norm, scale_conv_input_, split_conv_output
from .wrc import ScaledAdd, WeightedResidual

__all__ = ["BLOCK_TYPES", "MIN_PUSHED_SCALE", "CspStage", "Sppf", "WrcBottleneck", "resolve_block"]

# A WRC branch weight |a| below this is not divided out and pushed to the consumer (see WrcBottleneck.fold_scaled):
# the folded shortcut would carry b/a, and 1/a <= 1e3 keeps folded activations inside float16 range.
MIN_PUSHED_SCALE = 1e-3


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate else nn.Identity()


class WrcBottleneck(Foldable, nn.Module):
    """YOLO/darknet bottleneck ``H(x) = a * F(x) + b * x``, ``F`` = 1x1 then 3x3 conv-BN-act.

    Same modules as timm's ``DarkBlock`` (``conv1``, ``conv2``) plus ``wrc``; the shortcut exists only when
    ``shortcut`` and ``in_chs == out_chs`` (else ``H(x) = F(x)``, as in a YOLO neck's C3).

    Shapes: ``[B, in_chs, H, W]`` -> ``[B, out_chs, H, W]``.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            shortcut: bool = True,
            expansion: float = 1.0,
            dilation: int = 1,
            wrc_weights: str = "scalar",
            wrc_normalize: str = "none",
            act_layer: LayerType = "silu",
            norm_layer: LayerType = "batchnorm",
            drop_path: float = 0.,
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        ckw = dict(act_layer=act_layer, norm_layer=norm_layer, **dd)
        mid_chs = round(out_chs * expansion)
        self.conv1 = FoldableConvNormAct(in_chs, mid_chs, 1, **ckw)
        self.conv2 = FoldableConvNormAct(mid_chs, out_chs, 3, dilation=dilation, **ckw)
        self.drop_path = _drop_path(drop_path)
        has_shortcut = shortcut and in_chs == out_chs
        self.wrc: nn.Module | None = WeightedResidual(out_chs, wrc_weights, wrc_normalize, **dd) \
            if has_shortcut else None
        self.folded = False

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.conv2(self.conv1(x)))
        if self.wrc is not None:
            out = self.wrc(out, x)
        return out

    def fold(self) -> "WrcBottleneck":
        """Fold standalone: same outputs, so ``a`` stays an explicit branch scale (a ``CspStage`` pushes it on)."""
        if not self.folded:
            self.fold_scaled(None, push_scale=False)
        return self

    @torch.no_grad()
    def fold_scaled(self, in_scale: torch.Tensor | None, push_scale: bool) -> torch.Tensor | None:
        """Fold BN, an input scale and the WRC weights; return the output scale left for the consumer.

        The branch ends in an activation, so ``a`` cannot go into ``conv2``. Instead
        ``H = a * (F(x) + (b / a) * x)``: the block outputs ``F(x) + (b / a) * x`` and the caller folds ``a`` into
        whatever consumes it (the next bottleneck's ``conv1`` input weights and shortcut scale, finally the CSP
        transition conv's input channels). Where ``|a| < MIN_PUSHED_SCALE`` (``relu`` normalisation can give exactly
        0) that channel keeps an explicit branch scale instead.

        Args:
            in_scale: ``[in_chs]`` factor with true input = given input * ``in_scale`` (``None``: 1), folded into
                ``conv1``'s input weights and the shortcut scale.
            push_scale: Whether the caller takes an output scale; if not, the output is the true ``H(x)``.

        Returns:
            ``[out_chs]`` output scale (true output = returned output * scale) or ``None`` for 1.
        """
        assert not self.folded, "already folded"
        self.folded = True
        self.conv1, self.conv2 = fold_conv_norm(self.conv1), fold_conv_norm(self.conv2)
        self.drop_path = nn.Identity()
        if in_scale is not None:
            scale_conv_input_(self.conv1, in_scale)
        if self.wrc is None:
            return None
        ref = self.conv2.conv.weight
        a, b = (t.to(ref) for t in self.wrc.channel_weights())
        s_in = in_scale.to(ref) if in_scale is not None else torch.ones_like(a)
        s_out = torch.where(a.abs() >= MIN_PUSHED_SCALE, a, torch.ones_like(a)) if push_scale else torch.ones_like(a)
        self.wrc = ScaledAdd(a / s_out, b * s_in / s_out)
        return None if bool(torch.all(s_out == 1)) else s_out


#: The bottleneck types of a CSP stage by name (timm's ``block_fn``, resolved once per stage): a new block type is one
#: entry. A block takes ``(in_chs, out_chs, expansion=, dilation=, act_layer=, norm_layer=, drop_path=, device=,
#: dtype=)`` and its own options, which the stage passes through (``**block_kwargs``) without naming them. The backbone
#: hands every type the WRC options (``wrc_weights``, ``wrc_normalize``): its block types have a weighted residual.
#: ``CspStage.fold`` calls each block's ``fold_scaled`` (:class:`WrcBottleneck`'s): a type without it trains and runs,
#: but cannot be folded for deployment.
BLOCK_TYPES: dict[str, Callable[..., nn.Module]] = {"wrc": WrcBottleneck}


def resolve_block(block_type: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A block class from its name in :data:`BLOCK_TYPES` (a class or factory passes through)."""
    if not isinstance(block_type, str):
        return block_type
    if block_type not in BLOCK_TYPES:
        raise ValueError(f"block_type must be one of {', '.join(BLOCK_TYPES)}, got {block_type!r}")
    return BLOCK_TYPES[block_type]


class CspStage(Foldable, nn.Module):
    """CSP / C3 stage (timm ``CrossStage3`` topology): optional stride-2 (or dilated) 3x3 ``conv_down``, 1x1
    ``conv_exp`` to ``round(out_chs * expand_ratio)`` channels split into two halves, the first half through ``depth``
    bottlenecks of ``block_type`` (:data:`BLOCK_TYPES`; :class:`WrcBottleneck`, whose options ``shortcut``,
    ``wrc_weights``, ``wrc_normalize`` come in ``block_kwargs``), concat ``[blocks(x1), x2]``, 1x1
    ``conv_transition`` to ``out_chs``.

    ``conv_down`` keeps ``in_chs`` (cs3darknet, timm's ``down_growth=False``) or, with ``down_growth``, goes to
    ``out_chs`` (YOLOv5's ``Conv(c1, c2, 3, 2)`` before its C3).

    With ``stride=1, shortcut=False`` it is the C3 block of a YOLO PAN neck.

    Shapes: ``[B, in_chs, H, W]`` -> ``[B, out_chs, H / stride, W / stride]``.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            stride: int = 1,
            dilation: int = 1,
            first_dilation: int | None = None,
            expand_ratio: float = 1.0,
            bottle_ratio: float = 1.0,
            down_growth: bool = False,
            block_type: str | Callable[..., nn.Module] = "wrc",
            act_layer: LayerType = "silu",
            norm_layer: LayerType = "batchnorm",
            drop_path: float | Sequence[float] = 0.,
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
            **block_kwargs: Any,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        ckw = dict(act_layer=act_layer, norm_layer=norm_layer, **dd)
        first_dilation = first_dilation or dilation
        # cs3darknet keeps the channels in the down conv (down_growth=False); it is also there when a dilated
        # model (output_stride < 32) replaced the stride by dilation, so the state dict stays the same
        has_down = stride != 1 or first_dilation != dilation
        down_chs = out_chs if down_growth and has_down else in_chs
        self.conv_down = FoldableConvNormAct(
            in_chs, down_chs, 3, stride=stride, dilation=first_dilation, **ckw,
        ) if has_down else nn.Identity()
        self.expand_chs = exp_chs = round(out_chs * expand_ratio)
        half = exp_chs // 2
        self.conv_exp = FoldableConvNormAct(down_chs, exp_chs, 1, **ckw)
        dpr = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        block_fn = resolve_block(block_type)
        self.blocks = nn.Sequential(*[
            block_fn(half, half, expansion=bottle_ratio, dilation=dilation, drop_path=dpr[i], **ckw, **block_kwargs)
            for i in range(depth)
        ])
        self.conv_transition = FoldableConvNormAct(2 * half, out_chs, 1, **ckw)
        # fold() replaces conv_exp by its two output halves (no parameters until then: the state dict stays timm's)
        self.conv_exp_blocks: nn.Module = nn.Identity()
        self.conv_exp_bypass: nn.Module = nn.Identity()
        self.exp_split = False
        self.grad_checkpointing = False
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_down(x)
        if self.exp_split:
            x1, x2 = self.conv_exp_blocks(x), self.conv_exp_bypass(x)
        else:
            x1, x2 = self.conv_exp(x).split(self.expand_chs // 2, dim=1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x1 = checkpoint_seq(self.blocks, x1)  # recomputes each block's forward during backward
        else:
            x1 = self.blocks(x1)
        return self.conv_transition(torch.cat([x1, x2], dim=1))

    @torch.no_grad()
    def fold(self) -> "CspStage":
        """Fold BN everywhere and the WRC weights along the block chain into the transition conv; cut conv_exp
        into the two convs that produce the halves, so neither half is a (copied) channel slice."""
        if self.folded:
            return self
        self.folded = True
        if not isinstance(self.conv_down, nn.Identity):
            self.conv_down = fold_conv_norm(self.conv_down)
        self.conv_exp = fold_conv_norm(self.conv_exp)
        if isinstance(self.conv_exp, ConvAct):  # not when a norm without running statistics stays unfolded
            self.conv_exp_blocks, self.conv_exp_bypass = split_conv_output(self.conv_exp, self.expand_chs // 2)
            self.conv_exp, self.exp_split = nn.Identity(), True
        self.conv_transition = fold_conv_norm(self.conv_transition)
        scale: torch.Tensor | None = None
        for block in self.blocks:
            scale = block.fold_scaled(scale, push_scale=True)
        if scale is not None:  # blocks' output is the first half of the concat
            scale_conv_input_(self.conv_transition, scale, start=0)
        return self


class Sppf(nn.Module):
    """SPPF (YOLOv5/v8): 1x1 conv to ``in_chs // 2``, three chained ``k x k`` stride-1 max pools, concat of the four
    maps, 1x1 conv to ``out_chs``. Same result as SPP with kernels ``k, 2k-1, 3k-2``, cheaper.

    Shapes: ``[B, in_chs, H, W]`` -> ``[B, out_chs, H, W]``.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 5,
            act_layer: LayerType = "silu",
            norm_layer: LayerType = "batchnorm",
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        ckw = dict(act_layer=act_layer, norm_layer=norm_layer, device=device, dtype=dtype)
        hidden = in_chs // 2
        self.conv1 = FoldableConvNormAct(in_chs, hidden, 1, **ckw)
        self.pool = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)
        self.conv2 = FoldableConvNormAct(hidden * 4, out_chs, 1, **ckw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.conv2(torch.cat([x, y1, y2, self.pool(y2)], dim=1))
