"""cspwrc.backbone: the ``cspwrc_*`` timm model family, the cs3darknet checkpoint filter and WRC inspection.

Importing it registers ``cspwrc_n/s/m/l/x`` with timm (``import cspwrc`` does).
"""

from .cspwrcnet import (
    P3_P5,
    CspWrcCfg,
    CspWrcNet,
    checkpoint_filter_fn,
    default_cfgs,
    model_cfgs,
    resolved_model_args,
)
from .inspect_wrc import WrcRow, backbone_state_dict, format_wrc_table, plot_wrc_weights, wrc_weights

__all__ = [
    "P3_P5",
    "CspWrcCfg",
    "CspWrcNet",
    "WrcRow",
    "backbone_state_dict",
    "checkpoint_filter_fn",
    "default_cfgs",
    "format_wrc_table",
    "model_cfgs",
    "plot_wrc_weights",
    "resolved_model_args",
    "wrc_weights",
]
