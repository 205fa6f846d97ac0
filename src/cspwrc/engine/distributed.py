"""DDP helpers: start from torchrun's environment, rank queries, gathering results on rank 0; the device and
its autocast dtype (:func:`resolve_device`, :func:`resolve_amp`), a batch moved there (:func:`to_device`).

``torchrun --nproc_per_node N tools/train_det.py ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; a plain
``python tools/train_det.py`` runs as a single process and every helper here degrades to a no-op.
Backend: nccl for CUDA, gloo for CPU.

Faults: :func:`agree` runs a setup step on every rank and makes every rank raise the same project error when
any rank found one (a refused lock or a bad file seen by one process stops all with the same exit code);
:func:`peer_lost` recognises a collective that failed because another process died (gloo reports a closed
connection at once, a hung peer hits the process group's timeout), which the trainer turns into a stop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from cspwrc.errors import ConfigError, CspwrcError, InputError, RunStopped, shorten

T = TypeVar("T")
TIMEOUT_ENV = "CSPWRC_DDP_TIMEOUT_S"


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when available; under torchrun each process takes cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device: {name!r} is not a device name (auto, cpu, cuda, cuda:1, ...): {err}") from err
    if device.type == "cuda" and launched_by_torchrun():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if not torch.cuda.is_available():
                raise ConfigError(f"device: {name!r} requested but CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
                raise ConfigError(f"device: {name!r} requested but this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        if device.index is not None:  # set_device needs an index; plain "cuda" keeps the current device
            torch.cuda.set_device(device)
    return device


def resolve_amp(setting: bool | str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` -> the autocast dtype on this device, or None (fp32). auto/true: bf16 where the GPU has it."""
    if device.type != "cuda" or setting in (False, "off"):
        return None
    if setting in (True, "auto"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.amp: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or auto")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def to_device(images: torch.Tensor, targets: list[dict[str, Any]], device: torch.device, channels_last: bool = False
              ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """A loader's batch on ``device``: ``images uint8 [B, 3, S, S]`` -> ``float32`` in [0, 1] (NHWC with
    ``channels_last``), the targets' ``boxes`` and ``labels``. Pinned batches (CUDA) copy asynchronously; uint8
    travels, the float conversion runs on the device."""
    images = images.to(device, non_blocking=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(dtype=torch.float32, memory_format=fmt).div_(255.0)
    targets = [{"boxes": t["boxes"].to(device, non_blocking=True),
                "labels": t["labels"].to(device, non_blocking=True)} for t in targets]
    return images, targets


def init_distributed(device: torch.device, timeout_s: int = 1800) -> None:
    """Join the process group when started by torchrun (no-op otherwise).

    ``timeout_s`` (or ``$CSPWRC_DDP_TIMEOUT_S``) bounds every collective: a rank that hangs (rather than dies,
    which the others notice at once) stops the others after this long. It must exceed the longest time one rank
    works alone, i.e. rank 0's COCOeval of the val set.
    """
    if not launched_by_torchrun() or is_dist():
        return
    timeout_s = int(os.environ.get(TIMEOUT_ENV) or timeout_s)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def agree(step: Callable[[], T]) -> T:
    """Run ``step`` on every rank; if any rank raised a :class:`CspwrcError`, raise one on every rank.

    The failing rank re-raises its own error; the others raise an error of the same exit code naming that rank
    and its message. Must be called by all ranks (it is a collective); a no-op wrapper outside DDP.
    """
    if not is_dist():
        return step()
    error: CspwrcError | None = None
    result: Any = None
    try:
        result = step()
    except CspwrcError as err:
        error = err
    found: list[Any] = [None] * world_size()
    try:
        tdist.all_gather_object(found, None if error is None else (error.exit_code, str(error)))
    except RuntimeError as err:  # a rank crashed in its setup (a bug: it printed its own traceback)
        if not peer_lost(err):
            raise
        raise RunStopped(peer_lost_message(err)) from err
    if error is not None:
        raise error
    for peer, report in enumerate(found):
        if report is not None:
            code, message = report
            raise (InputError if code == InputError.exit_code else RunStopped)(f"rank {peer}: {message}")
    return result


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (one tiny all-reduce; a no-op outside DDP)."""
    if not is_dist():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else None
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


# What gloo/nccl/the store say when a peer process died or stopped answering.
_PEER_LOST = ("connection closed by peer", "connection reset", "broken pipe", "timed out", "timeout",
              "connection refused", "socket", "nccl communicator was aborted")


def peer_lost(err: BaseException) -> bool:
    """Whether ``err`` (raised by a collective or DDP's backward) means another rank is gone."""
    if not is_dist():
        return False
    if isinstance(err, getattr(tdist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err).lower() for s in _PEER_LOST)


def peer_lost_message(err: BaseException) -> str:
    return (f"rank {rank()}: lost contact with another process of this run ({shorten(str(err).splitlines()[0], 200)}"
            "); a rank died or hung, so this one stops too")


def cleanup() -> None:
    if is_dist():
        tdist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        tdist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s object on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (for logging loss components consistently)."""
    if not is_dist():
        return values
    out = values.detach().clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out / world_size()


def all_reduce_sum_int(value: int) -> int:
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return int(t.item())


def gather_predictions(
    results: list[dict[str, Any]], image_ids: Sequence[int]
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every rank's COCO results on rank 0 (other ranks get empty lists).

    DistributedSampler pads the last shard with repeated images; those would be counted twice by COCOeval,
    so each image's detections are kept from the first rank that reported it.
    """
    if not is_dist():
        return results, list(image_ids)
    shards: list[Any] = [None] * world_size()
    tdist.all_gather_object(shards, (results, list(image_ids)))
    if not is_main():
        return [], []
    merged: list[dict[str, Any]] = []
    seen: set[int] = set()
    for shard_results, shard_ids in shards:
        new_ids = set(shard_ids) - seen
        merged.extend(r for r in shard_results if r["image_id"] in new_ids)
        seen |= new_ids
    return merged, sorted(seen)
