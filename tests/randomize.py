"""Test helper shared by the layer, backbone, detector and export tests: make folding checks non-trivial.

``import randomize`` works from every test folder (pyproject: pytest ``pythonpath = ["tests"]``)."""

import torch
import torch.nn as nn

from cspwrc.layers import WeightedResidual


@torch.no_grad()
def randomize_norm_and_wrc_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters and every WRC random raw weights.

    Fresh models have BN mean 0 / var 1 and WRC weights 1 (and timm zero-inits the last BN of residual branches), so
    folding would be checked on near-identity values only. Raw WRC weights are drawn in ``[-1, 2]`` so that
    ``relu`` normalisation also produces exact zeros. Returns ``model`` (modified in place).
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform_(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen) * (high - low) + low)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            uniform_(module.running_mean, -0.5, 0.5)
            uniform_(module.running_var, 0.5, 2.0)
            if module.affine:
                uniform_(module.weight, 0.5, 1.5)
                uniform_(module.bias, -0.3, 0.3)
        elif isinstance(module, WeightedResidual) and module.weight is not None:
            uniform_(module.weight, -1.0, 2.0)
    return model
