"""Optimizer groups, MuSGD, the nominal batch (accumulation, loss and decay scaling), the lr/momentum warmup and the
epochs a time budget fits."""

from __future__ import annotations

import pytest
import torch

from cspwrc.det import build_detector
from cspwrc.engine.config import load_config
from cspwrc.engine.optim import (
    MuonSGD,
    WarmupScheduler,
    accumulate_steps,
    build_optimizer,
    fitted_epochs,
    param_groups,
)
from cspwrc.layers.wrc import WeightedResidual


def test_param_groups_on_a_real_detector():
    model = build_detector({"name": "cspwrc_n", "kwargs": {"wrc_weights": "channel"}}, num_classes=3)
    groups = {g["group"]: g for g in param_groups(model, 0.05)}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for p in groups["decay"]["params"]]
    undecayed = [names[id(p)] for p in groups["no_decay"]["params"] + groups["bias"]["params"]]
    assert decayed and all(model.get_parameter(n).ndim > 1 and "wrc" not in n for n in decayed)
    assert any(n.endswith("wrc.weight") and model.get_parameter(n).ndim == 2 for n in undecayed)
    assert len(decayed) + len(undecayed) == len(names)


def test_param_groups_exclude_norms_biases_and_wrc():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4))
    model.add_module("wrc", WeightedResidual(8, weights="channel"))  # a [2, C] parameter: not 1-d
    groups = {g["group"]: g for g in param_groups(model, 0.05)}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    assert ids["decay"] == {id(model[0].weight), id(model[2].weight)}
    assert id(model.wrc.weight) in ids["no_decay"] and id(model[1].weight) in ids["no_decay"]
    assert ids["bias"] == {id(model[0].bias), id(model[1].bias), id(model[2].bias)}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0


@pytest.mark.parametrize("sched", ["cosine", "linear"])
def test_warmup_and_bias_warmup(sched, tmp_path):
    cfg = load_config(None, {"model": {"name": "resnet18"}, "optim": {"opt": "sgd", "lr": 0.01},
                             "schedule": {"sched": sched, "warmup_epochs": 1, "warmup_bias_lr": 0.1,
                                          "min_lr_ratio": 0.1}, "train": {"epochs": 4}})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    opt = build_optimizer(model, cfg)
    sched_ = WarmupScheduler(opt, cfg, steps_per_epoch=10)
    lrs = {}
    for step in (0, 5, 10, 20, 39, 40):
        sched_.step(step)
        lrs[step] = {g["group"]: g["lr"] for g in opt.param_groups}
    assert lrs[0]["decay"] == pytest.approx(0.0) and lrs[0]["bias"] == pytest.approx(0.1)
    assert lrs[5]["decay"] == pytest.approx(0.005) and lrs[5]["bias"] == pytest.approx(0.055)
    assert lrs[10]["bias"] == pytest.approx(lrs[10]["decay"]) and lrs[10]["decay"] <= 0.01
    assert lrs[20]["decay"] < lrs[10]["decay"]
    assert lrs[40]["decay"] == pytest.approx(0.001, rel=0.05)  # decays to min_lr_ratio * lr
    if sched == "linear":
        assert lrs[20]["decay"] == pytest.approx(0.001 + 0.009 * 20 / 40, rel=0.05)



def _conv_bn() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))


def test_accumulate_steps_follows_the_nominal_batch():
    assert accumulate_steps(16, 1, 64) == 4
    assert accumulate_steps(16, 2, 64) == 2      # two ranks of 16 already make 32 images
    assert accumulate_steps(128, 1, 64) == 1     # never below one batch
    assert accumulate_steps(16, 1, 0) == 1       # no nominal batch: a step per batch


def test_nominal_batch_scales_weight_decay():
    """YOLO: decay x batch * accumulate / nbs (batch 24: accumulate 3, 72 / 64 of the configured decay)."""
    over = {"optim": {"opt": "sgd", "lr": 0.01, "weight_decay": 5e-4, "nominal_batch": 64}, "train": {"batch": 24}}
    groups = {g["group"]: g for g in build_optimizer(_conv_bn(), load_config(None, over)).param_groups}
    assert groups["decay"]["weight_decay"] == pytest.approx(5e-4 * 72 / 64)
    assert groups["no_decay"]["weight_decay"] == 0.0


def test_musgd_is_sgd_plus_an_orthogonal_step_on_conv_weights():
    """Muon moves a conv weight by 0.2 lr along an (approximately) orthogonal matrix on top of the SGD step; a
    group without use_muon is plain Nesterov SGD (checked against torch's)."""
    torch.manual_seed(0)
    model = _conv_bn()
    cfg = load_config(None, {"optim": {"opt": "musgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}})
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, MuonSGD)
    assert {g["group"]: g["use_muon"] for g in opt.param_groups} == {"decay": True, "no_decay": False, "bias": False}
    reference = torch.nn.Parameter(model[1].weight.detach().clone())
    sgd = torch.optim.SGD([reference], lr=0.1, momentum=0.9, nesterov=True)
    before = model[0].weight.detach().clone()
    grad = torch.randn_like(before)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[0].weight.grad = grad.clone()
    model[1].weight.grad = reference.grad = torch.randn_like(reference)
    opt.step()
    sgd.step()
    torch.testing.assert_close(model[1].weight, reference)  # norm weight: SGD only
    sgd_part = 0.1 * (grad + 0.9 * grad)                     # first Nesterov step: d + m * d
    muon_part = (before - model[0].weight.detach() - sgd_part).reshape(8, -1) / (0.1 * 0.2)
    singular = torch.linalg.svdvals(muon_part)
    assert singular.min() > 0.5 and singular.max() < 1.5       # Newton-Schulz: all singular values near 1


def test_momentum_warmup_and_accumulate_ramp():
    cfg = load_config(None, {"optim": {"opt": "sgd", "lr": 0.01, "momentum": 0.937},
                             "schedule": {"warmup_epochs": 1, "warmup_momentum": 0.8}, "train": {"epochs": 3}})
    opt = build_optimizer(_conv_bn(), cfg)
    sched = WarmupScheduler(opt, cfg, steps_per_epoch=10)
    momentum = {}
    for step in (0, 5, 10, 20):
        sched.step(step)
        momentum[step] = opt.param_groups[0]["momentum"]
    assert momentum[0] == pytest.approx(0.8) and momentum[5] == pytest.approx(0.8685)
    assert momentum[10] == pytest.approx(0.937) and momentum[20] == pytest.approx(0.937)
    assert [sched.accumulate(s, 4) for s in (0, 2, 5, 9, 10, 30)] == [1, 2, 3, 4, 4, 4]


def test_fitted_epochs_follow_the_mean_epoch_time_and_never_end_before_the_epoch_done():
    assert fitted_epochs(100 / 3600, done=2, spent_s=10.0, epochs=5) == 20   # 5 s an epoch in a 100 s budget
    assert fitted_epochs(100 / 3600, done=2, spent_s=1000.0, epochs=5) == 2  # over budget: stop after this epoch
    assert fitted_epochs(100 / 3600, done=1, spent_s=0.0, epochs=5) == 5     # no time counted yet: unchanged
