"""ONNX / TorchScript export of a folded cspwrc detector.

The exported graph is normalisation + backbone + neck + head + box decoding, i.e. the detector's
``forward_raw``: ``images float32 [B, 3, S, S]`` (RGB in [0, 1], letterboxed to ``S``) ->
``raw float32 [B, A, 4 + C]`` (xyxy boxes in input pixels, then ``C`` class probabilities).

By default NMS is not in the graph (``torchvision.ops.nms`` exports only for batch 1): the caller runs
:func:`cspwrc.deploy.postprocess.postprocess_numpy` (numpy only) afterwards. :class:`EndToEnd` +
:func:`export_onnx_nms` (``export --nms``) put the whole post-processing in the graph instead, around one
batched, per-class ONNX ``NonMaxSuppression`` node, checked by :func:`check_export_nms` (tolerances:
:mod:`cspwrc.deploy.parity`). Every ONNX file gets :func:`onnx_metadata`.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from cspwrc import __version__ as cspwrc_version
from cspwrc.atomic import write_bytes
from cspwrc.deploy.parity import NmsParity, NmsTolerance, compare_nms, raw_parity
from cspwrc.det import RawPredictions, build_detector
from cspwrc.det.load import load_detector
from cspwrc.det.postprocess import PostprocessCfg, postprocess, topk_detections, topk_pairs

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "raw"
FORMATS = ("onnx", "torchscript", "openvino")
# the extra file of a TorchScript archive that holds the metadata of an ONNX export (JSON of the same keys)
TORCHSCRIPT_META = "cspwrc.json"


def deploy_model(detector: nn.Module) -> nn.Module:
    """A folded (BN + WRC), eval-mode copy of ``detector`` whose ``forward`` is ``forward_raw``; input untouched."""
    return RawPredictions(copy.deepcopy(detector).fold()).eval()


def load_for_export(weights: str | Path | None = None, model: str | None = None,
                    num_classes: int = 80) -> tuple[nn.Module, dict[str, Any]]:
    """The detector to export: from a cspwrc checkpoint (``weights``) or freshly built (``model`` name)."""
    if weights is not None:
        return load_detector(weights)
    if model is None:
        raise ValueError("give a checkpoint (weights) or a model name")
    detector = build_detector(backbone=model, num_classes=num_classes).eval()
    return detector, {"model": detector.config, "num_classes": num_classes}


def _quiet_tracing() -> None:
    """Inside ``warnings.catch_warnings()``: anchors derived from shapes are meant to become constants, and
    torch.jit's deprecation notices say nothing about the exported file (tracing is what ONNX export uses)."""
    warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
    warnings.simplefilter("ignore", category=FutureWarning)
    warnings.simplefilter("ignore", category=DeprecationWarning)  # the legacy ONNX exporter's logging helper


