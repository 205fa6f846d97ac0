"""cspwrc.layers: WRC, CSP and SPPF blocks (built from timm layers) and inference folding (:mod:`.fold`)."""

from .blocks import MIN_PUSHED_SCALE, CspStage, Sppf, WrcBottleneck
from .fold import (
    ConvAct,
    Foldable,
    FoldableConvNormAct,
    fold_conv_norm,
    fold_model,
    scale_conv_input_,
)
from .wrc import WRC_NORMALIZE, WRC_WEIGHTS, ScaledAdd, WeightedResidual

__all__ = [
    "MIN_PUSHED_SCALE",
    "WRC_NORMALIZE",
    "WRC_WEIGHTS",
    "ConvAct",
    "CspStage",
    "Foldable",
    "FoldableConvNormAct",
    "ScaledAdd",
    "Sppf",
    "WeightedResidual",
    "WrcBottleneck",
    "fold_conv_norm",
    "fold_model",
    "scale_conv_input_",
]
