"""YOLO-style anchor-free detector on any timm backbone, in the torchvision detection convention.

Data flow: images ``[B, 3, H, W]`` in ``[0, 1]`` → normalise (backbone ``pretrained_cfg`` mean/std) → timm
``features_only`` backbone (the stride 8/16/32 levels) → :class:`~cspwrc.det.neck.YoloPan` →
:class:`~cspwrc.det.head.DecoupledHead` → decode (anchor points + DFL) →
train: :class:`~cspwrc.det.loss.DetectionLoss`; eval: :func:`~cspwrc.det.postprocess.postprocess`.

All options live in :class:`DetectorConfig`, whose fields are exactly the keyword arguments of
:func:`build_detector`, so a YAML ``model:`` section can be passed straight through, and
``build_detector(**model.config)`` rebuilds the architecture of a trained model (then load its weights).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
from torch import Tensor, nn

from cspwrc.backbone import CspWrcCfg
from cspwrc.layers import fuse_model

from .head import DecoupledHead, dfl_decode, make_anchor_points
from .loss import DetectionLoss
from .neck import YoloPan
from .postprocess import postprocess

__all__ = [
    "DetectorConfig", "YoloDetector", "RawPredictions", "build_detector", "create_feature_backbone",
    "freeze_first_levels", "select_feature_levels", "supported_backbone_kwargs",
]

LEVEL_REDUCTIONS = (8, 16, 32)

log = logging.getLogger("cspwrc.det")

# How Python names a keyword argument a constructor does not take (timm models and their cfg dataclasses alike).
_UNEXPECTED_KWARG = re.compile(r"unexpected keyword argument '(\w+)'")
# Options of the cspwrc backbones (wrc_weights, wrc_normalize, ...): dropped where a backbone does not take them.
CSPWRC_OPTIONS = frozenset(f.name for f in dataclasses.fields(CspWrcCfg))


@dataclass
class DetectorConfig:
    """Every option of :func:`build_detector` (field name = keyword argument). JSON/YAML friendly types only.

    Backbone:
        backbone: timm model name (``cspwrc_s``, ``cs3darknet_s``, ``resnet18``, ...; ``import cspwrc`` registers
            the ``cspwrc_*`` family). pretrained / pretrained_cfg_overlay: passed to ``timm.create_model``
            (``pretrained_cfg_overlay=dict(file="/path/ckpt.pth")`` loads a local file).
        backbone_kwargs: extra ``timm.create_model`` kwargs (``drop_path_rate``, ``wrc_normalize``, ...).
        freeze_bn: convert the backbone's BatchNorm to timm's ``FrozenBatchNorm2d`` / ``FrozenBatchNormAct2d``.
        freeze_stages: freeze (no grad, frozen BN) the modules that compute the first N levels of the
            backbone's ``feature_info`` (level 1 is the stem for timm CNNs: ``resnet18`` with 2 = stem + layer1).
        sync_bn: convert BatchNorm to SyncBatchNorm with timm's converter (keeps timm's fused activations).
    Neck:
        neck_channels: widths of P3-P5 (default: the backbone's, capped at 1024). neck_depth: bottlenecks per
            CSP stage (default from the P5 width). neck_shortcut / neck_wrc_weights / neck_wrc_normalize: WRC
            shortcuts in the neck's CSP stages. sppf_kernel: SPPF pool size. act_layer: neck and head activation.
    Head:
        reg_max: DFL bins per box side. prior_prob: initial class probability.
    Loss:
        cls_loss ``"bce" | "varifocal"``, iou_loss ``"ciou" | "giou"``, cls_weight / box_weight / dfl_weight,
        static_assigner_epochs (ATSS before, TAL from this epoch on), tal_topk / tal_alpha / tal_beta, atss_topk.
    Post-processing (eval mode; may be changed on ``model.cfg`` at any time):
        score_thresh, nms_iou, max_det, pre_nms_topk (see :func:`~cspwrc.det.postprocess.postprocess`).
    """

    backbone: str = "cspwrc_s"
    num_classes: int = 80
    pretrained: bool = False
    pretrained_cfg_overlay: dict[str, Any] | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_bn: bool = False
    freeze_stages: int = 0
    sync_bn: bool = False
    neck_channels: list[int] | None = None
    neck_depth: int | None = None
    neck_shortcut: bool = False
    neck_wrc_weights: str = "scalar"
    neck_wrc_normalize: str = "none"
    sppf_kernel: int = 5
    act_layer: str = "silu"
    reg_max: int = 16
    prior_prob: float = 0.01
    cls_loss: str = "bce"
    iou_loss: str = "ciou"
    cls_weight: float = 0.5
    box_weight: float = 7.5
    dfl_weight: float = 1.5
    static_assigner_epochs: int = 4
    tal_topk: int = 10
    tal_alpha: float = 0.5
    tal_beta: float = 6.0
    atss_topk: int = 9
    score_thresh: float = 0.001
    nms_iou: float = 0.6
    max_det: int = 300
    pre_nms_topk: int = 3000

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> DetectorConfig:
        """Like ``DetectorConfig(**kwargs)`` but an unknown key is a ``ValueError`` that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown detector option(s) {unknown}; valid options: {sorted(names)}")
        cfg = cls(**kwargs)
        if cfg.neck_channels is not None:
            cfg.neck_channels = [int(c) for c in cfg.neck_channels]
            if len(cfg.neck_channels) != 3:
                raise ValueError(f"neck_channels needs 3 values (P3, P4, P5), got {cfg.neck_channels}")
        return cfg


def select_feature_levels(
    reductions: Sequence[int], model_name: str = "backbone", wanted: Sequence[int] = LEVEL_REDUCTIONS
) -> list[int]:
    """Indices into a timm ``feature_info`` of the levels with the ``wanted`` reductions (the deepest one when
    several levels share a reduction). Raises ``ValueError`` when a level is missing (e.g. plain ViTs)."""
    indices = []
    for r in wanted:
        matches = [i for i, red in enumerate(reductions) if red == r]
        if not matches:
            raise ValueError(
                f"{model_name} has no feature level with reduction {r} (its reductions: {list(reductions)}); "
                f"needed: {list(wanted)}"
            )
        indices.append(matches[-1])
    return indices


def _meta_probe(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """A ``features_only`` model on the meta device (no memory, no weights) and the ``kwargs`` it accepted.

    A cspwrc option the model does not take (``wrc_normalize`` for ``resnet18``) is dropped with a logged note, so
    that the default recipe's ``backbone_kwargs`` never break another timm model. Any other unknown kwarg (a typo)
    still raises the model's own ``TypeError``.
    """
    kept = dict(kwargs)
    while True:
        try:
            with torch.device("meta"):
                return timm.create_model(name, features_only=True, pretrained=False, **kept), kept
        except TypeError as err:
            match = _UNEXPECTED_KWARG.search(str(err))
            if match is None or match.group(1) not in kept or match.group(1) not in CSPWRC_OPTIONS:
                raise
            del kept[match.group(1)]
            log.warning("note: backbone %s does not take backbone_kwargs.%s=%r; dropped (it only applies to "
                        "backbones that accept it, e.g. cspwrc_*)", name, match.group(1), kwargs[match.group(1)])


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
    ``freeze_bn`` / ``freeze_stages``: see :class:`DetectorConfig`. ``kwargs`` go to ``timm.create_model``,
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
    ``stages_0``), so names are compared with dots replaced by underscores. Modules are visited in registration
    order (= forward order for timm CNNs) up to the end of the last frozen level's module.
    """
    if num_levels <= 0:
        return
    info = backbone.feature_info.info
    if num_levels > len(info):
        raise ValueError(f"freeze_stages={num_levels} but the backbone has only {len(info)} feature levels")
    target = info[num_levels - 1]["module"].replace(".", "_")
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
        if found is None and name.replace(".", "_") == target:
            found = name
    if found is None:
        raise ValueError(f"freeze_stages: module {info[num_levels - 1]['module']!r} not found in the backbone")
    # Frozen BN keeps its running statistics fixed too (a BN in train mode would still update them).
    for name in frozen:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        module = getattr(parent, child)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            setattr(parent, child, freeze_batch_norm_2d(module))


class YoloDetector(nn.Module):
    """Anchor-free YOLO-style detector; build it with :func:`build_detector`.

    * ``model.train(); model(images, targets)`` → ``{"loss_cls", "loss_box", "loss_dfl", "loss"}`` (weighted;
      ``loss`` is their sum, the one to back-propagate).
    * ``model.eval(); model(images)`` → per image ``{"boxes" [K, 4] xyxy input pixels, "scores" [K], "labels" [K]}``.
    * ``model.forward_raw(images)`` → ``[B, A, 4 + C]`` decoded boxes + class probabilities, no NMS (export path).

    ``images``: float ``[B, 3, H, W]`` in ``[0, 1]``, ``H`` and ``W`` multiples of 32.
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        # The saved config (``model.config``) keeps only the backbone options that were applied.
        cfg = dataclasses.replace(cfg, backbone_kwargs=supported_backbone_kwargs(cfg.backbone, cfg.backbone_kwargs))
        self.cfg = cfg
        self.backbone = create_feature_backbone(
            cfg.backbone,
            LEVEL_REDUCTIONS,
            pretrained=cfg.pretrained,
            pretrained_cfg_overlay=cfg.pretrained_cfg_overlay,
            freeze_bn=cfg.freeze_bn,
            freeze_stages=cfg.freeze_stages,
            **cfg.backbone_kwargs,
        )
        backbone_channels = self.backbone.feature_info.channels()
        self.strides = tuple(self.backbone.feature_info.reduction())
        pcfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = pcfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)
        std = pcfg.get("std", timm.data.IMAGENET_DEFAULT_STD)
        # Non-persistent: they follow the backbone name, not the checkpoint.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.neck = YoloPan(
            backbone_channels,
            cfg.neck_channels,
            cfg.neck_depth,
            shortcut=cfg.neck_shortcut,
            wrc_weights=cfg.neck_wrc_weights,
            wrc_normalize=cfg.neck_wrc_normalize,
            sppf_kernel=cfg.sppf_kernel,
            act_layer=cfg.act_layer,
        )
        self.head = DecoupledHead(
            self.neck.out_channels,
            cfg.num_classes,
            strides=self.strides,
            reg_max=cfg.reg_max,
            prior_prob=cfg.prior_prob,
            act_layer=cfg.act_layer,
        )
        self.criterion = DetectionLoss(
            cfg.num_classes,
            reg_max=cfg.reg_max,
            cls_loss=cfg.cls_loss,
            iou_loss=cfg.iou_loss,
            cls_weight=cfg.cls_weight,
            box_weight=cfg.box_weight,
            dfl_weight=cfg.dfl_weight,
            static_assigner_epochs=cfg.static_assigner_epochs,
            tal_topk=cfg.tal_topk,
            tal_alpha=cfg.tal_alpha,
            tal_beta=cfg.tal_beta,
            atss_topk=cfg.atss_topk,
        )
        if cfg.sync_bn:
            for name in ("backbone", "neck", "head"):
                setattr(self, name, convert_sync_batchnorm(getattr(self, name)))

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable options that rebuild this architecture: ``build_detector(**model.config)``.

        Weight-loading and training-only options are reset (``pretrained=False``, no ``pretrained_cfg_overlay``,
        ``sync_bn=False``): a checkpoint's weights are loaded after building, and the state dict keys do not
        depend on them.
        """
        cfg = dataclasses.asdict(self.cfg)
        cfg.update(pretrained=False, pretrained_cfg_overlay=None, sync_bn=False)
        return cfg

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the current (0-based) epoch: ATSS while ``epoch < static_assigner_epochs``, then TAL."""
        self.criterion.epoch = int(epoch)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Head outputs per level ``[B, 4 * reg_max + C, H / s, W / s]`` for strides ``s`` = 8, 16, 32."""
        x = (images - self.pixel_mean) / self.pixel_std
        return self.head(self.neck(self.backbone(x)))

    def _decode(self, outs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        box_logits, cls_logits = self.head.flatten(outs)
        points, stride_per_point = make_anchor_points(
            [tuple(o.shape[-2:]) for o in outs], self.strides, device=outs[0].device, dtype=box_logits.dtype
        )
        boxes = dfl_decode(box_logits, points, stride_per_point)
        return box_logits, cls_logits, boxes, points, stride_per_point

    def forward_raw(self, images: Tensor) -> Tensor:
        """Decoded predictions without NMS: ``[B, A, 4 + C]``.

        ``A = (H/8 * W/8) + (H/16 * W/16) + (H/32 * W/32)`` anchor points; per point ``x1, y1, x2, y2`` in
        input-image pixels, then ``C`` class probabilities (sigmoid applied). To get detections, the caller runs
        :func:`cspwrc.det.postprocess.postprocess` (score threshold per (point, class), class-aware NMS, top
        ``max_det``), then :func:`~cspwrc.det.postprocess.undo_letterbox` for original-image coordinates.
        """
        _, cls_logits, boxes, _, _ = self._decode(self.forward_features(images))
        return torch.cat((boxes, cls_logits.sigmoid()), -1)

    def forward(
        self, images: Tensor, targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in train mode (``targets`` required), detections in eval mode (see class docstring)."""
        if self.training:
            if targets is None:
                raise ValueError("YoloDetector in train mode needs targets (list of dicts with boxes and labels)")
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {images.shape[0]} images but {len(targets)} targets")
            outs = self.forward_features(images)
            box_logits, cls_logits, boxes, points, stride_per_point = self._decode(outs)
            counts = [o.shape[-2] * o.shape[-1] for o in outs]
            return self.criterion(cls_logits, box_logits, boxes, points, stride_per_point, counts, targets)
        raw = self.forward_raw(images)
        return postprocess(
            raw,
            score_thresh=self.cfg.score_thresh,
            nms_iou=self.cfg.nms_iou,
            max_det=self.cfg.max_det,
            pre_nms_topk=self.cfg.pre_nms_topk,
            image_size=(images.shape[-2], images.shape[-1]),
        )

    def fuse(self) -> YoloDetector:
        """Fold BatchNorm (and WRC weights) into convs for inference, in place; puts the model in eval mode.

        Equivalent to ``timm.utils.reparameterize_model`` plus folding of any remaining timm ``ConvNormAct``
        (:func:`cspwrc.layers.fuse_model`). A fused model can no longer be trained.
        """
        self.eval()
        for name in ("backbone", "neck", "head"):
            setattr(self, name, fuse_model(getattr(self, name), inplace=True))
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


def build_detector(backbone: str = "cspwrc_s", num_classes: int = 80, **opts: Any) -> YoloDetector:
    """Build a :class:`YoloDetector`; ``opts`` are the other :class:`DetectorConfig` fields.

    Example: ``build_detector("cs3darknet_s", num_classes=3, pretrained=True, static_assigner_epochs=2)``.
    """
    return YoloDetector(DetectorConfig.from_kwargs(backbone=backbone, num_classes=num_classes, **opts))
