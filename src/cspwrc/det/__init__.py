"""cspwrc.det: anchor-free YOLO-style detector on any timm backbone, and torchvision detector adapters.

Modules in data-flow order: :mod:`.neck` (PAN), :mod:`.head` (decoupled DFL head, anchor points, decoding),
:mod:`.assigner` (ATSS, TAL), :mod:`.loss`, :mod:`.postprocess` (NMS, undo letterbox), :mod:`.detector`
(:func:`build_detector`), :mod:`.adapters` (timm backbone + FPN for torchvision FCOS / RetinaNet / Faster R-CNN),
:mod:`.legacy` (the flat options of older files). A trained detector: :mod:`.load` (:func:`load_detector`, from its
checkpoint file) and :mod:`.predict` (``detect`` on one image; imported on use: its letterbox brings the data side).
"""

from .adapters import TimmBackboneWithFPN, fasterrcnn_timm, fcos_timm, retinanet_timm, timm_fpn_backbone
from .assigner import AssignerCfg, Assignment, AtssAssigner, TaskAlignedAssigner
from .detector import BackboneCfg, DetectorConfig, RawPredictions, YoloDetector, build_detector
from .head import DecoupledHead, HeadCfg, decode_boxes, make_anchor_points
from .load import input_size, load_detector
from .loss import DetectionLoss, LossCfg
from .neck import NeckCfg, YoloPan
from .postprocess import PostprocessCfg, postprocess, undo_letterbox

__all__ = [
    "AssignerCfg",
    "Assignment",
    "AtssAssigner",
    "BackboneCfg",
    "DecoupledHead",
    "DetectionLoss",
    "DetectorConfig",
    "HeadCfg",
    "LossCfg",
    "NeckCfg",
    "PostprocessCfg",
    "RawPredictions",
    "TaskAlignedAssigner",
    "TimmBackboneWithFPN",
    "YoloDetector",
    "YoloPan",
    "build_detector",
    "decode_boxes",
    "fasterrcnn_timm",
    "fcos_timm",
    "input_size",
    "load_detector",
    "make_anchor_points",
    "postprocess",
    "retinanet_timm",
    "timm_fpn_backbone",
    "undo_letterbox",
]