def export_onnx(module: nn.Module, path: str | Path, img: int, opset: int = ONNX_OPSET,
                dynamic_batch: bool = True) -> Path:
    """Write ``module`` (e.g. from :func:`deploy_model`) as ONNX with a dynamic batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, 3, img, img)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        _quiet_tracing()
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles our static-shape graph.
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)
    return path


def half_onnx(path: str | Path) -> Path:
    """Rewrite an exported ONNX file in fp16: weights and compute in half precision, input and output stay fp32.

    Uses onnxruntime's own converter (``onnxruntime.transformers.float16``, shipped in the onnxruntime wheel):
    it keeps the graph's ``images``/``raw`` in fp32 (``keep_io_types``) and the ops ONNX or the runtimes cannot
    run in fp16 (its default block list: ``Range`` of the anchor points among them) in fp32 behind casts. The
    file halves in size; the callers' pre- and post-processing do not change. Exporting a ``.half()`` torch
    model instead fails: ONNX ``Range`` has no fp16 version.
    """
    # Optional extra (pip install -e ".[export]"): imported here so the rest of the module works without it.
    import onnx  # noqa: PLC0415
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415
    from onnxruntime.transformers.onnx_model import OnnxModel  # noqa: PLC0415

    path = Path(path)
    model = OnnxModel(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True))
    model.topological_sort()  # the converter appends the input casts last; the ONNX checker wants them first
    onnx.save(model.model, str(path))
    return path


def export_torchscript(module: nn.Module, path: str | Path, img: int, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module`` as a traced TorchScript file (load with ``torch.jit.load``); any batch size works.
    ``metadata`` (:func:`onnx_metadata`'s keys) goes in the archive as the extra file :data:`TORCHSCRIPT_META`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        _quiet_tracing()
        traced = torch.jit.trace(module, torch.rand(1, 3, img, img))
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: json.dumps(metadata or {})})
    return path


def export(module: nn.Module, fmt: str, path: str | Path, img: int, metadata: dict[str, str] | None = None) -> Path:
    """``module`` as ``fmt`` (onnx or torchscript) with ``metadata`` (:func:`onnx_metadata`) inside, if given."""
    if fmt == "onnx":
        path = export_onnx(module, path, img)
        if metadata is not None:
            write_onnx_metadata(path, metadata)
        return path
    if fmt == "torchscript":
        return export_torchscript(module, path, img, metadata)
    raise ValueError(f"unknown format {fmt!r}, expected one of {FORMATS}")


def ort_session(path: str | Path, threads: int | None = None, spinning: bool = True) -> Any:
    """An onnxruntime ``InferenceSession`` of an ONNX file on CPU.

    ``threads``: intra-op threads (None: onnxruntime's default, one per core); inter-op work stays on one thread.
    ``spinning=False`` stops the workers from spinning after a run (they would steal cores from what runs next).
    """
    import onnxruntime as ort  # noqa: PLC0415  (the optional [export] extra, lazy)

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Run an exported ONNX file with onnxruntime on CPU (used for parity checks)."""
    (raw,) = ort_session(path).run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    return torch.from_numpy(raw)


def check_export(module: nn.Module, fmt: str, path: str | Path, img: int, batch: int = 2,
                 tol: NmsTolerance = NmsTolerance()) -> str:
    """PyTorch against the exported file on a random batch (another size than traced): the one-line report of
    :func:`~cspwrc.deploy.parity.raw_parity`, which raises :class:`~cspwrc.deploy.parity.ExportMismatch` (exit 3)
    beyond ``tol``."""
    images = torch.rand(batch, 3, img, img)
    with torch.no_grad():
        expected = module(images)
        if fmt == "onnx":
            actual = run_onnx(path, images)
        else:
            with warnings.catch_warnings():
                _quiet_tracing()
                actual = torch.jit.load(str(path))(images)
    return raw_parity(expected.numpy(), actual.numpy(), tol, fmt)


# ------------------------------------------------------------------------------------------------ end-to-end NMS
NMS_OUTPUTS = ("boxes", "scores", "labels", "batch_index")


class _NonMaxSuppression(torch.autograd.Function):
    """Per-class NMS: ``boxes [B, N, 4]``, ``scores [B, C, N]`` -> ``selected int64 [K, 3]`` (image, class, box).

    Eager: :func:`torchvision.ops.nms` per image and class (used while tracing). Exported: one ONNX
    ``NonMaxSuppression`` node, which keeps ``score > score_thresh`` and suppresses ``IoU > iou`` like torchvision.
    """

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou: float,
                score_thresh: float) -> torch.Tensor:
        selected = [torch.zeros(0, 3, dtype=torch.int64)]
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = (scores[b, c] > score_thresh).nonzero().flatten()
                keep = idx[nms(boxes[b, idx], scores[b, c, idx], iou)][:max_per_class]
                selected.append(torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), 1))
        return torch.cat(selected)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_per_class: int, iou: float, score_thresh: float) -> Any:
        def const(value: Any, dtype: torch.dtype) -> Any:
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
                    const(iou, torch.float32), const(score_thresh, torch.float32))


