"""Weighted residual connection (WRC): ``H(x) = a * F(x) + b * x`` with learnable ``a``, ``b``."""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["WeightedResidual", "WRC_WEIGHTS", "WRC_NORMALIZE"]

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
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
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

    def effective_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
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
    def channel_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
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
        return torch.addcmul(b * shortcut, a, branch)  # one elementwise pass fewer than a * branch + b * shortcut

    def extra_repr(self) -> str:
        return f"{self.channels}, weights={self.weights!r}, normalize={self.normalize!r}"
