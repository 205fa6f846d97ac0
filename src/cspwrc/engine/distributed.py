"""DDP helpers: start from torchrun's environment, rank queries, gathering results on rank 0.

``torchrun --nproc_per_node N tools/train_det.py ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; a plain
``python tools/train_det.py`` runs as a single process and every helper here degrades to a no-op.
Backend: nccl for CUDA, gloo for CPU.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")


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
        from cspwrc.engine.config import ConfigError

        raise ConfigError(f"device: {name!r} is not a device name (auto, cpu, cuda, cuda:1, ...): {err}") from err
    if device.type == "cuda" and launched_by_torchrun():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            from cspwrc.engine.config import ConfigError

            raise ConfigError(f"device: {name!r} requested but CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            from cspwrc.engine.config import ConfigError

            raise ConfigError(f"device: {name!r} requested but this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        if device.index is not None:  # set_device needs an index; plain "cuda" keeps the current device
            torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, timeout_s: int = 1800) -> None:
    """Join the process group when started by torchrun (no-op otherwise)."""
    if not launched_by_torchrun() or is_dist():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


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


def gather_predictions(results: list[dict[str, Any]], image_ids: Sequence[int]) -> tuple[list[dict[str, Any]], list[int]]:
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
