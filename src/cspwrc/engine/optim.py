"""Optimizer, parameter groups, gradient accumulation and the per-step lr / momentum schedule.

Two conventions, chosen by ``optim.nominal_batch`` (:class:`cspwrc.engine.config.OptimConfig`):

* ``0``: one optimizer step per batch on the loss as the detector returns it (a mean over the batch's targets).
* ``N > 0`` (YOLOv5/v8's ``nbs``, 64): gradients accumulate over ``round(N / batch)`` batches, the loss is
  multiplied by the images in the batch (YOLO's ``loss * batch_size``: the gradient is a sum over images, so one lr
  serves every batch size) and the weight decay by ``batch * accumulate / N``. Ultralytics' lr 0.01 and weight
  decay 5e-4 then mean here what they mean there.

Optimizers: ``sgd`` (Nesterov), ``adamw`` (timm's) and ``musgd``: SGD plus, on conv weights, the orthogonalised
Muon update (:class:`MuonSGD`), what Ultralytics 8.4's ``optimizer=auto`` picks for runs of over 10k iterations.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.optim.muon import zeropower_via_newtonschulz
from timm.scheduler import create_scheduler_v2
from torch import nn

from cspwrc.layers.wrc import WeightedResidual

if TYPE_CHECKING:  # the run config imports the detector; only its type is needed here
    from cspwrc.engine.config import RunConfig

__all__ = ["MuonSGD", "WarmupScheduler", "accumulate_steps", "build_optimizer", "fitted_epochs", "param_groups"]

# Newton-Schulz quintic coefficients and steps of Muon (Jordan et al. 2024), as Ultralytics' MuSGD uses them.
NS_COEFFICIENTS = [(3.4445, -4.7750, 2.0315)]
NS_STEPS = 5
# MuSGD's mix (Ultralytics 8.4): each conv weight takes 0.2 x lr of Muon's update plus the full SGD step.
MUON_WEIGHT = 0.2


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters that get no weight decay: 1-d (norms, biases), WRC weights, and no_weight_decay() lists.

    WRC weights are ``[2, C]`` for per-channel WRC, so the 1-d rule alone would miss them; they are found by
    module type and by any submodule's ``no_weight_decay()`` (timm convention, names relative to it).
    """
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, WeightedResidual):
            names.update(prefix + n for n, _ in module.named_parameters())
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            for n in listed():
                names.update(p for p, _ in module.named_parameters(prefix=mod_name) if p == prefix + n
                             or p.startswith(prefix + n + "."))
    names.update(n for n, p in model.named_parameters() if p.ndim <= 1)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Three groups: decayed weights, undecayed weights (norms, WRC), biases (own group for bias warmup)."""
    no_decay = _no_decay_names(model)
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "bias": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias"):
            groups["bias"].append(param)
        elif name in no_decay:
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    wd = {"decay": weight_decay, "no_decay": 0.0, "bias": 0.0}
    return [{"params": ps, "weight_decay": wd[k], "group": k} for k, ps in groups.items() if ps]


def accumulate_steps(batch: int, world_size: int, nominal_batch: int) -> int:
    """Batches per optimizer step: ``round(nominal_batch / (batch * world_size))``, at least 1 (1 without a
    nominal batch)."""
    return max(1, round(nominal_batch / (batch * world_size))) if nominal_batch > 0 else 1


def fitted_epochs(time_h: float, done: int, spent_s: float, epochs: int) -> int:
    """``train.time``: how many epochs fit a budget of ``time_h`` hours at the mean epoch time so far (``spent_s``
    over ``done`` epochs: training and evaluation of this run, resumes included, not start-up), as Ultralytics'
    ``time=``; never fewer than ``done`` (the run never ends before the epoch that just finished), ``epochs`` while
    no time has been counted. The final evaluation comes on top of the budget."""
    return max(done, math.floor(time_h * 3600.0 * done / spent_s)) if spent_s > 0 else epochs


def build_optimizer(model: nn.Module, cfg: RunConfig, world_size: int = 1) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim`` over :func:`param_groups`; with a nominal batch the weight decay is scaled by
    ``batch * world_size * accumulate / nominal_batch`` (module doc)."""
    o, batch = cfg.optim, cfg.train.batch
    weight_decay = o.weight_decay
    if o.nominal_batch > 0:
        weight_decay *= batch * world_size * accumulate_steps(batch, world_size, o.nominal_batch) / o.nominal_batch
    groups = param_groups(model, weight_decay)
    if o.opt == "musgd":
        for group in groups:
            group["use_muon"] = group["group"] == "decay"  # conv and linear weights; never norms, biases, WRC
        return MuonSGD(groups, lr=o.lr, momentum=o.momentum)
    extra: dict[str, Any] = {"momentum": o.momentum, "nesterov": True} if o.opt == "sgd" else {
        "betas": (o.momentum, o.betas2)}
    # Groups carry their own weight_decay; timm's own filtering is bypassed because groups are given.
    return create_optimizer_v2(groups, opt=o.opt, lr=o.lr, weight_decay=weight_decay, **extra)


