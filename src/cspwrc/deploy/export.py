"""ONNX / TorchScript export of a folded cspwrc detector.

The exported graph is normalisation + backbone + neck + head + box decoding, i.e. the detector's
``forward_raw``: ``images float32 [B, 3, S, S]`` (RGB in [0, 1], letterboxed to ``S``) ->
``raw float32 [B, A, 4 + C]`` (xyxy boxes in input pixels, then ``C`` class probabilities).

NMS is deliberately *not* in the graph: ONNX ``NonMaxSuppression`` from ``torchvision.ops.nms`` exports only for
batch 1 and its class-aware, multi-label top-k variant does not map cleanly onto it, so the graph keeps a
dynamic batch and the caller runs :func:`cspwrc.deploy.postprocess.postprocess_numpy` (numpy only) afterwards.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "raw"
FORMATS = ("onnx", "torchscript")


def deploy_model(detector: nn.Module) -> nn.Module:
    """A folded (BN + WRC), eval-mode copy of ``detector`` whose ``forward`` is ``forward_raw``; input untouched."""
    from cspwrc.det.detector import RawPredictions

    return RawPredictions(copy.deepcopy(detector).fuse()).eval()


def load_for_export(weights: str | Path | None = None, model: str | None = None,
                    num_classes: int = 80) -> tuple[nn.Module, dict[str, Any]]:
    """The detector to export: from a cspwrc checkpoint (``weights``) or freshly built (``model`` name)."""
    if weights is not None:
        from cspwrc.engine.checkpoint import load_detector

        return load_detector(weights)
    if model is None:
        raise ValueError("give a checkpoint (weights) or a model name")
    from cspwrc.det import build_detector

    detector = build_detector(backbone=model, num_classes=num_classes).eval()
    return detector, {"model": model, "num_classes": num_classes}


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
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    path = Path(path)
    model = OnnxModel(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True))
    model.topological_sort()  # the converter appends the input casts last; the ONNX checker wants them first
    onnx.save(model.model, str(path))
    return path


def export_torchscript(module: nn.Module, path: str | Path, img: int) -> Path:
    """Write ``module`` as a traced TorchScript file (load with ``torch.jit.load``); any batch size works."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        _quiet_tracing()
        traced = torch.jit.trace(module, torch.rand(1, 3, img, img))
    traced.save(str(path))
    return path


def export(module: nn.Module, fmt: str, path: str | Path, img: int) -> Path:
    if fmt == "onnx":
        return export_onnx(module, path, img)
    if fmt == "torchscript":
        return export_torchscript(module, path, img)
    raise ValueError(f"unknown format {fmt!r}, expected one of {FORMATS}")


def run_onnx(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Run an exported ONNX file with onnxruntime on CPU (used for parity checks)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (raw,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    return torch.from_numpy(raw)


def check_export(module: nn.Module, fmt: str, path: str | Path, img: int, batch: int = 2) -> float:
    """Max abs difference between PyTorch and the exported file on a random batch (another size than traced)."""
    images = torch.rand(batch, 3, img, img)
    with torch.no_grad():
        expected = module(images)
        if fmt == "onnx":
            actual = run_onnx(path, images)
        else:
            with warnings.catch_warnings():
                _quiet_tracing()
                actual = torch.jit.load(str(path))(images)
    return float((expected - actual).abs().max())
