"""Model cost: parameters and FLOPs, counted one way for the whole project.

FLOP convention: ``torch.utils.flop_counter.FlopCounterMode`` counts a multiply-add as 2 FLOPs (the same
convention as the ``2 * M * N * K`` of a matmul peak), so a model's GFLOPs and a machine's GFLOP/s compare like
with like. With it timm's ``cs3darknet_s`` features (P3-P5) are 8.9 GFLOPs at 640 px.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_params", "model_cost"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward of ``x`` (any shape the model takes; ``[B, 3, H, W]`` images for ours), under
    ``torch.inference_mode``; a multiply-add = 2 FLOPs."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, img: int) -> tuple[float, float]:
    """Params (M) and GFLOPs of one ``[1, 3, img, img]`` image through ``model`` (put in eval mode; the input is
    made on the model's device)."""
    device = next(model.parameters(), torch.empty(0)).device
    return count_params(model) / 1e6, count_flops(model.eval(), torch.zeros(1, 3, img, img, device=device)) / 1e9
