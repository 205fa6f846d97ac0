"""Blocks: shapes, gradients, plain-residual equivalence, timm cs3darknet compatibility, scripting."""

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.cspnet import CrossStage3, DarkBlock

from cspwrc.layers import CspStage, Sppf, WeightedResidual, WrcBottleneck
from cspwrc.layers.blocks import BLOCK_TYPES
from randomize import randomize_norm_and_wrc_


def _check_grads(module: nn.Module, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_(True)
    module(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("shortcut", [True, False])
def test_bottleneck(shortcut: bool) -> None:
    block = WrcBottleneck(8, 8, shortcut=shortcut, expansion=0.5)
    assert (block.wrc is not None) == shortcut
    assert block.conv1.out_channels == 4
    x = torch.randn(2, 8, 12, 12)
    assert block(x).shape == (2, 8, 12, 12)
    _check_grads(block, x)


def test_bottleneck_without_matching_shapes_has_no_shortcut() -> None:
    assert WrcBottleneck(8, 16).wrc is None


@pytest.mark.parametrize("weights", ["scalar", "channel", "none"])
def test_fresh_bottleneck_matches_timm_darkblock(weights: str) -> None:
    """Same keys (plus wrc.weight) and, with WRC at init and normalize='none', identical outputs."""
    ours = WrcBottleneck(8, 8, wrc_weights=weights, act_layer="silu").eval()
    ref = DarkBlock(8, 8, bottle_ratio=1.0, act_layer=nn.SiLU).eval()
    randomize_norm_and_wrc_(ref, seed=1)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert unexpected == [] and missing == ([] if weights == "none" else ["wrc.weight"])
    x = torch.randn(2, 8, 10, 10)
    assert torch.equal(ours(x), ref(x))


def test_csp_stage_matches_timm_crossstage3() -> None:
    kw = dict(block_ratio=0.5, bottle_ratio=1.0, expand_ratio=1.0, act_layer=nn.SiLU, norm_layer=nn.BatchNorm2d)
    ref = CrossStage3(8, 16, stride=2, dilation=1, depth=2, block_fn=DarkBlock, **kw).eval()
    randomize_norm_and_wrc_(ref, seed=2)
    ours = CspStage(8, 16, depth=2, stride=2).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["blocks.0.wrc.weight", "blocks.1.wrc.weight"]
    x = torch.randn(2, 8, 16, 16)
    assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("stride,shortcut", [(1, True), (2, True), (1, False)])
def test_csp_stage_shapes_and_grads(stride: int, shortcut: bool) -> None:
    stage = CspStage(8, 16, depth=2, stride=stride, shortcut=shortcut, wrc_weights="channel", drop_path=[0.0, 0.1])
    assert isinstance(stage.conv_down, nn.Identity) == (stride == 1)
    n_wrc = sum(isinstance(m, WeightedResidual) for m in stage.modules())
    assert n_wrc == (2 if shortcut else 0)
    x = torch.randn(2, 8, 16, 16)
    assert stage(x).shape == (2, 16, 16 // stride, 16 // stride)
    _check_grads(stage, x)


def test_csp_stage_grad_checkpointing_recomputes_blocks() -> None:
    stage = CspStage(8, 8, depth=2)
    calls = []
    stage.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # recompute may stop early: pre-hook
    stage.grad_checkpointing = True
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    out = stage(x)
    assert len(calls) == 1
    out.sum().backward()
    assert len(calls) == 2  # forward re-run inside backward: activations were not kept


def test_sppf() -> None:
    sppf = Sppf(16, 24, kernel_size=5)
    x = torch.randn(2, 16, 8, 8)
    assert sppf(x).shape == (2, 24, 8, 8)
    _check_grads(sppf, x)


def test_sppf_equals_spp_with_growing_kernels() -> None:
    """Chained k=5 pools equal parallel 5/9/13 pools (the SPP it replaces)."""
    sppf = Sppf(8, 8).eval()
    x = torch.randn(1, 8, 20, 20)
    h = sppf.conv1(x)
    pools = [nn.functional.max_pool2d(h, k, 1, k // 2) for k in (5, 9, 13)]
    torch.testing.assert_close(sppf(x), sppf.conv2(torch.cat([h, *pools], 1)))


def test_layer_overrides_and_dtype() -> None:
    stage = CspStage(8, 8, depth=1, act_layer="relu", norm_layer="batchnorm", dtype=torch.float64)
    assert isinstance(stage.conv_exp.bn.act, nn.ReLU)
    assert all(p.dtype == torch.float64 for p in stage.parameters())
    assert stage(torch.randn(1, 8, 4, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("make", [
    lambda: CspStage(8, 8, depth=2, shortcut=False),
    lambda: CspStage(8, 8, depth=1, wrc_weights="none"),
    lambda: Sppf(8, 8),
])
def test_torchscript(make) -> None:
    module = make().eval()
    x = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(torch.jit.script(module)(x), module(x))


def test_timm_cs3darknet_uses_same_block_layout() -> None:
    """Guards the assumption above: cs3darknet stages are CrossStage3 of DarkBlocks."""
    model = timm.create_model("cs3darknet_s")
    assert isinstance(model.stages[1], CrossStage3) and isinstance(model.stages[1].blocks[0], DarkBlock)


class _GainBlock(nn.Module):
    """A stand-in block type with an option of its own (``gain``)."""

    def __init__(self, in_chs, out_chs, expansion, dilation, act_layer, norm_layer, drop_path, device=None, dtype=None,
                 gain: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=dilation, dilation=dilation, device=device, dtype=dtype)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.conv(x)


def test_a_new_block_type_is_one_entry(monkeypatch):
    """The stage and the backbone resolve the block by name and pass its own options through without naming them."""
    monkeypatch.setitem(BLOCK_TYPES, "gain", _GainBlock)
    stage = CspStage(8, 16, depth=2, stride=2, block_type="gain", gain=2.0)
    assert [type(b) for b in stage.blocks] == [_GainBlock] * 2 and stage.blocks[0].gain == 2.0
    assert stage(torch.randn(1, 8, 16, 16)).shape == (1, 16, 8, 8)
    with pytest.raises(TypeError, match="wrc_weights"):  # a WRC option is not this block's
        CspStage(8, 8, depth=1, block_type="gain", wrc_weights="channel")
    with pytest.raises(ValueError, match="block_type must be one of wrc, gain, got 'gian'"):
        CspStage(8, 8, depth=1, block_type="gian")
    wrc = timm.create_model("cspwrc_n", features_only=True, out_indices=(2, 3, 4), wrc_weights="channel")
    assert isinstance(wrc.stages_1.blocks[0], WrcBottleneck) and wrc.stages_1.blocks[0].wrc.weight.ndim == 2
