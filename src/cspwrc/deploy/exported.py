"""Exported models as first-class detectors: ``cspwrc val`` / ``predict`` take an exported file where they take a
checkpoint, so the mAP of the file a user ships is a ``val`` away.

:func:`load_model` reads a cspwrc ``.safetensors`` checkpoint (:func:`cspwrc.det.load.load_detector`) or an ONNX file
written by ``cspwrc export`` (raw, ``--nms`` or an end-to-end head's top-k graph; fp32, ``--half`` or int8), and
returns ``(model, meta)`` with the same interface either way: ``model(images float [B, 3, S, S] in [0, 1])`` gives per
image ``boxes [K, 4]`` (xyxy input pixels), ``scores [K]``, ``labels [K]``; ``model.cfg.post`` holds the
post-processing settings; ``meta`` has ``num_classes``, ``class_names``, ``category_ids`` and ``img``.

An ONNX file is read through its own metadata (:func:`cspwrc.deploy.export.onnx_metadata`): names, input size and
what the graph ends in. A raw graph gets the detector's post-processing in PyTorch (NMS with the exported
checkpoint's settings, or the top-k of an end-to-end head); a graph with the post-processing inside is used as is
(its score threshold was fixed at export, e.g. ``--conf 0.25``: a val of it scores what it keeps). A file that is
not ONNX, is truncated, or carries no cspwrc metadata is a :class:`~cspwrc.errors.CheckpointError` (exit 2) naming
it. ONNX files run on onnxruntime's CPU provider.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cspwrc.det.load import load_detector
from cspwrc.det.postprocess import PostprocessCfg, postprocess, topk_detections
from cspwrc.errors import CheckpointError, InputError

__all__ = ["ONNX_SUFFIX", "OnnxDetector", "load_model"]

ONNX_SUFFIX = ".onnx"


@dataclass
class ExportedCfg:
    """The part of :class:`~cspwrc.det.DetectorConfig` an exported model has: its post-processing settings."""

    post: PostprocessCfg


class OnnxDetector(nn.Module):
    """A cspwrc ONNX export behind the eval interface of :class:`~cspwrc.det.YoloDetector` (module doc).

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (None: one per core).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        # The optional [export] extra; imported here so that checkpoints load without it.
        from cspwrc.deploy.export import INPUT_NAME, NMS_OUTPUTS, OUTPUT_NAME, ort_session  # noqa: PLC0415
        from cspwrc.deploy.postprocess import onnx_metadata_numpy  # noqa: PLC0415

        self.path = Path(path)
        try:
            self.session = ort_session(self.path, threads)
        except ImportError as err:
            raise InputError(f"{self.path}: running an ONNX file needs onnxruntime (pip install -e '.[export]'): "
                             f"{err}") from err
        except Exception as err:  # onnxruntime raises its own types for a truncated or foreign file
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({str(err).splitlines()[0][:200]})") from err
        meta = onnx_metadata_numpy(self.session)
        if meta.get("producer") != "cspwrc" or "names" not in meta or "imgsz" not in meta:
            raise CheckpointError(f"{self.path}: no cspwrc metadata (producer, names, imgsz); not a model written by "
                                  "`cspwrc export`, so its classes, input size and outputs are unknown")
        outputs = [o.name for o in self.session.get_outputs()]
        self.in_graph = meta.get("nms")  # the post-processing the graph ends in, or None: a raw graph
        expected = list(NMS_OUTPUTS) if self.in_graph else [OUTPUT_NAME]
        if outputs != expected:
            raise CheckpointError(f"{self.path}: outputs {outputs}, its metadata says {expected}")
        self.input_name = INPUT_NAME
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
        feed = {self.input_name: images.detach().float().cpu().numpy()}
        if not self.in_graph:
            (raw,) = self.session.run(None, feed)
            raw_t = torch.from_numpy(raw)
            post = self.cfg.post
            if self.end2end:
                return topk_detections(raw_t, post.score_thresh, post.max_det, (self.img, self.img))
            return postprocess(raw_t, **dataclasses.asdict(post), image_size=(self.img, self.img))
        boxes, scores, labels, index = self.session.run(None, feed)
        return [{"boxes": torch.from_numpy(boxes[index == b]).float(), "scores": torch.from_numpy(scores[index == b]),
                 "labels": torch.from_numpy(labels[index == b].astype(np.int64))} for b in range(images.shape[0])]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint or an exported file as ``(model, meta)`` (module doc); ``device`` applies to checkpoints (an
    ONNX file runs on onnxruntime's CPU provider)."""
    path = Path(path)
    if path.suffix.lower() != ONNX_SUFFIX:
        return load_detector(path, device)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    model = OnnxDetector(path)
    meta = model.meta
    names = list(meta["names"])
    return model.eval(), {"num_classes": len(names), "class_names": names,
                          "category_ids": meta.get("category_ids") or list(range(len(names))), "img": model.img,
                          "model": meta.get("model"), "exported": {"format": "onnx", "in_graph": model.in_graph,
                                                                    "end2end": model.end2end}}