class MuonSGD(torch.optim.Optimizer):
    """Nesterov SGD with coupled weight decay on every group, plus Muon on groups with ``use_muon`` (MuSGD).

    A ``use_muon`` parameter (a conv or linear weight, seen as ``[out, in * kh * kw]``) first moves by
    ``MUON_WEIGHT * lr`` along the orthogonalised momentum of its gradient (Muon: Newton-Schulz iteration, timm's
    implementation; its own momentum buffer; scaled by ``sqrt(max(1, out / in))``), then takes the SGD step.
    Muon's step size does not depend on the gradient's scale, so it keeps moving the weights that plain SGD under
    BatchNorm barely moves. Ultralytics' MuSGD also triples the lr of its classification branch; not done here.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = True, use_muon: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "nesterov": nesterov, "use_muon": use_muon})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if group["use_muon"]:
                    buf = state.setdefault("muon_momentum", torch.zeros_like(p))
                    buf.lerp_(grad, 1 - m)
                    update = (grad.lerp(buf, m) if nesterov else buf).reshape(p.shape[0], -1)
                    ortho = zeropower_via_newtonschulz(update, NS_STEPS, NS_COEFFICIENTS).to(p.dtype)
                    scale = max(1.0, update.shape[0] / update.shape[1]) ** 0.5
                    p.add_(ortho.view_as(p), alpha=-lr * MUON_WEIGHT * scale)
                d = grad.add(p, alpha=wd) if wd else grad
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(m).add_(d)
                p.add_(d.add(buf, alpha=m) if nesterov else buf, alpha=-lr)
        return loss


class WarmupScheduler:
    """timm scheduler stepped per batch, plus YOLO's bias lr and momentum warmups on top.

    timm warms every group from ``warmup_lr`` up to its lr; YOLO instead starts the biases high
    (``warmup_bias_lr``) and brings them *down* to the scheduled lr over the same warmup steps, and raises the
    momentum (SGD momentum, Adam's beta1) from ``warmup_momentum`` to its value; timm has no option for either,
    so they are applied here after timm sets the lrs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int) -> None:
        s = cfg.schedule
        linear = s.sched == "linear"
        self.optimizer = optimizer
        self.warmup_steps = max(1, round(s.warmup_epochs * steps_per_epoch)) if s.warmup_epochs > 0 else 0
        self.bias_lr = s.warmup_bias_lr
        self.momentum = (s.warmup_momentum, cfg.optim.momentum) if s.warmup_momentum is not None else None
        # timm has no 'linear' decay; 'poly' with power (decay_rate) 1 is exactly linear.
        self.timm, _ = create_scheduler_v2(
            optimizer, sched="poly" if linear else "cosine", num_epochs=cfg.train.epochs,
            decay_rate=1.0 if linear else 0.1, min_lr=cfg.optim.lr * s.min_lr_ratio,
            warmup_lr=s.warmup_lr, warmup_epochs=self.warmup_steps / steps_per_epoch,
            step_on_epochs=False, updates_per_epoch=steps_per_epoch)

    def warmup_fraction(self, global_step: int) -> float:
        """How far the warmup is at this step: ``0 .. 1`` (1 when there is none or it is over)."""
        return min(1.0, global_step / self.warmup_steps) if self.warmup_steps else 1.0

    def step(self, global_step: int) -> None:
        self.timm.step_update(global_step)
        if global_step > self.warmup_steps:
            return  # past the warmup: timm's lrs stand, the momentum stays where the warmup left it
        frac = self.warmup_fraction(global_step)
        for group in self.optimizer.param_groups:
            if group.get("group") == "bias" and global_step < self.warmup_steps:
                group["lr"] = self.bias_lr + (group["initial_lr"] - self.bias_lr) * frac
            if self.momentum is not None:
                value = float(np.interp(frac, (0.0, 1.0), self.momentum))
                if "betas" in group:
                    group["betas"] = (value, group["betas"][1])
                else:
                    group["momentum"] = value

    def accumulate(self, global_step: int, target: int) -> int:
        """Batches per optimizer step at this step: YOLO ramps it from 1 to ``target`` over the warmup."""
        return max(1, math.floor(np.interp(self.warmup_fraction(global_step), (0.0, 1.0), (1, target)) + 0.5))

    def lr(self) -> float:
        groups = [g for g in self.optimizer.param_groups if g.get("group") == "decay"] or self.optimizer.param_groups
        return float(groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return self.timm.state_dict()
