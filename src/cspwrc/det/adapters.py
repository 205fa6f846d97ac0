"""Use a cspwrc (or any timm) backbone in torchvision's detectors: FCOS, RetinaNet and Faster R-CNN.

:class:`TimmBackboneWithFPN` is the timm counterpart of ``torchvision.models.detection.backbone_utils.BackboneWithFPN``:
a timm ``features_only`` body, a :class:`torchvision.ops.FeaturePyramidNetwork`, and ``out_channels``, which is
all torchvision's detectors ask of a backbone. The builders below follow torchvision's own ResNet-50-FPN
recipes, with the anchors derived from the backbone's real strides and the image normalisation from the timm
model's ``pretrained_cfg`` (torchvision's ``GeneralizedRCNNTransform`` normalises; inputs are float ``[0, 1]``):

=============  ====================  ==============================  ==================================
detector       body levels (stride)  FPN extra levels                anchors per level (base = stride)
=============  ====================  ==============================  ==================================
FCOS           8, 16, 32             P6, P7 from P5 (LastLevelP6P7)  one box of side ``stride``
RetinaNet      8, 16, 32             P6, P7 from P5 (LastLevelP6P7)  ``4 * stride * 2**(i/3)``, 3 ratios
Faster R-CNN   4, 8, 16, 32          max-pool P6 (LastLevelMaxPool)  ``8 * stride``, 3 ratios
=============  ====================  ==============================  ==================================
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from .detector import create_feature_backbone

__all__ = [
    "TimmBackboneWithFPN",
    "fasterrcnn_timm",
    "fcos_timm",
    "normalization",
    "retinanet_timm",
    "timm_fpn_backbone",
]


class TimmBackboneWithFPN(nn.Module):
    """timm ``features_only`` body + torchvision FPN.

    Args:
        body: a timm ``features_only`` model (``feature_info`` gives its channels and strides).
        out_channels: FPN width.
        extra_blocks: torchvision ``ExtraFPNBlock`` (``LastLevelP6P7``, ``LastLevelMaxPool``) or ``None``.

    ``forward(images [B, 3, H, W])`` → ``OrderedDict`` ``"0", "1", ...`` (body levels, finest first) plus the
    extra block's names (``"p6", "p7"`` or ``"pool"``), each ``[B, out_channels, H / s, W / s]``.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None) -> None:
        super().__init__()
        self.body = body
        self.strides = tuple(body.feature_info.reduction())
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = OrderedDict((str(i), f) for i, f in enumerate(self.body(x)))
        return self.fpn(feats)


def timm_fpn_backbone(
    name: str = "cspwrc_s",
    reductions: Sequence[int] = (8, 16, 32),
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    pretrained: bool = False,
    **backbone_opts: Any,
) -> TimmBackboneWithFPN:
    """Wrap any timm model as a torchvision detection backbone (``out_channels`` attribute, dict of FPN maps).

    ``backbone_opts``: ``pretrained_cfg_overlay``, ``freeze_bn``, ``freeze_stages`` and ``timm.create_model``
    kwargs, as in :func:`cspwrc.det.detector.create_feature_backbone`.
    """
    body = create_feature_backbone(name, reductions, pretrained=pretrained, **backbone_opts)
    return TimmBackboneWithFPN(body, out_channels, extra_blocks)


def normalization(backbone: TimmBackboneWithFPN) -> dict[str, list[float]]:
    """``image_mean`` / ``image_std`` for torchvision's transform, from the timm model's ``pretrained_cfg``."""
    cfg = backbone.body.pretrained_cfg
    return {"image_mean": list(cfg["mean"]), "image_std": list(cfg["std"])}


def _level_strides(backbone: TimmBackboneWithFPN, extra: int) -> list[int]:
    # Each extra FPN level (P6, P7 or the max-pool level) halves the resolution once more.
    strides = list(backbone.strides)
    return strides + [strides[-1] * 2 ** (i + 1) for i in range(extra)]


def fcos_timm(
    name: str = "cspwrc_s", num_classes: int = 91, out_channels: int = 256, backbone_opts: dict | None = None,
    **detector_kwargs: Any,
) -> FCOS:
    """torchvision FCOS on a timm backbone: P3-P5 from the body, P6-P7 from P5, one anchor of side = stride.

    ``detector_kwargs`` go to ``torchvision.models.detection.FCOS`` (``min_size``, ``max_size``, thresholds...).
    """
    backbone = timm_fpn_backbone(
        name, (8, 16, 32), out_channels, LastLevelP6P7(out_channels, out_channels), **(backbone_opts or {})
    )
    strides = _level_strides(backbone, 2)
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    return FCOS(backbone, num_classes, anchor_generator=anchors, **{**normalization(backbone), **detector_kwargs})


def retinanet_timm(
    name: str = "cspwrc_s", num_classes: int = 91, out_channels: int = 256, backbone_opts: dict | None = None,
    **detector_kwargs: Any,
) -> RetinaNet:
    """torchvision RetinaNet on a timm backbone: P3-P7, anchors ``4 * stride * {2**0, 2**(1/3), 2**(2/3)}`` with
    aspect ratios 0.5, 1, 2 (torchvision's retinanet_resnet50_fpn sizes 32..512 for strides 8..128)."""
    backbone = timm_fpn_backbone(
        name, (8, 16, 32), out_channels, LastLevelP6P7(out_channels, out_channels), **(backbone_opts or {})
    )
    strides = _level_strides(backbone, 2)
    sizes = tuple(tuple(int(4 * s * 2 ** (i / 3)) for i in range(3)) for s in strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
    return RetinaNet(backbone, num_classes, anchor_generator=anchors, **{**normalization(backbone), **detector_kwargs})


def fasterrcnn_timm(
    name: str = "cspwrc_s", num_classes: int = 91, out_channels: int = 256, backbone_opts: dict | None = None,
    **detector_kwargs: Any,
) -> FasterRCNN:
    """torchvision Faster R-CNN on a timm backbone: P2-P5 from the body plus a max-pooled P6, anchors
    ``8 * stride`` with aspect ratios 0.5, 1, 2 (fasterrcnn_resnet50_fpn: 32..512 for strides 4..64); the RoI
    pooler reads P2-P5 (``"0".."3"``, torchvision's default ``MultiScaleRoIAlign``)."""
    backbone = timm_fpn_backbone(name, (4, 8, 16, 32), out_channels, LastLevelMaxPool(), **(backbone_opts or {}))
    strides = _level_strides(backbone, 1)
    anchors = AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    return FasterRCNN(
        backbone, num_classes, rpn_anchor_generator=anchors, **{**normalization(backbone), **detector_kwargs}
    )
