"""Inference modes of the benchmark: how a model is converted before it is timed.

A mode is ``eager`` or ``+``-joined flags (``folded+channels_last+fp16+cudagraph``): ``folded`` (BN and WRC
weights folded into the convs), ``channels_last`` (NHWC weights and input), one runtime of :data:`RUNTIMES`
(:mod:`cspwrc.deploy.runtimes`) and at most one half precision of :data:`HALF`.

GPU-only flags: ``fp16``/``bf16`` (weights and input cast to half precision: the deploy precision) and
``cudagraph`` (the static part captured once in a ``torch.cuda.CUDAGraph`` and replayed; the detector's NMS
stays eager). On another device they are refused with the reason (:func:`check_device`), and the benchmark
records the row as skipped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cspwrc.deploy.runtimes import convert
from cspwrc.layers import fold_model

__all__ = ["CUDA_ONLY", "DEFAULT_MODES", "HALF", "MODE_FLAGS", "RUNTIMES", "check_device", "parse_mode", "prepare",
           "row_precision", "to_precision"]

MODE_FLAGS = ("eager", "folded", "channels_last", "jit", "ort", "compile", "fp16", "bf16", "cudagraph")
RUNTIMES = ("jit", "ort", "compile", "cudagraph")  # mutually exclusive ways to run the (folded) model
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}  # deploy precisions (mutually exclusive)
CUDA_ONLY = {
    "fp16": "fp16 is a GPU deploy precision (CPU convolutions in fp16 are emulated, slower than fp32)",
    "bf16": "bf16 is a GPU deploy precision here (CPU bf16 convolutions need AMX/AVX512-BF16 to pay off)",
    "cudagraph": "CUDA graphs exist only on CUDA devices",
}
DEFAULT_MODES = ("eager", "folded", "channels_last", "folded+channels_last")


def parse_mode(mode: str) -> frozenset[str]:
    """``"folded+channels_last"`` -> {"folded", "channels_last"}; ``"eager"`` -> {} (no conversion).

    Raises ``ValueError`` for an unknown flag, two runtimes or two precisions.
    """
    flags = frozenset(f for f in mode.split("+") if f)
    unknown = flags - set(MODE_FLAGS)
    if unknown or not flags:
        raise ValueError(f"unknown mode {mode!r}: combine {MODE_FLAGS} with '+'")
    if len(flags & set(RUNTIMES)) > 1:
        raise ValueError(f"mode {mode!r}: pick one runtime of {RUNTIMES}")
    if len(flags & set(HALF)) > 1:
        raise ValueError(f"mode {mode!r}: pick one precision of {tuple(HALF)}")
    return flags - {"eager"}


def check_device(flags: frozenset[str], device: torch.device) -> None:
    """Raise ``ValueError`` with the reason when a GPU-only flag is asked for on another device."""
    if device.type != "cuda":
        for flag in sorted(flags & set(CUDA_ONLY)):
            raise ValueError(f"{flag} needs a CUDA device, not {device.type}: {CUDA_ONLY[flag]}")


def row_precision(mode: str, device: torch.device) -> str:
    """The precision the convolutions of ``mode`` compute in on ``device`` (the peak probe uses the same):
    the mode's half precision; else TF32 on CUDA when cuDNN may use it (``torch.backends.cudnn.allow_tf32``, on
    by default), so "% of peak" never exceeds 100 % because the probe ran slower than the model; else fp32."""
    half = parse_mode(mode) & set(HALF)
    if half:
        return next(iter(half))
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def to_precision(model: nn.Module, example: torch.Tensor, flags: frozenset[str]) -> tuple[nn.Module, torch.Tensor]:
    """Weights, buffers and input in the mode's half precision (a deployed model, not autocast); else unchanged.

    The detector's anchor points and box decoding then run in that precision too, as they would deployed.
    """
    dtype = next((HALF[f] for f in flags if f in HALF), None)
    if dtype is None:
        return model, example
    return model.to(dtype), example.to(dtype)


def prepare(model: nn.Module, mode: str, example: torch.Tensor) -> tuple[Callable[[torch.Tensor], Any], torch.Tensor]:
    """Apply a mode's conversions to a copy of ``model``; returns (callable, input in the matching layout).

    ``example``: ``[B, 3, H, W]`` in ``[0, 1]`` on the device to time on. The callable returns what the model
    returns (the backbone's feature list, the detector's detections).
    """
    flags = parse_mode(mode)
    check_device(flags, example.device)
    model = copy.deepcopy(model).eval()
    if "folded" in flags:
        model = fold_model(model)  # the peers' conv+BN fold too: "folded" compares like with like
    model, example = to_precision(model, example, flags)
    if "channels_last" in flags:
        model = model.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    fn = convert(model, flags & set(RUNTIMES), example)
    if "compile" in flags:
        # freezing: inductor folds weights as constants, pre-packs oneDNN conv weights and fuses conv + SiLU,
        # which is what makes it pay off for CPU inference (without it inductor calls plain aten convs).
        fn = torch.compile(fn, options={"freezing": True})
    return fn, example
