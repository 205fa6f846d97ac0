"""Inference folding: BatchNorm into the preceding conv, WRC weights into neighbouring convs.

One verb, *fold*: :func:`fold_model` folds a model, a foldable module's ``fold()`` folds itself (the folded WRC
merge, :class:`~cspwrc.layers.wrc.ScaledAdd`, sits next to the WRC in ``wrc.py``). ``fuse()`` exists only as
timm's hook: ``timm.utils.reparameterize_model(model)`` walks the module tree top-down and replaces every child
that has a ``fuse()`` method by ``child.fuse()``, so every :class:`Foldable` answers ``fuse()`` with ``fold()`` and
that timm call folds a whole cspwrc backbone. :func:`fold_model` is ``reparameterize_model`` plus plain timm
``ConvNormAct`` layers (e.g. in a detector neck/head or a timm peer). Every ``fold()`` is idempotent because
``reparameterize_model`` recurses into a child after folding it.
"""

import copy

import torch
import torch.nn as nn
from timm.layers import ConvNormAct
from timm.utils import reparameterize_model
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = [
    "ConvAct",
    "Foldable",
    "FoldableConvNormAct",
    "fold_conv_norm",
    "fold_model",
    "scale_conv_input_",
    "split_conv_output",
]


class Foldable:
    """Mixin of the modules that fold themselves for inference: subclasses implement :meth:`fold`."""

    def fold(self) -> nn.Module:
        """Fold BN (and WRC weights) for inference; return the module to use in this one's place."""
        raise NotImplementedError

    def fuse(self) -> nn.Module:
        """timm's name for :meth:`fold` (``timm.utils.reparameterize_model`` calls ``child.fuse()``)."""
        return self.fold()


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
def fold_conv_norm(module: ConvNormAct) -> nn.Module:
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
    # A copy of the conv (any nn.Conv2d subclass, e.g. timm's same-padding conv) with torch's BN folding: running
    # statistics, i.e. inference behaviour y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta.
    conv = copy.deepcopy(module.conv)
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
        getattr(norm, "weight", None), getattr(norm, "bias", None),
    )
    return ConvAct(conv, act)


class FoldableConvNormAct(Foldable, ConvNormAct):
    """timm ``ConvNormAct`` (same state dict keys) that folds (``reparameterize_model`` too) into a :class:`ConvAct`."""

    def fold(self) -> nn.Module:
        return fold_conv_norm(self)


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


def fold_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold a model's submodules for inference: every ``fuse()`` (cspwrc: ``fold()``, BN + WRC; other timm
    re-parameterisations) and every other timm ``ConvNormAct`` (BN). The root module's own ``fold()`` is not
    called (fold a lone block with ``block.fold()``).

    Call on an eval-mode model (folding uses BN running statistics). Returns the folded model (a deep copy unless
    ``inplace``).
    """
    # reparameterize_model folds children only, never ``model.fuse()`` itself, so a model's own ``fold()`` may
    # call ``fold_model(part, inplace=True)`` on its parts (the detector's does) without recursing.
    model = reparameterize_model(model, inplace=inplace)
    _fold_remaining_conv_norm(model)
    return model


def _fold_remaining_conv_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvNormAct):
            setattr(module, name, fold_conv_norm(child))
        else:
            _fold_remaining_conv_norm(child)
