"""Inference folding: BatchNorm into the preceding conv, WRC weights into neighbouring convs.

``timm.utils.reparameterize_model(model)`` walks the module tree top-down and replaces every child that has a
``fuse()`` method by ``child.fuse()``. The cspwrc modules implement ``fuse()`` so that call folds a whole
backbone; :func:`fuse_model` additionally folds plain timm ``ConvNormAct`` layers (e.g. in a detector neck/head).
Every ``fuse()`` here is idempotent because ``reparameterize_model`` recurses into a child after fusing it.
"""

import copy
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import ConvNormAct
from timm.utils import reparameterize_model

__all__ = [
    "ConvAct", "FusableConvNormAct", "ScaledAdd", "fold_conv_bn", "fuse_conv_norm", "fuse_model",
    "scale_conv_input_", "scale_conv_output_", "split_conv_output",
]


class ConvAct(nn.Module):
    """A conv with BatchNorm folded into its weights and bias, then the activation: ``act(conv(x))``."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Cin, H, W]`` -> ``[B, Cout, H', W']``."""
        return self.act(self.conv(x))


def _is_foldable_bn(norm: nn.Module) -> bool:
    """BatchNorm-like (incl. timm ``BatchNormAct2d``/``FrozenBatchNormAct2d``) with running statistics."""
    return all(getattr(norm, name, None) is not None for name in ("running_mean", "running_var", "eps"))


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A copy of ``conv`` (any ``nn.Conv2d`` subclass, e.g. timm's same-padding conv) computing ``bn(conv(x))``.

    Uses BN's running statistics, i.e. inference behaviour: ``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta``.
    """
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if getattr(bn, "weight", None) is not None else torch.ones_like(std)
    beta = bn.bias if getattr(bn, "bias", None) is not None else torch.zeros_like(std)
    scale = gamma / std
    bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias = nn.Parameter(beta + (bias - bn.running_mean) * scale)
    return fused


def fuse_conv_norm(module: ConvNormAct) -> nn.Module:
    """Fold a timm ``ConvNormAct``'s BatchNorm into its conv, keeping its activation.

    Returns a :class:`ConvAct`, or ``module`` unchanged when it cannot be folded (a norm without running statistics,
    e.g. GroupNorm, or an anti-aliasing layer between the norm and the output).
    """
    if isinstance(module, ConvAct) or getattr(module, "aa", None) is not None:
        return module
    norm = module.bn
    if not _is_foldable_bn(norm):
        return module
    # BatchNormAct2d keeps its activation (and a drop layer that is identity in eval) inside the norm module.
    act = getattr(norm, "act", None) or nn.Identity()
    return ConvAct(fold_conv_bn(module.conv, norm), act)


class FusableConvNormAct(ConvNormAct):
    """timm ``ConvNormAct`` (same state dict keys) that ``reparameterize_model`` folds into a :class:`ConvAct`."""

    def fuse(self) -> nn.Module:
        return fuse_conv_norm(self)


class ScaledAdd(nn.Module):
    """A folded WRC merge: ``branch * alpha + shortcut * beta`` with a scale only where one is left.

    ``alpha``/``beta`` are ``[C]`` buffers or ``None`` (= 1, no multiply), so a fully folded block is one add.
    """

    def __init__(self, alpha: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.register_buffer("alpha", _drop_if_ones(alpha))
        self.register_buffer("beta", _drop_if_ones(beta))

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``branch``, ``shortcut``: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        alpha = self.alpha
        beta = self.beta
        if alpha is not None:
            branch = branch * alpha.reshape(-1, 1, 1)
        if beta is not None:  # one fused multiply-add instead of a multiply then an add
            return torch.addcmul(branch, shortcut, beta.reshape(-1, 1, 1))
        return branch + shortcut

    def extra_repr(self) -> str:
        return f"branch_scale={self.alpha is not None}, shortcut_scale={self.beta is not None}"


def _drop_if_ones(scale: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if scale is None or bool(torch.all(scale == 1)):
        return None
    return scale.detach().clone()


def _conv_of(module: nn.Module) -> nn.Conv2d:
    """The ``nn.Conv2d`` of a ``ConvNormAct``/``ConvAct``."""
    conv = module.conv
    assert isinstance(conv, nn.Conv2d) and conv.groups == 1, "WRC folding needs a dense (groups=1) conv"
    return conv


@torch.no_grad()
def scale_conv_input_(module: nn.Module, scale: torch.Tensor, start: int = 0) -> None:
    """Make ``module`` compute on ``x * scale`` for input channels ``start:start+len(scale)`` (in place).

    Valid for any conv (with or without a following norm/act): the input scale commutes into the weights.
    """
    conv = _conv_of(module)
    w = conv.weight
    w[:, start:start + scale.numel()] *= scale.to(w).reshape(1, -1, 1, 1)


@torch.no_grad()
def scale_conv_output_(module: ConvAct, scale: torch.Tensor) -> None:
    """Multiply the output channels of a folded conv without activation by ``scale`` ``[C]`` (in place)."""
    assert isinstance(module, ConvAct) and isinstance(module.act, nn.Identity), "output scale needs a linear conv"
    conv = module.conv
    conv.weight *= scale.to(conv.weight).reshape(-1, 1, 1, 1)
    conv.bias *= scale.to(conv.bias)


@torch.no_grad()
def split_conv_output(module: ConvAct, first: int) -> tuple[ConvAct, ConvAct]:
    """Cut a folded conv in two along its output channels: ``[:first]`` and ``[first:]``.

    ``torch.cat([a(x), b(x)], 1)`` equals ``module(x)``. Two convs writing their own outputs replace one conv whose
    output is split: a channel slice of an NCHW/NHWC tensor is not contiguous, and the next conv copies it first.
    """
    conv = _conv_of(module)
    halves = []
    for rows in (slice(0, first), slice(first, conv.out_channels)):
        part = copy.deepcopy(conv)
        part.weight = nn.Parameter(conv.weight[rows].clone())
        part.bias = nn.Parameter(conv.bias[rows].clone())
        part.out_channels = part.weight.shape[0]
        halves.append(ConvAct(part, copy.deepcopy(module.act)))
    return halves[0], halves[1]


def fuse_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold a model's submodules for inference: every ``fuse()`` (cspwrc: BN + WRC) and every other timm
    ``ConvNormAct`` (BN). The root module's own ``fuse()`` is not called (fold a lone block with ``block.fuse()``).

    Call on an eval-mode model (folding uses BN running statistics). Returns the folded model (a deep copy unless
    ``inplace``).
    """
    # reparameterize_model fuses children only, never ``model.fuse()`` itself, so a model's own ``fuse()`` may be
    # ``return fuse_model(self, inplace=True)`` (the detector's is) without recursing.
    model = reparameterize_model(model, inplace=inplace)
    _fuse_remaining_conv_norm(model)
    return model


def _fuse_remaining_conv_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvNormAct):
            setattr(module, name, fuse_conv_norm(child))
        else:
            _fuse_remaining_conv_norm(child)
