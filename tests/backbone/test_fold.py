"""Inference folding of whole backbones: folded == unfolded (eval, float32, max abs diff <= 1e-4)."""

import itertools

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

import cspwrc  # noqa: F401
from cspwrc.backbone import P3_P5, wrc_weights
from cspwrc.layers import ConvAct, WeightedResidual, fold_model
from randomize import randomize_norm_and_wrc_

OPTIONS = list(itertools.product(["scalar", "channel", "none"], ["none", "relu", "softmax"]))
TOL = 1e-4
X = torch.randn(2, 3, 64, 64)


def _assert_fold_equivalent(model: nn.Module, fold=reparameterize_model) -> nn.Module:
    model = randomize_norm_and_wrc_(model, seed=11).eval()
    folded = fold(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, WeightedResidual)) for m in folded.modules())
    with torch.no_grad():
        got, want = folded(X), model(X)
        got, want = (got if isinstance(got, list) else [got]), (want if isinstance(want, list) else [want])
        for g, w in zip(got, want, strict=True):
            assert (g - w).abs().max().item() <= TOL
    return folded


@pytest.mark.parametrize("weights,normalize", OPTIONS)
def test_fold_every_wrc_option(weights: str, normalize: str) -> None:
    _assert_fold_equivalent(timm.create_model("cspwrc_n", wrc_weights=weights, wrc_normalize=normalize))


# every size; the options rotate so each weights/normalize value meets a deep model
@pytest.mark.parametrize("name,weights,normalize", [
    ("cspwrc_s", "channel", "relu"),
    ("cspwrc_m", "scalar", "softmax"),
    ("cspwrc_l", "channel", "none"),
    ("cspwrc_x", "scalar", "relu"),
])
def test_fold_every_size(name: str, weights: str, normalize: str) -> None:
    _assert_fold_equivalent(timm.create_model(name, wrc_weights=weights, wrc_normalize=normalize))


def test_fold_features_only_with_fold_model() -> None:
    model = timm.create_model("cspwrc_s", features_only=True, out_indices=P3_P5, wrc_weights="channel")
    folded = _assert_fold_equivalent(model, fold=fold_model)
    assert wrc_weights(folded) == []


def test_folded_model_is_plain_convs_and_scripts() -> None:
    folded = _assert_fold_equivalent(timm.create_model("cspwrc_n", wrc_weights="channel"))
    assert all(isinstance(m, ConvAct) for m in folded.stem)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(folded)(X), folded(X))
