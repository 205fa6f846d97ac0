"""YOLO-style anchor-free detector on any timm backbone, in the torchvision detection convention.

Data flow: images ``[B, 3, H, W]`` in ``[0, 1]`` → normalise (backbone ``pretrained_cfg`` mean/std) → timm
``features_only`` backbone (the stride 8/16/32 levels) → :class:`~cspwrc.det.neck.YoloPan` →
:class:`~cspwrc.det.head.DecoupledHead` → decode (anchor points + DFL) →
train: :class:`~cspwrc.det.loss.DetectionLoss`; eval: :func:`~cspwrc.det.postprocess.postprocess`.

All options live in :class:`DetectorConfig`, one small config per part, in one nested spelling everywhere:
:func:`build_detector` takes the config or its sections as nested keyword arguments, so a YAML ``model:`` section
passes straight through (``build_detector(**section, num_classes=n)``) and
``build_detector(**model.config, num_classes=model.num_classes)`` rebuilds the architecture of a trained model (then
load its weights).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
from torch import Tensor, nn

from cspwrc.backbone import CspWrcCfg, CspWrcNet, resolved_model_args
from cspwrc.errors import ConfigError
from cspwrc.layers import Foldable, fold_model
from cspwrc.validate import Fault, build_dataclass, check_value, merge, nearest, require
from cspwrc.weights import feature_key

from .head import DecoupledHead, HeadCfg, HeadOutputs
from .loss import DetectionLoss, LossCfg
from .neck import NeckCfg, YoloPan
from .postprocess import PostprocessCfg, postprocess, topk_detections

__all__ = [
    "BackboneCfg",
    "DetectorConfig",
    "RawPredictions",
    "YoloDetector",
    "build_detector",
    "check_backbone",
    "create_feature_backbone",
    "freeze_first_levels",
    "select_feature_levels",
    "supported_backbone_kwargs",
]

LEVEL_REDUCTIONS = (8, 16, 32)

log = logging.getLogger("cspwrc.det")

# How Python names a keyword argument a constructor does not take (timm models and their cfg dataclasses alike).
_UNEXPECTED_KWARG = re.compile(r"unexpected keyword argument '(\w+)'")
# Options of the cspwrc backbones (wrc_weights, wrc_normalize, ...): dropped where a backbone does not take them.
CSPWRC_OPTIONS = frozenset(f.name for f in dataclasses.fields(CspWrcCfg))
# What a misspelt backbone kwarg is matched against for a "did you mean": the cspwrc options and the keyword
# arguments of CspWrcNet, which are timm's common ones (drop_path_rate, output_stride, in_chans, ...).
KNOWN_BACKBONE_KWARGS = sorted(CSPWRC_OPTIONS | (set(inspect.signature(CspWrcNet).parameters) - {"cfg", "kwargs"}))


@dataclass
class BackboneCfg:
    """The timm feature backbone (:func:`create_feature_backbone`).

    Attributes:
        name: timm model name (``cspwrc_s``, ``cs3darknet_s``, ``resnet18``, ...; ``import cspwrc`` registers
            the ``cspwrc_*`` family).
        pretrained / pretrained_cfg_overlay: passed to ``timm.create_model``
            (``pretrained_cfg_overlay=dict(file="/path/ckpt.pth")`` loads a local file).
        kwargs: extra ``timm.create_model`` kwargs (``drop_path_rate``, ``wrc_normalize``, ...).
        model_args: every architecture field the backbone was built with (timm's ``model_args``), kwargs to
            ``timm.create_model`` under ``kwargs``. A built detector fills it in for the backbones that declare their
            architecture (``cspwrc_*``: :func:`cspwrc.backbone.resolved_model_args`), so ``model.config`` and every
            checkpoint record the layout itself, not only the registered name: a later change of the registered
            defaults does not change (or break) a saved model. ``None`` (files of earlier versions, a new config):
            the registered defaults.
        freeze_bn: convert the backbone's BatchNorm to timm's ``FrozenBatchNorm2d`` / ``FrozenBatchNormAct2d``.
        freeze_stages: freeze (no grad, frozen BN) the modules that compute the first N levels of the
            backbone's ``feature_info`` (level 1 is the stem for timm CNNs: ``resnet18`` with 2 = stem + layer1).
    """

    name: str = "cspwrc_s"
    pretrained: bool = False
    pretrained_cfg_overlay: dict[str, Any] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] | None = None
    freeze_bn: bool = False
    freeze_stages: int = 0

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "a timm model name", self.name)
        require(self.freeze_stages >= 0, "freeze_stages", ">= 0 (0: nothing frozen)", self.freeze_stages)


@dataclass
class DetectorConfig:
    """The detector's options, one small config per part (as timm's ``CspModelCfg`` nests ``CspStagesCfg``).

    Each default is stated once, in the part's config: :class:`BackboneCfg`, :class:`~cspwrc.det.neck.NeckCfg`,
    :class:`~cspwrc.det.head.HeadCfg`, :class:`~cspwrc.det.loss.LossCfg` (with
    :class:`~cspwrc.det.assigner.AssignerCfg`) and :class:`~cspwrc.det.postprocess.PostprocessCfg`. The same nesting
    is the YAML ``model:`` section of a run config, ``--set model.loss.assigner.static_epochs=2``, ``model.config``
    and a checkpoint's ``model`` metadata (:meth:`from_dict` reads them all, ``dataclasses.asdict`` writes them).
    ``post`` may be changed on a built model at any time (``model.cfg.post.score_thresh = 0.25``). ``sync_bn``
    converts BatchNorm to SyncBatchNorm with timm's converter (keeps timm's fused activations). The class count is
    not an option: it comes with the data (:class:`YoloDetector`'s ``num_classes``).
    """

    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    neck: NeckCfg = field(default_factory=NeckCfg)
    head: HeadCfg = field(default_factory=HeadCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    post: PostprocessCfg = field(default_factory=PostprocessCfg)
    sync_bn: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "detector config") -> DetectorConfig:
        """The config a nested mapping describes (missing keys keep their defaults).

        Built by :func:`cspwrc.validate.build_dataclass`: an unknown key (with the nearest valid one), a wrong type
        or a value out of range is a :class:`~cspwrc.errors.ConfigError` (a ``ValueError``) naming ``where`` and the
        dotted key.
        """
        try:
            return build_dataclass(cls, data)
        except Fault as fault:
            raise ConfigError(f"{where}: {fault}") from None


def select_feature_levels(
    reductions: Sequence[int], model_name: str = "backbone", wanted: Sequence[int] = LEVEL_REDUCTIONS
) -> list[int]:
    """Indices into a timm ``feature_info`` of the levels with the ``wanted`` reductions (the deepest one when
    several levels share a reduction). Raises :class:`~cspwrc.errors.ConfigError` (a ``ValueError``) when a level is
    missing (e.g. plain ViTs)."""
    indices = []
    for r in wanted:
        matches = [i for i, red in enumerate(reductions) if red == r]
        if not matches:
            raise ConfigError(
                f"{model_name} has no feature level with reduction {r} (its reductions: {list(reductions)}); "
                f"needed: {list(wanted)}"
            )
        indices.append(matches[-1])
    return indices


def _meta_probe(name: str, kwargs: dict[str, Any], note: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """A ``features_only`` model on the meta device (no memory, no weights) and the ``kwargs`` it accepted.

    A cspwrc option the model does not take (``wrc_normalize`` for ``resnet18``) is dropped with a logged note (unless
    ``note=False``), so that the default recipe's ``backbone.kwargs`` never break another timm model. Any other kwarg
    the model refuses (a typo, a bad value) is a :class:`~cspwrc.errors.ConfigError` naming ``backbone.kwargs``.
    """
    kept = dict(kwargs)
    while True:
        try:
            with torch.device("meta"):
                return timm.create_model(name, features_only=True, pretrained=False, **kept), kept
        except TypeError as err:
            match = _UNEXPECTED_KWARG.search(str(err))
            if match is not None and match.group(1) in kept and match.group(1) not in CSPWRC_OPTIONS:
                close = nearest(match.group(1), KNOWN_BACKBONE_KWARGS)
                hint = f"; did you mean {close!r}?" if close else ""
                raise ConfigError(f"backbone.kwargs: {name} takes no {match.group(1)!r}{hint}") from None
            if match is None or match.group(1) not in kept:
                raise ConfigError(f"backbone.kwargs: {name} refuses {kept}: {err}") from None
            del kept[match.group(1)]
            if note:
                log.warning("note: backbone %s does not take model.backbone.kwargs.%s=%r; dropped (it only applies "
                            "to backbones that accept it, e.g. cspwrc_*)", name, match.group(1), kwargs[match.group(1)])
        except ValueError as err:  # e.g. a cspwrc option with a value its config refuses
            raise ConfigError(f"backbone.kwargs: {name} refuses {kept}: {err}") from None


def check_backbone(cfg: BackboneCfg) -> None:
    """The backbone probe of a config (meta device: no memory, no weights, no download): the model takes
    ``cfg.kwargs``, has the stride 8/16/32 levels and at least ``cfg.freeze_stages`` levels. A
    :class:`~cspwrc.errors.ConfigError` names the key (``backbone.freeze_stages: ...``); the run config checks this
    before any image is read."""
    probe, _ = _meta_probe(cfg.name, {**(cfg.model_args or {}), **cfg.kwargs}, note=False)
    reductions = probe.feature_info.reduction()
    try:
        select_feature_levels(reductions, cfg.name)
    except ConfigError as err:
        raise ConfigError(f"backbone.name: {err} (the detector's neck needs those strides)") from None
    require(cfg.freeze_stages <= len(reductions), "backbone.freeze_stages",
            f"at most {len(reductions)} ({cfg.name} has {len(reductions)} feature levels; 1 = the stem)",
            cfg.freeze_stages)


def supported_backbone_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``timm.create_model(name, ...)`` accepts (the rest is dropped with a note)."""
    return _meta_probe(name, kwargs)[1]


def create_feature_backbone(
    name: str,
    reductions: Sequence[int] = LEVEL_REDUCTIONS,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    freeze_bn: bool = False,
    freeze_stages: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """timm ``features_only`` model returning the levels with the given ``reductions`` (strides), in that order.

    The levels are found from ``feature_info`` of a probe built on the meta device (no memory, no weights), so
    the real model is created (and pretrained weights loaded) once, with exactly those ``out_indices``.
    ``freeze_bn`` / ``freeze_stages``: see :class:`BackboneCfg`. ``kwargs`` go to ``timm.create_model``,
    those the model does not accept are dropped with a logged note (:func:`supported_backbone_kwargs`).
    """
    probe, kwargs = _meta_probe(name, kwargs)
    indices = select_feature_levels(probe.feature_info.reduction(), name, reductions)
    if pretrained_cfg_overlay:
        kwargs["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)
    backbone = timm.create_model(name, features_only=True, out_indices=tuple(indices), pretrained=pretrained, **kwargs)
    if freeze_bn:
        backbone = freeze_batch_norm_2d(backbone)
    freeze_first_levels(backbone, freeze_stages)
    return backbone


def freeze_first_levels(backbone: nn.Module, num_levels: int) -> None:
    """Freeze the modules that compute feature levels ``0 .. num_levels - 1`` of ``backbone.feature_info``.

    timm feature wrappers keep the original modules in forward order but may flatten names (``stages.0`` →
    ``stages_0``), so names are compared by :func:`cspwrc.weights.feature_key`. Modules are visited in registration
    order (= forward order for timm CNNs) up to the end of the last frozen level's module.
    """
    if num_levels <= 0:
        return
    info = backbone.feature_info.info
    require(num_levels <= len(info), "freeze_stages", f"<= {len(info)}, the backbone's feature levels", num_levels)
    target = feature_key(info[num_levels - 1]["module"])
    frozen: list[str] = []
    found: str | None = None
    for name, module in backbone.named_modules():
        if not name:
            continue
        if found is not None and not name.startswith(found + "."):
            break
        frozen.append(name)
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        if found is None and feature_key(name) == target:
            found = name
    if found is None:
        raise ConfigError(f"freeze_stages: module {info[num_levels - 1]['module']!r} not found in the backbone")
    # Frozen BN keeps its running statistics fixed too (a BN in train mode would still update them).
    for name in frozen:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        module = getattr(parent, child)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            setattr(parent, child, freeze_batch_norm_2d(module))


class YoloDetector(Foldable, nn.Module):
    """Anchor-free YOLO-style detector; build it with :func:`build_detector`.

    * ``model.train(); model(images, targets)`` → ``{"loss_cls", "loss_box", "loss_dfl", "loss"}`` (weighted;
      ``loss`` is their sum, the one to back-propagate).
    * ``model.eval(); model(images)`` → per image ``{"boxes" [K, 4] xyxy input pixels, "scores" [K], "labels" [K]}``.
    * ``model.forward_raw(images)`` → ``[B, A, 4 + C]`` decoded boxes + class probabilities, no NMS (export path).

    ``images``: float ``[B, 3, H, W]`` in ``[0, 1]``, ``H`` and ``W`` multiples of 32.
    """

    def __init__(self, cfg: DetectorConfig, num_classes: int = 80) -> None:
        super().__init__()
        try:
            num_classes = check_value(num_classes, int)
        except Fault as fault:
            raise ConfigError(f"num_classes: {fault}") from None
        if num_classes < 1:
            raise ConfigError(f"num_classes: must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        # The saved config (``model.config``) keeps only the backbone options that were applied, and the resolved
        # architecture (BackboneCfg.model_args).
        bcfg = cfg.backbone
        kwargs = supported_backbone_kwargs(bcfg.name, {**(bcfg.model_args or {}), **bcfg.kwargs})
        bcfg = dataclasses.replace(bcfg, kwargs={k: v for k, v in kwargs.items() if k in bcfg.kwargs},
                                   model_args=resolved_model_args(bcfg.name, kwargs) or bcfg.model_args)
        self.cfg = cfg = dataclasses.replace(cfg, backbone=bcfg)
        self.backbone = create_feature_backbone(
            bcfg.name,
            LEVEL_REDUCTIONS,
            pretrained=bcfg.pretrained,
            pretrained_cfg_overlay=bcfg.pretrained_cfg_overlay,
            freeze_bn=bcfg.freeze_bn,
            freeze_stages=bcfg.freeze_stages,
            **kwargs,
        )
        backbone_channels = self.backbone.feature_info.channels()
        self.strides = tuple(self.backbone.feature_info.reduction())
        pcfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = pcfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)
        std = pcfg.get("std", timm.data.IMAGENET_DEFAULT_STD)
        # Non-persistent: they follow the backbone name, not the checkpoint.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.neck = YoloPan(backbone_channels, cfg.neck)
        self.head = DecoupledHead(self.neck.out_channels, num_classes, strides=self.strides, cfg=cfg.head)
        self.criterion = DetectionLoss(num_classes, reg_max=cfg.head.reg_max, cfg=cfg.loss)
        if cfg.sync_bn:
            for name in ("backbone", "neck", "head"):
                setattr(self, name, convert_sync_batchnorm(getattr(self, name)))

    @property
    def config(self) -> dict[str, Any]:
        """The :class:`DetectorConfig` as a JSON-serialisable nested dict (``dataclasses.asdict``) that rebuilds this
        architecture: ``build_detector(**model.config, num_classes=model.num_classes)``.

        Weight-loading and training-only options are reset (``backbone.pretrained=False``, no
        ``backbone.pretrained_cfg_overlay``, ``sync_bn=False``): a checkpoint's weights are loaded after building, and
        the state dict keys do not depend on them.
        """
        backbone = dataclasses.replace(self.cfg.backbone, pretrained=False, pretrained_cfg_overlay=None)
        return dataclasses.asdict(dataclasses.replace(self.cfg, backbone=backbone, sync_bn=False))

    @property
    def end2end(self) -> bool:
        """Predicts with the one-to-one branch and no NMS (``cfg.head.end2end``)."""
        return self.head.end2end

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None:
        """Tell the loss the current (0-based) epoch and, when known, the run's epochs: ATSS while
        ``epoch < cfg.loss.assigner.static_epochs``, then TAL; an end-to-end head's one-to-many weight."""
        self.criterion.epoch = int(epoch)
        if epochs is not None:
            self.criterion.epochs = int(epochs)

    def _neck(self, images: Tensor) -> list[Tensor]:
        x = (images - self.pixel_mean) / self.pixel_std
        return self.neck(self.backbone(x))

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Head outputs per level ``[B, 4 * reg_max + C, H / s, W / s]`` for strides ``s`` = 8, 16, 32: of the branch
        that predicts (the one-to-one branch of an end-to-end head)."""
        feats = self._neck(images)
        return self.head.one2one(feats) if self.end2end else self.head(feats)

    def train_outputs(self, images: Tensor) -> list[HeadOutputs]:
        """What the loss takes: the one-to-many branch's decoded outputs, then (end-to-end head) the one-to-one
        branch's, computed on detached neck features (YOLO26: only the one-to-many loss trains backbone and neck)."""
        feats = self._neck(images)
        outputs = [self.head.decode(self.head(feats))]
        if self.end2end:
            outputs.append(self.head.decode(self.head.one2one([f.detach() for f in feats])))
        return outputs

    def compute_loss(self, outputs: Sequence[HeadOutputs], targets: Sequence[dict[str, Tensor]],
                     image_size: tuple[int, int]) -> dict[str, Tensor]:
        """The weighted losses of :meth:`train_outputs` (an end-to-end head: :meth:`DetectionLoss.end_to_end`)."""
        losses = self.criterion(outputs[0], targets, image_size)
        if len(outputs) == 1:
            return losses
        return self.criterion.end_to_end(losses, self.criterion(outputs[1], targets, image_size, one2one=True))

    def forward_raw(self, images: Tensor) -> Tensor:
        """Decoded predictions without NMS: ``[B, A, 4 + C]``.

        ``A = (H/8 * W/8) + (H/16 * W/16) + (H/32 * W/32)`` anchor points; per point ``x1, y1, x2, y2`` in
        input-image pixels, then ``C`` class probabilities (sigmoid applied). To get detections, the caller runs
        :func:`cspwrc.det.postprocess.postprocess` (score threshold per (point, class), class-aware NMS, top
        ``max_det``), or for an end-to-end head :func:`~cspwrc.det.postprocess.topk_detections` (no NMS), then
        :func:`~cspwrc.det.postprocess.undo_letterbox` for original-image coordinates.
        """
        pred = self.head.decode(self.forward_features(images))
        return torch.cat((pred.boxes, pred.cls_logits.sigmoid()), -1)

    def detections(self, raw: Tensor, image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """``forward_raw``'s output -> per image detections (NMS, or the top ``max_det`` of an end-to-end head)."""
        post = self.cfg.post
        if self.end2end:
            return topk_detections(raw, post.score_thresh, post.max_det, image_size)
        return postprocess(raw, **dataclasses.asdict(post), image_size=image_size)

    def forward(
        self, images: Tensor, targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in train mode (``targets`` required), detections in eval mode (see class docstring)."""
        if self.training:
            if targets is None:
                raise ValueError("YoloDetector in train mode needs targets (list of dicts with boxes and labels)")
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {images.shape[0]} images but {len(targets)} targets")
            return self.compute_loss(self.train_outputs(images), targets, (images.shape[-2], images.shape[-1]))
        return self.detections(self.forward_raw(images), (images.shape[-2], images.shape[-1]))

    def fold(self) -> YoloDetector:
        """Fold BatchNorm (and WRC weights) into convs for inference, in place; puts the model in eval mode.

        :func:`cspwrc.layers.fold_model` on the backbone, neck and head (``timm.utils.reparameterize_model`` plus
        any remaining timm ``ConvNormAct``). ``model.fuse()`` is the same (timm's name). A folded model can no
        longer be trained.
        """
        self.eval()
        for name in ("backbone", "neck", "head"):
            setattr(self, name, fold_model(getattr(self, name), inplace=True))
        return self


class RawPredictions(nn.Module):
    """Export wrapper whose ``forward(images)`` is ``detector.forward_raw(images)`` → ``[B, A, 4 + C]``.

    For ``torch.jit.trace`` / ``torch.onnx.export`` (which trace ``forward``). The traced graph is fixed to the
    traced input's ``H, W`` (anchor points become constants); the batch dimension may stay dynamic.
    """

    def __init__(self, detector: YoloDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tensor:
        return self.detector.forward_raw(images)


def build_detector(
    backbone: str | Mapping[str, Any] | BackboneCfg | None = None,
    num_classes: int = 80,
    *,
    cfg: DetectorConfig | None = None,
    **sections: Any,
) -> YoloDetector:
    """Build a :class:`YoloDetector` from a :class:`DetectorConfig` and/or its sections as nested keyword arguments.

    ``backbone`` is the backbone's timm name (the common case) or its whole section; ``sections`` are the other
    fields of :class:`DetectorConfig` (``neck``, ``head``, ``loss``, ``post`` as mappings or part configs,
    ``sync_bn``), merged key by key over ``cfg`` (default: all defaults). Examples::

        build_detector("cspwrc_s", num_classes=3)
        build_detector({"name": "cspwrc_s", "kwargs": {"wrc_normalize": "relu"}}, num_classes=3)
        build_detector("cspwrc_n", 3, head={"reg_max": 8}, loss={"assigner": {"static_epochs": 2}})
        build_detector(cfg=DetectorConfig(neck=NeckCfg(channels=[64, 128, 256])), num_classes=3)
        build_detector(**model.config, num_classes=model.num_classes)      # rebuild a trained architecture

    A wrong key, type or value is a :class:`~cspwrc.errors.ConfigError` naming the dotted key.
    """
    if backbone is not None:
        sections["backbone"] = {"name": backbone} if isinstance(backbone, str) else backbone
    over = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections.items()}
    base = dataclasses.asdict(cfg) if cfg is not None else {}
    return YoloDetector(DetectorConfig.from_dict(merge(base, over), "build_detector"), num_classes)
