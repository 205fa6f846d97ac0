"""WeightedResidual: the formula for every option, init, parameter naming, scripting."""

import pytest
import torch
import torch.nn.functional as F

from cspwrc.layers import WRC_NORMALIZE, WeightedResidual


def _expected(raw: torch.Tensor, normalize: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The issue's formulas, written out per input rather than vectorised."""
    wa, wb = raw[0], raw[1]
    if normalize == "relu":
        denom = eps + F.relu(wa) + F.relu(wb)
        return F.relu(wa) / denom, F.relu(wb) / denom
    if normalize == "softmax":
        denom = torch.exp(wa) + torch.exp(wb)
        return torch.exp(wa) / denom, torch.exp(wb) / denom
    return wa, wb


@pytest.mark.parametrize("normalize", WRC_NORMALIZE)
@pytest.mark.parametrize("weights", ["scalar", "channel"])
def test_formula(weights: str, normalize: str) -> None:
    wrc = WeightedResidual(6, weights=weights, normalize=normalize)
    with torch.no_grad():
        wrc.weight.copy_(torch.randn_like(wrc.weight) * 2)
    branch, shortcut = torch.randn(2, 6, 5, 5), torch.randn(2, 6, 5, 5)
    a, b = _expected(wrc.weight.detach(), normalize, 1e-4)
    if weights == "channel":
        a, b = a.view(1, 6, 1, 1), b.view(1, 6, 1, 1)
    torch.testing.assert_close(wrc(branch, shortcut), a * branch + b * shortcut)
    ea, eb = wrc.channel_weights()
    assert ea.shape == eb.shape == (6,)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("normalize", WRC_NORMALIZE)
@pytest.mark.parametrize("weights", ["scalar", "channel"])
def test_training_gradients_match_autograd(weights: str, normalize: str, memory_format: torch.memory_format) -> None:
    """The hand-written backward (used while grad is enabled) against autograd on the written-out formula."""
    wrc = WeightedResidual(6, weights=weights, normalize=normalize).double()
    with torch.no_grad():
        wrc.weight.uniform_(0.2, 1.5)
    branch = torch.randn(2, 6, 5, 7, dtype=torch.double).to(memory_format=memory_format).requires_grad_()
    shortcut = torch.randn(2, 6, 5, 7, dtype=torch.double, requires_grad=True)
    grad_out = torch.randn(2, 6, 5, 7, dtype=torch.double)
    out = wrc(branch, shortcut)
    a, b = _expected(wrc.weight, normalize, 1e-4)
    if weights == "channel":
        a, b = a.view(1, 6, 1, 1), b.view(1, 6, 1, 1)
    expected = a * branch + b * shortcut
    torch.testing.assert_close(out, expected)
    inputs = [branch, shortcut, wrc.weight]
    grads = torch.autograd.grad(out, inputs, grad_out), torch.autograd.grad(expected, inputs, grad_out)
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want)


def test_relu_normalize_zero_weight() -> None:
    wrc = WeightedResidual(3, weights="scalar", normalize="relu")
    with torch.no_grad():
        wrc.weight.copy_(torch.tensor([-2.0, 3.0]))
    a, b = wrc.effective_weights()
    assert a.item() == 0.0
    assert b.item() == pytest.approx(3.0 / (3.0 + 1e-4))


@pytest.mark.parametrize("weights", ["scalar", "channel", "none"])
def test_fresh_none_is_plain_residual(weights: str) -> None:
    wrc = WeightedResidual(4, weights=weights, normalize="none")
    branch, shortcut = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.equal(wrc(branch, shortcut), branch + shortcut)


def test_initial_values_and_shapes() -> None:
    assert WeightedResidual(5, "scalar").weight.shape == (2,)
    assert WeightedResidual(5, "channel").weight.shape == (2, 5)
    assert WeightedResidual(5, "none").weight is None
    assert list(WeightedResidual(5, "none").parameters()) == []
    assert torch.equal(WeightedResidual(5, "channel").weight, torch.ones(2, 5))
    a, b = WeightedResidual(5, "scalar", "softmax").effective_weights()
    assert a.item() == b.item() == pytest.approx(0.5)


def test_gradients_reach_weights() -> None:
    wrc = WeightedResidual(4, weights="channel", normalize="softmax")
    out = wrc(torch.randn(2, 4, 3, 3, requires_grad=True), torch.randn(2, 4, 3, 3))
    out.square().sum().backward()
    assert wrc.weight.grad is not None and wrc.weight.grad.abs().sum() > 0


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="weights"):
        WeightedResidual(4, weights="vector")
    with pytest.raises(ValueError, match="normalize"):
        WeightedResidual(4, normalize="sigmoid")


@pytest.mark.parametrize("weights", ["scalar", "channel", "none"])
def test_torchscript(weights: str) -> None:
    wrc = WeightedResidual(4, weights=weights, normalize="relu")
    scripted = torch.jit.script(wrc)
    branch, shortcut = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(scripted(branch, shortcut), wrc(branch, shortcut))