class EndToEnd(nn.Module):
    """``raw_model`` (e.g. :func:`deploy_model`) + the detector's post-processing, exportable as one ONNX graph.

    ``images float32 [B, 3, S, S]`` -> ``boxes float32 [K, 4]`` (xyxy input pixels, clipped to the image),
    ``scores float32 [K]``, ``labels int64 [K]`` (contiguous class index), ``batch_index int64 [K]`` (which
    image), grouped by image, best first, at most ``max_det`` per image: the detections of
    :func:`cspwrc.det.postprocess.postprocess` with ``image_size=(S, S)`` (the same pre-NMS top-k, per-class NMS
    and cap), so nothing is left to do but :func:`~cspwrc.deploy.postprocess.undo_letterbox_numpy`. The flat
    layout with ``batch_index`` keeps the batch dynamic without padding. ``nms=False`` (an end-to-end head): the
    same outputs from :func:`~cspwrc.det.postprocess.topk_detections` instead, a TopK and no NMS in the graph.
    """

    def __init__(self, raw_model: nn.Module, img: int, score_thresh: float = PostprocessCfg.score_thresh,
                 nms_iou: float = PostprocessCfg.nms_iou, max_det: int = PostprocessCfg.max_det,
                 pre_nms_topk: int = PostprocessCfg.pre_nms_topk, nms: bool = True) -> None:
        super().__init__()
        self.raw_model, self.img, self.nms = raw_model, img, nms
        self.score_thresh, self.nms_iou, self.max_det, self.pre_nms_topk = score_thresh, nms_iou, max_det, pre_nms_topk

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self.raw_model(images)  # [B, A, 4 + C]
        if not self.nms:
            return self._topk(raw)
        boxes, probs = raw[..., :4].clamp(0, self.img), raw[..., 4:]
        # postprocess's pre-NMS top-k over (point, class) pairs: zero every probability below the k-th largest.
        flat = probs.flatten(1)
        kth = flat.topk(min(self.pre_nms_topk, flat.shape[1]), dim=1).values[:, -1:]  # [B, 1]
        scores = probs * (probs >= kth[:, :, None]).to(probs.dtype)  # [B, A, C]
        selected = _NonMaxSuppression.apply(boxes, scores.transpose(1, 2).contiguous(), self.max_det, self.nms_iou,
                                            self.score_thresh)
        image, label, point = selected.unbind(1)
        det_scores = scores[image, point, label]
        # Group by image, best first (scores lie in [0, 1]), then keep each image's first max_det.
        order = (image.to(det_scores.dtype) * 2 - det_scores).argsort()
        image, label, point, det_scores = image[order], label[order], point[order], det_scores[order]
        same = (image[:, None] == torch.arange(images.shape[0], device=image.device)[None]).to(torch.int64)
        rank = (same.cumsum(0) * same).sum(1) - 1  # position of each detection within its image
        keep = rank < self.max_det
        return boxes[image[keep], point[keep]], det_scores[keep], label[keep], image[keep]

    def _topk(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, labels = topk_pairs(raw, self.max_det)  # [B, k, ...], by image, best first
        image = torch.arange(raw.shape[0], device=raw.device)[:, None].expand_as(labels)
        keep = (scores > self.score_thresh).flatten()
        return (boxes.clamp(0, self.img).flatten(0, 1)[keep], scores.flatten()[keep], labels.flatten()[keep],
                image.flatten()[keep])


def export_onnx_nms(module: nn.Module, path: str | Path, img: int, opset: int = ONNX_OPSET) -> Path:
    """Write an :class:`EndToEnd` module as ONNX (dynamic batch; outputs :data:`NMS_OUTPUTS`, dynamic length)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "detections"} for name in NMS_OUTPUTS}}
    with torch.no_grad(), warnings.catch_warnings():
        _quiet_tracing()
        # The gathers index with NonMaxSuppression's output, never negative: the exporter's caveat does not apply.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        torch.onnx.export(module, (torch.rand(1, 3, img, img),), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(NMS_OUTPUTS), dynamic_axes=axes,
                          do_constant_folding=True)
    return path


def run_onnx_nms(path: str | Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Run an end-to-end ONNX file with onnxruntime on CPU: ``{boxes, scores, labels, batch_index}``."""
    return dict(zip(NMS_OUTPUTS, ort_session(path).run(list(NMS_OUTPUTS), {INPUT_NAME: images.numpy()}), strict=True))


def check_export_nms(module: EndToEnd, path: str | Path, images: torch.Tensor,
                     tol: NmsTolerance = NmsTolerance(), got: dict[str, np.ndarray] | None = None) -> list[NmsParity]:
    """onnxruntime's detections (or ``got``, another runtime's outputs of the same graph) against :func:`postprocess`
    of the PyTorch raw output, one :func:`~cspwrc.deploy.parity.compare_nms` per image of ``images [B, 3, S, S]`` in
    [0, 1]; judge the results with :func:`~cspwrc.deploy.parity.parity_report` (raises
    :class:`~cspwrc.deploy.parity.ExportMismatch`)."""
    got = run_onnx_nms(path, images) if got is None else got
    with torch.no_grad():
        raw = module.raw_model(images)
    size = (module.img, module.img)
    expected = postprocess(raw, module.score_thresh, module.nms_iou, module.max_det, module.pre_nms_topk,
                           image_size=size) if module.nms else topk_detections(raw, module.score_thresh, module.max_det,
                                                                               image_size=size)
    settings = dict(img=module.img, score_thresh=module.score_thresh, nms_iou=module.nms_iou if module.nms else None,
                    max_det=module.max_det, pre_nms_topk=module.pre_nms_topk, tol=tol)
    return [compare_nms(raw[b].numpy(), {k: v.numpy() for k, v in exp.items()},
                        {k: v[got["batch_index"] == b] for k, v in got.items()}, image=b, **settings)
            for b, exp in enumerate(expected)]


# ------------------------------------------------------------------------------------------------ metadata
def onnx_metadata(meta: dict[str, Any], img: int, stride: int, nms: EndToEnd | None = None) -> dict[str, str]:
    """What a runtime needs to use the file without cspwrc: class names, input size and convention, outputs.

    Values are strings (ONNX ``metadata_props``); lists and dicts are JSON. ``meta`` is a checkpoint's metadata as
    :func:`load_for_export` returns it (``meta["model"]`` the detector's nested config).
    """
    num_classes = int(meta["num_classes"])
    names = meta.get("class_names") or [str(i) for i in range(num_classes)]
    end2end = bool(meta["model"]["head"].get("end2end", False))
    outputs = ("boxes float32 [K, 4] xyxy input pixels, scores float32 [K], labels int64 [K] class index, "
               "batch_index int64 [K]; at most max_det per image" if nms else
               f"raw float32 [B, A, 4 + {num_classes}]: xyxy input pixels, then class probabilities (no NMS; "
               + ("end-to-end head: keep the top max_det, no NMS)" if end2end else "run NMS)"))
    return {
        "producer": "cspwrc", "cspwrc_version": cspwrc_version, "model": str(meta["model"]["backbone"]["name"]),
        "names": json.dumps(list(names)),
        "category_ids": json.dumps([int(c) for c in meta.get("category_ids", range(num_classes))]),
        "imgsz": json.dumps([img, img]), "stride": str(stride),
        "input": f"{INPUT_NAME} float32 [B, 3, {img}, {img}]: RGB in [0, 1], letterboxed (scale = min({img}/h, "
                 f"{img}/w), centred, padded with 114/255)",
        "outputs": outputs,
        "nms": json.dumps(({"score_thresh": nms.score_thresh, "iou": nms.nms_iou, "max_det": nms.max_det,
                            "pre_nms_topk": nms.pre_nms_topk} if nms.nms else
                           {"score_thresh": nms.score_thresh, "max_det": nms.max_det, "topk": True}) if nms else None),
        "end2end": json.dumps(end2end),
        "post": json.dumps(meta["model"].get("post")),  # the checkpoint's post-processing, for a raw graph
    }


def onnx_to_openvino(onnx_file: str | Path, out: str | Path, half: bool = False, ov_model: Any = None) -> Path:
    """Write an exported ONNX file as an OpenVINO IR folder ``out/model.xml + model.bin`` (Ultralytics' layout),
    fp32 or with fp16 weights (``half``), its metadata copied into ``rt_info`` section ``cspwrc``
    (:mod:`cspwrc.deploy.exported` reads it back); ``ov_model``: an already converted (e.g. int8) model of it."""
    import onnx  # noqa: PLC0415  (the optional [export] extra)
    import openvino as ov  # noqa: PLC0415  (the optional [openvino] extra)

    from cspwrc.deploy.exported import OPENVINO_XML, RT_INFO  # noqa: PLC0415  (it imports this module)

    model = ov_model if ov_model is not None else ov.convert_model(str(onnx_file))
    for prop in onnx.load(str(onnx_file), load_external_data=False).metadata_props:
        model.set_rt_info(prop.value, [RT_INFO, prop.key])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / OPENVINO_XML), compress_to_fp16=half)
    return out


def write_onnx_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Set ``metadata_props`` of an ONNX file (replacing old ones); read back with onnxruntime's
    ``session.get_modelmeta().custom_metadata_map`` or :func:`cspwrc.deploy.postprocess.onnx_metadata_numpy`."""
    import onnx  # noqa: PLC0415  (the optional [export] extra)

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    write_bytes(path, model.SerializeToString())
