"""The race's latency phase for our contestants: bs1 in PyTorch and in ONNX Runtime, with and without NMS.

Both runtimes are timed by the one loop, :func:`cspwrc.deploy.timing.latency_ms` (median of 30 runs after 5
warm-up runs; tools/race_ultralytics.py keeps its twin for the Ultralytics side), at the caller's thread count,
with the deployment thresholds :data:`LATENCY_CONF` / :data:`LATENCY_IOU` for every contestant:

* PyTorch: the folded detector in channels_last; ``forward`` = ``forward_raw`` ``[1, A, 4 + C]``, ``with_nms`` =
  the eval forward (post-processing with class-aware NMS included).
* ONNX Runtime (CPU): the export path of ``cspwrc export``: ``forward`` = the raw graph
  (:func:`~cspwrc.deploy.export.export_onnx` of :func:`~cspwrc.deploy.export.deploy_model`), ``with_nms`` = the
  end-to-end graph of ``cspwrc export --nms`` (:class:`~cspwrc.deploy.export.EndToEnd`, ONNX NonMaxSuppression).

An end-to-end head (``head.end2end``) post-processes with a top-k instead of NMS in both runtimes; its
``with_nms`` entry is that (the key keeps its name: "with the post-processing"), and ``end2end`` says so.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cspwrc.deploy.export import INPUT_NAME, EndToEnd, deploy_model, export_onnx, export_onnx_nms, ort_session
from cspwrc.deploy.timing import latency_ms
from cspwrc.det.load import load_detector
from cspwrc.layers import fold_model

__all__ = ["LATENCY_CONF", "LATENCY_IOU", "latency_done", "time_onnxruntime", "time_ours", "time_pytorch"]

# NMS settings of the latency phase, the same for every contestant: Ultralytics' predict defaults (a deployed
# detector keeps confident boxes; the val-time 0.001 threshold would time NMS on thousands of boxes).
LATENCY_CONF, LATENCY_IOU = 0.25, 0.7
PYTORCH_TIMED = (f"PyTorch, folded + channels_last; forward = forward_raw, with_nms = + cspwrc postprocess (score "
                 f"{LATENCY_CONF}, IoU {LATENCY_IOU})")
ORT_TIMED = (f"onnxruntime CPU; forward = cspwrc export (raw graph), with_nms = cspwrc export --nms (NonMaxSuppression "
             f"in the graph, score {LATENCY_CONF}, IoU {LATENCY_IOU})")


def latency_done(summary: dict[str, Any], sizes: Sequence[int], threads: int) -> bool:
    """Whether a contestant's summary already holds this phase's numbers: every size, both runtimes (or the reason
    the ONNX Runtime one was skipped), timed with ``threads`` threads."""
    wanted = set(map(str, sizes))
    ort_done = wanted <= set(summary.get("latency_ort_ms") or {}) or \
        str(summary.get("latency_timed", {}).get("onnxruntime", "")).startswith("skipped")
    return summary.get("latency_threads") == threads and wanted <= set(summary.get("latency_ms", {})) and ort_done


@torch.inference_mode()
def time_pytorch(model: nn.Module, sizes: Sequence[int]) -> dict[str, dict[str, float]]:
    """``{size: {"forward": ms, "with_nms": ms}}`` of a detector on one ``[1, 3, size, size]`` image."""
    net = fold_model(model.eval()).to(memory_format=torch.channels_last)  # a folded copy
    net.cfg.post.score_thresh, net.cfg.post.nms_iou = LATENCY_CONF, LATENCY_IOU
    inputs = {s: torch.rand(1, 3, s, s).contiguous(memory_format=torch.channels_last) for s in sizes}
    return {str(s): {"forward": latency_ms(partial(net.forward_raw, x)), "with_nms": latency_ms(partial(net, x))}
            for s, x in inputs.items()}


def time_onnxruntime(model: nn.Module, sizes: Sequence[int], threads: int) -> dict[str, dict[str, float]]:
    """``{size: {"forward": ms, "with_nms": ms}}`` of the exported detector under onnxruntime with ``threads``
    intra-op threads (one export per size: the anchor points are constants of the graph)."""
    raw = deploy_model(model)
    cfg = model.cfg.post
    timed: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="race_onnx_") as tmp:
        for s in sizes:
            feed = {INPUT_NAME: np.random.default_rng(0).random((1, 3, s, s), dtype=np.float32)}
            end_to_end = EndToEnd(raw, s, LATENCY_CONF, LATENCY_IOU, cfg.max_det, cfg.pre_nms_topk,
                                  nms=not model.end2end)
            forward = ort_session(export_onnx(raw, Path(tmp) / f"raw_{s}.onnx", s), threads)
            with_nms = ort_session(export_onnx_nms(end_to_end, Path(tmp) / f"nms_{s}.onnx", s), threads)
            timed[str(s)] = {"forward": latency_ms(partial(forward.run, None, feed)),
                             "with_nms": latency_ms(partial(with_nms.run, None, feed))}
    return timed


def time_ours(weights: Path, sizes: Sequence[int], threads: int) -> dict[str, Any]:
    """The summary entries of one of our checkpoints: ``latency_ms`` (PyTorch), ``latency_ort_ms`` (ONNX Runtime,
    absent when onnxruntime/onnx are not installed), ``latency_timed`` (what each one timed) and
    ``latency_threads``. The caller sets torch's threads to ``threads``."""
    model, _ = load_detector(weights)
    entries: dict[str, Any] = {"latency_ms": time_pytorch(model, sizes), "end2end": model.end2end,
                               "latency_timed": {"pytorch": PYTORCH_TIMED}, "latency_threads": threads}
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        entries["latency_timed"]["onnxruntime"] = f"skipped: {', '.join(missing)} not installed (extra [export])"
    else:
        entries["latency_ort_ms"] = time_onnxruntime(model, sizes, threads)
        entries["latency_timed"]["onnxruntime"] = ORT_TIMED
    return entries
