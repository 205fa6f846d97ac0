"""Batching: collate, seeded DataLoaders (optionally distributed), read-failure counting, throughput.

Epoch protocol for the trainer (each epoch, before iterating)::

    prepare_epoch(loader, epoch, mosaic=epoch < epochs - close_mosaic)
    for images, targets in loader:          # images uint8 [B, 3, img, img]
        skipped += count_skipped(targets)   # read failures substituted inside workers

Workers are persistent (started once, kept across epochs). They got their copy of the dataset when they
started, so the epoch and the mosaic switch cannot reach them as plain attributes: :class:`CocoDetection`
keeps both in a shared-memory tensor that ``set_epoch``/``set_mosaic`` write and every worker reads in
``__getitem__`` (each item's random stream is derived from ``(seed, epoch, index)``, so the data of an
epoch does not depend on the workers' history). A new epoch's items are requested only after
``prepare_epoch`` returned, when ``iter(loader)`` resumes the workers.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

Target = dict[str, Any]


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """``[(image uint8 [3, S, S], target), ...]`` -> ``(images uint8 [B, 3, S, S], [target, ...])``."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def seed_worker(worker_id: int) -> None:
    """Seed python/numpy in a worker from torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def auto_workers(device_type: str, world_size: int = 1) -> int:
    """``data.workers: auto``: loader processes sized to the CPUs this process may use, split between ranks.

    On CUDA the step runs on the GPU, so the CPUs feed it: one is left to the main process, at most 8.
    On CPU the step itself needs the cores: 2 workers (the former fixed default), fewer on a 1-CPU machine.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_rank = max(1, cpus // max(1, world_size))
    return min(8, max(1, per_rank - 1)) if device_type == "cuda" else min(2, per_rank)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0, seed: int = 0,
                 distributed: bool = False, rank: int = 0, world_size: int = 1, drop_last: bool | None = None,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader with :func:`collate_detection`, seeded shuffling and worker init.

    ``distributed=True`` uses a ``DistributedSampler`` (each rank gets ``len / world_size`` items; the
    sampler is re-seeded per epoch by :func:`prepare_epoch`). Workers are persistent (see module doc);
    ``pin_memory`` (for a CUDA step) lets the host-to-device copy run asynchronously.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler[int] | None = None
    if distributed:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                     drop_last=bool(drop_last) if drop_last is not None else False)
    elif train:
        # Its own generator: the loader's also draws the workers' base seed, but only when a new iterator is
        # made, which persistent workers skip; the shuffle must not depend on that.
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                        num_workers=workers, collate_fn=collate_detection, worker_init_fn=seed_worker,
                        generator=generator, drop_last=train if drop_last is None else drop_last,
                        persistent_workers=workers > 0, pin_memory=pin_memory)
    loader.base_seed = seed  # read by prepare_epoch
    return loader


def prepare_epoch(loader: DataLoader, epoch: int, mosaic: bool | None = None) -> None:
    """Call before iterating ``loader`` for ``epoch``: re-seeds the shuffle/sampler and the augmentation
    stream, and optionally switches mosaic (``False`` in the close-mosaic epochs)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif isinstance(loader.sampler, RandomSampler) and loader.sampler.generator is not None:
        # A seed per (seed, epoch) keeps shuffling reproducible after --resume, independent of past epochs.
        base = getattr(loader, "base_seed", 0)
        loader.sampler.generator.manual_seed(int(np.random.SeedSequence([base, epoch]).generate_state(1)[0]))
    dataset = loader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    if mosaic is not None and hasattr(dataset, "set_mosaic"):
        dataset.set_mosaic(mosaic)


def count_skipped(targets: Sequence[Target]) -> int:
    """Read failures substituted while producing this batch (sum of ``len(target["skipped"])``)."""
    return sum(len(t.get("skipped", ())) for t in targets)


def measure_throughput(dataset: Dataset, batch_size: int = 16, workers: int = 0, batches: int = 10,
                       warmup: int = 1) -> float:
    """Images per second the loader delivers (after ``warmup`` batches, which include worker start-up)."""
    loader = build_loader(dataset, batch_size, train=True, workers=workers, seed=0)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images, _ = next(it)
        except StopIteration:
            break
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)
