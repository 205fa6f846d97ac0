"""Detector options as earlier versions wrote them, read at the edge: the one translation to the nested shape.

Before the nested :class:`~cspwrc.det.DetectorConfig` section, every option had a flat name
(``static_assigner_epochs`` for ``loss.assigner.static_epochs``): run configs (recipe files, the config inside a
``.state.pt``) held ``model: {name: BACKBONE, options: {FLAT: value}}`` and checkpoint metadata
``{"model": BACKBONE, "options": {FLAT: value}, ...}``. Those files keep loading: :func:`upgrade_model_section` maps
such a section to the nested one. The command line and the code know only the nested spelling;
:func:`nested_spelling` names it in the message that refuses an old one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from cspwrc.errors import ConfigError
from cspwrc.validate import merge, unknown_key

__all__ = ["nested_spelling", "upgrade_model_section"]

# Old flat option -> the nested field(s) it set (``act_layer`` set the neck's and the head's).
_FLAT: dict[str, tuple[str, ...]] = {
    "pretrained": ("backbone.pretrained",),
    "pretrained_cfg_overlay": ("backbone.pretrained_cfg_overlay",),
    "backbone_kwargs": ("backbone.kwargs",),
    "freeze_bn": ("backbone.freeze_bn",),
    "freeze_stages": ("backbone.freeze_stages",),
    "sync_bn": ("sync_bn",),
    "neck_channels": ("neck.channels",),
    "neck_depth": ("neck.depth",),
    "neck_shortcut": ("neck.shortcut",),
    "neck_wrc_weights": ("neck.wrc_weights",),
    "neck_wrc_normalize": ("neck.wrc_normalize",),
    "sppf_kernel": ("neck.sppf_kernel",),
    "act_layer": ("neck.act_layer", "head.act_layer"),
    "reg_max": ("head.reg_max",),
    "prior_prob": ("head.prior_prob",),
    "cls_loss": ("loss.cls_loss",),
    "iou_loss": ("loss.iou_loss",),
    "cls_weight": ("loss.cls_weight",),
    "box_weight": ("loss.box_weight",),
    "dfl_weight": ("loss.dfl_weight",),
    "static_assigner_epochs": ("loss.assigner.static_epochs",),
    "tal_topk": ("loss.assigner.tal_topk",),
    "tal_alpha": ("loss.assigner.tal_alpha",),
    "tal_beta": ("loss.assigner.tal_beta",),
    "atss_topk": ("loss.assigner.atss_topk",),
    "min_box_side": ("loss.assigner.min_box_side",),
    "score_thresh": ("post.score_thresh",),
    "nms_iou": ("post.nms_iou",),
    "max_det": ("post.max_det",),
    "pre_nms_topk": ("post.pre_nms_topk",),
}
_OLD_KEYS = ("name", "options")


def upgrade_model_section(section: Any) -> Any:
    """An old ``model:`` section ``{name: BACKBONE, options: {FLAT: value}}`` as the nested section
    ``{backbone: {name: BACKBONE}, loss: {assigner: {static_epochs: ...}}, ...}``; anything else is returned as is.

    Keys of the nested shape beside the old ones are kept (they win), so an old state merged with today's command
    line still reads. An unknown old option is a :class:`~cspwrc.errors.ConfigError` naming the nearest one.
    """
    if not isinstance(section, Mapping) or not any(key in section for key in _OLD_KEYS):
        return section
    options = section.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"model.options: expected a mapping, got {options!r:.60}")
    nested: dict[str, Any] = {"backbone": {"name": section["name"]}} if "name" in section else {}
    for key, value in options.items():
        if key not in _FLAT:
            raise ConfigError(unknown_key(str(key), _FLAT, "detector option", shown=f"model.options.{key}"))
        for dotted in _FLAT[key]:
            *parents, leaf = dotted.split(".")
            node = nested
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = copy.deepcopy(value)
    return merge(nested, {k: v for k, v in section.items() if k not in _OLD_KEYS})


def nested_spelling(dotted: str) -> str | None:
    """``model.options.reg_max`` -> ``model.head.reg_max`` (``model.name`` -> ``model.backbone.name``); None for a
    key that is not an old spelling."""
    if dotted == "model.name":
        return "model.backbone.name"
    old = dotted.removeprefix("model.options.")
    if old == dotted:
        return None
    head, _, rest = old.partition(".")  # model.options.backbone_kwargs.wrc_normalize -> model.backbone.kwargs...
    paths = _FLAT.get(head)
    return " and ".join(f"model.{p}{'.' + rest if rest else ''}" for p in paths) if paths else "model.<section>.<key>"
