"""Runtimes a (folded) model can be timed in besides eager PyTorch: TorchScript, ONNX Runtime, CUDA graphs.

Each converts the *static part* of a model (:func:`static_part`: the detector's ``forward_raw`` ``[B, A, 4 + C]``,
or a backbone whole); the detector's NMS has data-dependent shapes and stays eager (:func:`with_eager_nms`), so a
converted detector still returns detections. ``torch.compile`` wraps the whole callable instead
(:func:`cspwrc.deploy.modes.prepare`).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

from cspwrc.deploy.export import INPUT_NAME, export_onnx, ort_session
from cspwrc.det import RawPredictions

__all__ = ["convert", "cuda_graph", "jit_optimize", "ort_runner", "static_part", "with_eager_nms"]

Fn = Callable[[torch.Tensor], Any]


def static_part(model: nn.Module) -> nn.Module:
    """What tracing/exporting sees: the detector's ``forward_raw`` (no NMS), or the backbone itself."""
    if hasattr(model, "forward_raw"):
        return RawPredictions(model)
    return model


def with_eager_nms(raw_fn: Callable[[torch.Tensor], torch.Tensor], detector: nn.Module) -> Fn:
    """Detections from a converted ``forward_raw`` (``[B, A, 4 + C]``) with the detector's own eager post-processing
    (NMS, or the top-k of an end-to-end head: ``detector.detections``)."""

    def run(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return detector.detections(raw_fn(x), tuple(x.shape[-2:]))

    return run


def jit_optimize(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Trace, freeze and ``optimize_for_inference``: folds conv+BN, pre-packs oneDNN conv weights."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still the CPU fast path
        traced = torch.jit.trace(model, example, strict=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def ort_runner(module: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """Export ``module`` to ONNX (a temp file) and run it with onnxruntime on CPU at torch's thread count.

    Returns ``run(x [B, 3, H, W]) -> [outputs as tensors]``.
    """
    # onnxruntime's workers spin after each run by default and would steal the cores from the configuration timed
    # next in the round-robin; deployments that run one model keep the default
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(module, f"{tmp}/model.onnx", example.shape[-1])
        session = ort_session(path, torch.get_num_threads(), spinning=False)

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(None, {INPUT_NAME: x.contiguous().numpy()})]

    return run


def cuda_graph(fn: Fn, example: torch.Tensor, warmup: int = 3) -> Fn:
    """``fn`` captured once in a CUDA graph: a call copies its input into the graph's static input and replays
    every kernel with one launch. The output tensors are the graph's static ones, overwritten by the next call.

    Warm-up runs on a side stream first (cuDNN autotuning, lazy init and the allocator must not happen during
    capture), as ``torch.cuda.graphs`` prescribes.
    """
    static_in = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(static_in)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)

    def run(x: torch.Tensor) -> Any:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


def convert(model: nn.Module, runtimes: Collection[str], example: torch.Tensor) -> Fn:
    """``model`` in the runtime named in ``runtimes`` (``jit``, ``ort`` or ``cudagraph``; ``compile`` is applied
    by the caller), the detector's NMS kept eager; the model itself when none is named."""
    if "jit" in runtimes:
        fn: Fn = jit_optimize(static_part(model), example)
    elif "cudagraph" in runtimes:
        fn = cuda_graph(static_part(model), example)
    elif "ort" in runtimes:
        session = ort_runner(static_part(model), example)
        fn = (lambda x: session(x)[0]) if hasattr(model, "forward_raw") else session
    else:
        return model
    return with_eager_nms(fn, model) if hasattr(model, "forward_raw") else fn
