"""cspwrc.layers: WRC, residual, CSP and SPPF blocks (built from timm layers) and inference folding helpers."""

from .blocks import MIN_PUSHED_SCALE, CspStage, ResidualBlock, Sppf, WrcBottleneck
from .fuse import (
    ConvAct,
    FusableConvNormAct,
    ScaledAdd,
    fold_conv_bn,
    fuse_conv_norm,
    fuse_model,
    scale_conv_input_,
    scale_conv_output_,
)
from .testing import randomize_norm_and_wrc_
from .wrc import WRC_NORMALIZE, WRC_WEIGHTS, WeightedResidual

__all__ = [
    "WeightedResidual", "WRC_WEIGHTS", "WRC_NORMALIZE", "ResidualBlock", "WrcBottleneck", "CspStage", "Sppf",
    "MIN_PUSHED_SCALE", "ConvAct", "FusableConvNormAct", "ScaledAdd", "fold_conv_bn", "fuse_conv_norm", "fuse_model",
    "scale_conv_input_", "scale_conv_output_", "randomize_norm_and_wrc_",
]
