"""Inference folding: BN into convs, WRC weights into convs; folded == unfolded in eval mode."""

import itertools

import pytest
import torch
import torch.nn as nn
from timm.layers import ConvNormAct, freeze_batch_norm_2d
from timm.utils import reparameterize_model

from cspwrc.layers import (
    MIN_PUSHED_SCALE,
    ConvAct,
    CspStage,
    ScaledAdd,
    Sppf,
    WeightedResidual,
    WrcBottleneck,
    fold_conv_norm,
    fold_model,
)
from randomize import randomize_norm_and_wrc_

WRC_OPTIONS = list(itertools.product(["scalar", "channel", "none"], ["none", "relu", "softmax"]))
TOL = 1e-4


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


def _fold(module: nn.Module) -> nn.Module:
    """Fold a copy through timm's entry point (which folds children via their ``fuse()``, hence the wrapper)."""
    return reparameterize_model(nn.Sequential(module))[0]


def _no_unfolded_left(module: nn.Module) -> None:
    assert not any(isinstance(m, (nn.BatchNorm2d, WeightedResidual, ConvNormAct)) for m in module.modules())


def test_fold_conv_norm_keeps_activation() -> None:
    cna = randomize_norm_and_wrc_(ConvNormAct(4, 6, 3, act_layer="silu")).eval()
    fused = fold_conv_norm(cna)
    assert isinstance(fused, ConvAct) and isinstance(fused.act, nn.SiLU) and fused.conv.bias is not None
    assert _max_diff(cna, fused, torch.randn(2, 4, 7, 7)) < 1e-5


def test_fold_conv_norm_leaves_groupnorm() -> None:
    cna = ConvNormAct(4, 32, 3, norm_layer="groupnorm", act_layer="relu")
    assert fold_conv_norm(cna) is cna


@pytest.mark.parametrize("weights,normalize", WRC_OPTIONS)
def test_csp_stage_fold(weights: str, normalize: str) -> None:
    stage = randomize_norm_and_wrc_(CspStage(8, 16, depth=3, stride=2, wrc_weights=weights,
                                             wrc_normalize=normalize), seed=3).eval()
    fused = _fold(stage)
    x = torch.randn(2, 8, 16, 16)
    assert _max_diff(stage, fused, x) <= TOL
    _no_unfolded_left(fused)
    # the WRC weights left the branches: no block multiplies its branch output unless |a| was ~0
    for block, folded in zip(stage.blocks, fused.blocks, strict=True):
        a, _ = block.wrc.channel_weights()
        assert (folded.wrc.alpha is None) == bool((a.abs() >= MIN_PUSHED_SCALE).all())


def test_folded_stage_computes_each_half_with_its_own_conv() -> None:
    """conv_exp is cut in two so neither half is a copied channel slice; the halves are exactly its rows."""
    stage = randomize_norm_and_wrc_(CspStage(8, 16, depth=1), seed=1).eval()
    fused = _fold(stage)
    assert fused.exp_split and isinstance(fused.conv_exp, nn.Identity)
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        whole = fold_conv_norm(stage.conv_exp)(x)
        halves = torch.cat([fused.conv_exp_blocks(x), fused.conv_exp_bypass(x)], dim=1)
    assert halves.is_contiguous() and fused.conv_exp_blocks(x).shape[1] == 8
    torch.testing.assert_close(halves, whole)


def test_stage_with_unfoldable_norm_keeps_its_expansion_conv() -> None:
    stage = CspStage(8, 64, depth=1, norm_layer="groupnorm").eval()  # GroupNorm: 32 groups
    fused = _fold(stage)
    assert not fused.exp_split
    assert _max_diff(stage, fused, torch.randn(1, 8, 8, 8)) <= TOL


def test_fold_pushes_scale_through_zero_weight() -> None:
    """relu normalisation can give a == 0 exactly: that block keeps an explicit branch scale, output still equal."""
    stage = randomize_norm_and_wrc_(CspStage(8, 8, depth=3, wrc_normalize="relu")).eval()
    with torch.no_grad():
        stage.blocks[1].wrc.weight.copy_(torch.tensor([-1.0, 2.0]))
        stage.blocks[2].wrc.weight.copy_(torch.tensor([0.7, 1.5]))
    fused = _fold(stage)
    assert fused.blocks[1].wrc.alpha is not None and fused.blocks[2].wrc.alpha is None
    assert _max_diff(stage, fused, torch.randn(2, 8, 8, 8)) <= TOL


def test_fresh_none_folds_to_plain_add() -> None:
    stage = CspStage(8, 8, depth=2, wrc_weights="scalar", wrc_normalize="none").eval()
    fused = _fold(stage)
    assert all(isinstance(b.wrc, ScaledAdd) and b.wrc.alpha is None and b.wrc.beta is None for b in fused.blocks)


@pytest.mark.parametrize("weights", ["scalar", "channel"])
def test_standalone_bottleneck_fold(weights: str) -> None:
    block = randomize_norm_and_wrc_(WrcBottleneck(8, 8, wrc_weights=weights, wrc_normalize="softmax")).eval()
    x = torch.randn(2, 8, 6, 6)
    expected = block(x)
    assert block.fold() is block and block.fold() is block and block.fuse() is block  # idempotent; timm's name
    _no_unfolded_left(block)
    assert (block(x) - expected).abs().max().item() <= TOL


def test_sppf_fold_and_idempotent() -> None:
    sppf = randomize_norm_and_wrc_(Sppf(8, 8)).eval()
    fused = fold_model(fold_model(sppf))
    _no_unfolded_left(fused)
    assert _max_diff(sppf, fused, torch.randn(1, 8, 8, 8)) <= TOL


def test_fold_model_folds_plain_timm_conv_norm_act() -> None:
    """A neck/head built from timm ConvNormAct gets its BN folded too."""
    model = randomize_norm_and_wrc_(nn.Sequential(ConvNormAct(3, 8, 3), CspStage(8, 8, depth=1))).eval()
    fused = fold_model(model)
    _no_unfolded_left(fused)
    assert _max_diff(model, fused, torch.randn(1, 3, 8, 8)) <= TOL


def test_folded_stage_scripts() -> None:
    stage = randomize_norm_and_wrc_(CspStage(8, 8, depth=2, wrc_weights="channel")).eval()
    fused = _fold(stage)
    x = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(torch.jit.script(fused)(x), fused(x))


def test_fold_frozen_batchnorm() -> None:
    """Detectors may freeze BN (timm FrozenBatchNormAct2d, not an nn.BatchNorm2d): it folds the same way."""
    stage = randomize_norm_and_wrc_(CspStage(8, 8, depth=2, wrc_weights="channel")).eval()
    frozen = freeze_batch_norm_2d(stage).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    fused = _fold(frozen)
    assert not any(isinstance(m, ConvNormAct) for m in fused.modules())
    assert _max_diff(stage, fused, torch.randn(2, 8, 8, 8)) <= TOL
