"""Exported models as first-class detectors: ``cspwrc val`` / ``predict`` take an exported file where they take a
checkpoint, so the mAP of the file a user ships is a ``val`` away.

:func:`load_model` reads a cspwrc ``.safetensors`` checkpoint (:func:`cspwrc.det.load.load_detector`), an ONNX file,
an OpenVINO IR folder or a TorchScript file (``.ts`` / ``.torchscript``) written by ``cspwrc export`` (raw,
``--nms`` or an end-to-end head's top-k graph; fp32, ``--half`` or int8), and
returns ``(model, meta)`` with the same interface either way: ``model(images float [B, 3, S, S] in [0, 1])`` gives per
image ``boxes [K, 4]`` (xyxy input pixels), ``scores [K]``, ``labels [K]``; ``model.cfg.post`` holds the
post-processing settings; ``meta`` has ``num_classes``, ``class_names``, ``category_ids`` and ``img``.

An exported file is read through its own metadata (:func:`cspwrc.deploy.export.onnx_metadata`; an OpenVINO IR
keeps the same keys in its ``rt_info`` section ``cspwrc``): names, input size and
what the graph ends in. A raw graph gets the detector's post-processing in PyTorch (NMS with the exported
checkpoint's settings, or the top-k of an end-to-end head); a graph with the post-processing inside is used as is
(its score threshold was fixed at export, e.g. ``--conf 0.25``: a val of it scores what it keeps). A file that is
not ONNX / OpenVINO, is truncated, or carries no cspwrc metadata is a :class:`~cspwrc.errors.CheckpointError` (exit
2) naming it. They run on the CPU (onnxruntime's CPU provider, OpenVINO's CPU plugin, TorchScript's interpreter).
A TorchScript archive holds code (TorchScript, not Python: ``torch.jit.load`` unpickles no Python objects); like
any model file, run only those you trust.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cspwrc.deploy.postprocess import decode_metadata, onnx_metadata_numpy
from cspwrc.deploy.timing import latency_ms, set_threads
from cspwrc.det.load import load_detector
from cspwrc.det.postprocess import PostprocessCfg, postprocess, topk_detections
from cspwrc.errors import CheckpointError, InputError

__all__ = ["ONNX_SUFFIX", "OPENVINO_META_KEYS", "OPENVINO_XML", "RT_INFO", "TORCHSCRIPT_SUFFIXES", "ExportedDetector",
           "is_openvino", "load_model", "time_model"]

ONNX_SUFFIX = ".onnx"
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")  # ours (README) and Ultralytics' names for a TorchScript export
OPENVINO_XML = "model.xml"  # in an IR folder (Ultralytics' NAME_openvino_model/ layout), beside model.bin
RT_INFO = "cspwrc"  # the OpenVINO rt_info section that holds the metadata of an ONNX export, key by key
OPENVINO_META_KEYS = ("producer", "cspwrc_version", "model", "names", "category_ids", "imgsz", "stride", "input",
                      "outputs", "nms", "end2end", "post", "quantization")


@dataclass
class ExportedCfg:
    """The part of :class:`~cspwrc.det.DetectorConfig` an exported model has: its post-processing settings."""

    post: PostprocessCfg


class ExportedDetector(nn.Module):
    """A cspwrc export (ONNX file, OpenVINO IR folder or TorchScript file) behind the eval interface of
    :class:`~cspwrc.det.YoloDetector` (module doc).

    Args:
        path: the ``.onnx`` file, the OpenVINO folder (``model.xml`` + ``model.bin``) or its ``.xml``, or the
            TorchScript file.
        threads: runtime intra-op threads (None: the runtime's default, one per core).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        from cspwrc.deploy.export import NMS_OUTPUTS, OUTPUT_NAME  # noqa: PLC0415  (the optional [export] extra)

        self.path = Path(path)
        self.runtime = "openvino" if is_openvino(self.path) else "torchscript" if is_torchscript(self.path) else "onnx"
        self.run, meta, outputs = _READERS[self.runtime](self.path, threads)
        if meta.get("producer") != "cspwrc" or "names" not in meta or "imgsz" not in meta:
            raise CheckpointError(f"{self.path}: no cspwrc metadata (producer, names, imgsz); not a model written by "
                                  "`cspwrc export`, so its classes, input size and outputs are unknown")
        self.in_graph = meta.get("nms")  # the post-processing the graph ends in, or None: a raw graph
        expected = list(NMS_OUTPUTS) if self.in_graph else [OUTPUT_NAME]
        if outputs != expected:
            raise CheckpointError(f"{self.path}: outputs {outputs}, its metadata says {expected}")
        self.meta = meta
        self.img = int(meta["imgsz"][0])
        self.end2end = bool(meta.get("end2end", False))
        self.num_classes = len(meta["names"])
        post = meta.get("post") or {}
        self.cfg = ExportedCfg(PostprocessCfg(**{f.name: post[f.name] for f in dataclasses.fields(PostprocessCfg)
                                                 if f.name in post}))

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` of ``images float [B, 3, S, S]`` in ``[0, 1]``
        (``S`` = the exported size)."""
        if tuple(images.shape[-2:]) != (self.img, self.img):
            raise InputError(f"{self.path}: exported for {self.img}x{self.img} inputs, got {tuple(images.shape[-2:])} "
                             f"(run it with --img {self.img})")
        outputs = self.run(np.ascontiguousarray(images.detach().float().cpu().numpy()))
        if not self.in_graph:
            raw = torch.from_numpy(outputs[0])
            post = self.cfg.post
            if self.end2end:
                return topk_detections(raw, post.score_thresh, post.max_det, (self.img, self.img))
            return postprocess(raw, **dataclasses.asdict(post), image_size=(self.img, self.img))
        boxes, scores, labels, index = outputs
        return [{"boxes": torch.from_numpy(boxes[index == b]).float(), "scores": torch.from_numpy(scores[index == b]),
                 "labels": torch.from_numpy(labels[index == b].astype(np.int64))} for b in range(images.shape[0])]


Runner = Callable[[np.ndarray], list[np.ndarray]]


def _onnxruntime(path: Path, threads: int | None) -> tuple[Runner, dict[str, Any], list[str]]:
    """An onnxruntime CPU session of ``path``: its run function, decoded metadata and output names."""
    from cspwrc.deploy.export import INPUT_NAME, ort_session  # noqa: PLC0415  (the optional [export] extra)

    try:
        session = ort_session(path, threads)
    except ImportError as err:
        raise InputError(f"{path}: running an ONNX file needs onnxruntime (pip install -e '.[export]'): {err}") from err
    except Exception as err:  # onnxruntime raises its own types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:200]})") from err
    return (lambda x: session.run(None, {INPUT_NAME: x})), onnx_metadata_numpy(session), [
        o.name for o in session.get_outputs()]


def _openvino(path: Path, threads: int | None) -> tuple[Runner, dict[str, Any], list[str]]:
    """An OpenVINO IR folder or ``.xml`` on the CPU: its run function (compiling the model once per input shape),
    metadata and output names."""
    try:
        import openvino as ov  # noqa: PLC0415  (the optional [openvino] extra)
    except ImportError as err:
        raise InputError(f"{path}: running an OpenVINO model needs openvino (pip install -e '.[openvino]')") from err
    xml = path / OPENVINO_XML if path.is_dir() else path
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    try:
        model = core.read_model(str(xml))  # checks the weights file too (a truncated .bin is an error here)
    except RuntimeError as err:
        raise CheckpointError(f"{xml}: not a readable OpenVINO model ({str(err).splitlines()[0][:200]})") from err
    meta = decode_metadata({key: model.get_rt_info([RT_INFO, key]).astype(str) for key in OPENVINO_META_KEYS
                            if model.has_rt_info([RT_INFO, key])})
    outputs = [o.get_any_name() for o in model.outputs]
    compiled: dict[tuple[int, ...], Any] = {}

    def run(x: np.ndarray) -> list[np.ndarray]:
        # compiled once per input shape: the IR's batch axis is dynamic, and OpenVINO's CPU plugin runs a static
        # shape faster (no shape inference or reallocation per call; docs/deploy.md §4)
        if x.shape not in compiled:
            model.reshape(list(x.shape))
            compiled[x.shape] = core.compile_model(model, "CPU", config)
        net = compiled[x.shape]
        result = net(x)
        return [result[o] for o in net.outputs]

    return run, meta, outputs


def _torchscript(path: Path, threads: int | None) -> tuple[Runner, dict[str, Any], list[str]]:
    """A TorchScript file on the CPU: its run function, the metadata of its extra file and its output name."""
    from cspwrc.deploy.export import OUTPUT_NAME, TORCHSCRIPT_META  # noqa: PLC0415  (the optional [export] extra)

    extra = {TORCHSCRIPT_META: ""}
    try:
        with warnings.catch_warnings():  # torch.jit's deprecation notice says nothing about this file
            warnings.simplefilter("ignore", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable TorchScript model ({str(err).splitlines()[0][:200]})") from err
    try:
        meta = decode_metadata(json.loads(extra[TORCHSCRIPT_META] or "{}"))
    except (ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable cspwrc metadata ({err})") from err
    if threads:
        torch.set_num_threads(threads)

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [module(torch.from_numpy(x)).numpy()]

    return run, meta, [OUTPUT_NAME]


_READERS = {"onnx": _onnxruntime, "openvino": _openvino, "torchscript": _torchscript}


def is_openvino(path: Path) -> bool:
    """An OpenVINO IR: a folder holding ``model.xml``, or an ``.xml`` file."""
    return (path.is_dir() and (path / OPENVINO_XML).is_file()) or path.suffix.lower() == ".xml"


def is_torchscript(path: Path) -> bool:
    return path.suffix.lower() in TORCHSCRIPT_SUFFIXES


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint or an exported file as ``(model, meta)`` (module doc); ``device`` applies to checkpoints (an
    exported file runs on the CPU)."""
    path = Path(path)
    if path.suffix.lower() != ONNX_SUFFIX and not is_openvino(path) and not is_torchscript(path):
        return load_detector(path, device)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    model = ExportedDetector(path)
    meta = model.meta
    names = list(meta["names"])
    return model.eval(), {"num_classes": len(names), "class_names": names,
                          "category_ids": meta.get("category_ids") or list(range(len(names))), "img": model.img,
                          "model": meta.get("model"), "exported": {"format": model.runtime, "in_graph": model.in_graph,
                                                                    "end2end": model.end2end}}


def time_model(path: str | Path, threads: int | None = None, repeats: int = 30) -> dict[str, Any]:
    """bs1 latency (ms, median of ``repeats`` after 5 warm-up, :func:`cspwrc.deploy.timing.latency_ms`) of a
    checkpoint or an exported file at its own input size: ``runtime`` = the graph alone (an exported file; a
    checkpoint: the folded model's raw forward), ``with_post`` = the detections as ``val`` / ``predict`` get them
    (the post-processing in PyTorch after a raw graph; nothing more for a graph that has it inside)."""
    path = Path(path)
    set_threads(threads)
    model, meta = load_model(path)
    size = int(meta.get("img") or 640)
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        if isinstance(model, ExportedDetector):
            runtime = latency_ms(lambda: model.run(x.numpy()), repeats)
            fmt = model.runtime + (" int8" if model.meta.get("quantization") else "")
        else:
            model = model.fold().to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
            runtime = latency_ms(lambda: model.forward_raw(x), repeats)
            fmt = "pytorch (folded, channels_last)"
        with_post = latency_ms(lambda: model(x), repeats)
    return {"file": str(path), "format": fmt, "img": size, "threads": threads, "runtime_ms": runtime,
            "with_post_ms": with_post}
