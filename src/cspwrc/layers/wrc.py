"""Weighted residual connection (WRC): ``H(x) = a * F(x) + b * x`` with learnable ``a``, ``b``."""


import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["WRC_NORMALIZE", "WRC_WEIGHTS", "ScaledAdd", "WeightedResidual"]

WRC_WEIGHTS = ("scalar", "channel", "none")
WRC_NORMALIZE = ("none", "relu", "softmax")


class WeightedResidual(nn.Module):
    """Merge a residual branch and its shortcut: ``a * branch + b * shortcut``.

    The raw weights live in one parameter named ``weight`` (shape ``[2]`` for ``"scalar"``, ``[2, C]`` for
    ``"channel"``; row 0 is ``a``, row 1 is ``b``) so an owning block's attribute ``wrc`` gives the parameter name
    ``...wrc.weight``, which models list in ``no_weight_decay()`` and optimiser param-group filters can match.

    Args:
        channels: Channels ``C`` of the merged tensors (used by ``weights="channel"``).
        weights: ``"scalar"`` (one pair per block), ``"channel"`` (one pair per channel) or ``"none"`` (plain add,
            no parameters: the A/B baseline).
        normalize: ``"none"`` (raw weights), ``"relu"`` (EfficientDet fast normalised fusion
            ``w_i = relu(w_i) / (eps + sum_j relu(w_j))``) or ``"softmax"`` (softmax over the two inputs).
        eps: The ``eps`` of ``"relu"`` normalisation.
    """

    def __init__(
            self,
            channels: int,
            weights: str = "scalar",
            normalize: str = "none",
            eps: float = 1e-4,
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if weights not in WRC_WEIGHTS:
            raise ValueError(f"wrc weights must be one of {WRC_WEIGHTS}, got {weights!r}")
        if normalize not in WRC_NORMALIZE:
            raise ValueError(f"wrc normalize must be one of {WRC_NORMALIZE}, got {normalize!r}")
        self.channels = channels
        self.weights = weights
        self.normalize = normalize
        self.eps = eps
        if weights == "none":
            self.register_parameter("weight", None)
        else:
            shape = (2,) if weights == "scalar" else (2, channels)
            self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Raw weights 1: with ``normalize="none"`` a fresh block is exactly a plain residual ``F(x) + x``."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def effective_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised ``(a, b)``: 0-dim tensors (``"scalar"``, ``"none"``) or ``[C]`` (``"channel"``)."""
        w = self.weight
        if w is None:
            one = torch.ones(())
            return one, one
        if self.normalize == "relu":
            w = F.relu(w)
            w = w / (w.sum(dim=0, keepdim=True) + self.eps)
        elif self.normalize == "softmax":
            w = torch.softmax(w, dim=0)
        return w[0], w[1]

    @torch.jit.unused
    def channel_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised ``(a, b)`` expanded to ``[C]`` each, detached (for folding and inspection)."""
        a, b = self.effective_weights()
        return a.detach().expand(self.channels).clone(), b.detach().expand(self.channels).clone()

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``branch``, ``shortcut``: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        if self.weight is None:
            return branch + shortcut
        a, b = self.effective_weights()
        # [C] -> [C, 1, 1] broadcasts over [B, C, H, W]; a 0-dim weight broadcasts as it is.
        if self.weights == "channel":
            a = a.reshape(-1, 1, 1)
            b = b.reshape(-1, 1, 1)
        if torch.jit.is_scripting() or torch.jit.is_tracing() or not torch.is_grad_enabled():
            return torch.addcmul(b * shortcut, a, branch)
        return _WeightedSum.apply(a, branch, b, shortcut)

    def extra_repr(self) -> str:
        return f"{self.channels}, weights={self.weights!r}, normalize={self.normalize!r}"


class ScaledAdd(nn.Module):
    """The folded :class:`WeightedResidual`: ``branch * alpha + shortcut * beta`` with a scale only where one is left
    after folding pushed ``a``/``b`` into neighbouring convs (:meth:`cspwrc.layers.CspStage.fold`).

    ``alpha``/``beta`` are ``[C]`` buffers or ``None`` (= 1, no multiply), so a fully folded block is one add.
    """

    def __init__(self, alpha: torch.Tensor | None = None, beta: torch.Tensor | None = None) -> None:
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


def _drop_if_ones(scale: torch.Tensor | None) -> torch.Tensor | None:
    if scale is None or bool(torch.all(scale == 1)):
        return None
    return scale.detach().clone()


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``d(sum(grad * weight * x)) / d weight`` for a 0-dim or ``[C, 1, 1]`` weight."""
    fmt = _memory_format(x)
    if weight.dim() == 0 and grad.dtype == x.dtype and grad.is_contiguous(memory_format=fmt):
        return torch.dot(_flat(grad, fmt), _flat(x, fmt)).to(weight.dtype)  # no temporary tensor
    return (grad * x).sum_to_size(weight.shape).to(weight.dtype)


def _flat(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """A 1-d view of a dense tensor in memory order."""
    return (x.permute(0, 2, 3, 1) if fmt == torch.channels_last else x).reshape(-1)


class _WeightedSum(torch.autograd.Function):
    """``a * branch + b * shortcut`` with a hand-written backward for training.

    Autograd's version allocates six activation-sized tensors per merge (forward products, ``grad * branch`` and
    ``grad * shortcut`` before their reductions); this one allocates three (the output and the two input
    gradients) and reduces the weight gradients with ``dot``. On CPU fresh allocations are page-faulted in, so
    that is what the WRC costs in a training step (tools/benchmark.py --train-step).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, branch: torch.Tensor, b: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, branch, b, shortcut)
        return (shortcut * b).addcmul_(branch, a)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, branch, b, shortcut = ctx.saved_tensors
        grad = grad.contiguous(memory_format=_memory_format(branch))
        return (
            _weight_grad(grad, branch, a) if ctx.needs_input_grad[0] else None,
            (grad * a).to(branch.dtype) if ctx.needs_input_grad[1] else None,
            _weight_grad(grad, shortcut, b) if ctx.needs_input_grad[2] else None,
            (grad * b).to(shortcut.dtype) if ctx.needs_input_grad[3] else None,
        )


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a dense NHWC tensor, else the default (a non-dense tensor never takes the dot path)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
