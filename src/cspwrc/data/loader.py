"""Batching: collate, seeded DataLoaders (optionally distributed), read-failure counting, throughput.

Epoch protocol for the trainer (each epoch, before iterating)::

    prepare_epoch(loader, epoch, mosaic=epoch < epochs - close_mosaic)
    for images, targets in loader:          # images uint8 [B, 3, img, img]
        skipped += count_skipped(targets)   # read failures substituted inside workers

Workers receive a copy of the dataset when the iterator starts, so ``persistent_workers`` must stay off
(the default here) for ``set_epoch``/``set_mosaic`` to reach them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

Target = dict[str, Any]


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """``[(image uint8 [3, S, S], target), ...]`` -> ``(images uint8 [B, 3, S, S], [target, ...])``."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def seed_worker(worker_id: int) -> None:
    """Seed python/numpy in a worker from torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0, seed: int = 0,
                 distributed: bool = False, rank: int = 0, world_size: int = 1, drop_last: bool | None = None
                 ) -> DataLoader:
    """A DataLoader with :func:`collate_detection`, seeded shuffling and worker init.

    ``distributed=True`` uses a ``DistributedSampler`` (each rank gets ``len / world_size`` items; the
    sampler is re-seeded per epoch by :func:`prepare_epoch`). Workers are not persistent (see module doc).
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                     drop_last=bool(drop_last) if drop_last is not None else False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                        num_workers=workers, collate_fn=collate_detection, worker_init_fn=seed_worker,
                        generator=generator, drop_last=train if drop_last is None else drop_last,
                        persistent_workers=False, pin_memory=False)
    loader.base_seed = seed  # read by prepare_epoch
    return loader


def prepare_epoch(loader: DataLoader, epoch: int, mosaic: bool | None = None) -> None:
    """Call before iterating ``loader`` for ``epoch``: re-seeds the shuffle/sampler and the augmentation
    stream, and optionally switches mosaic (``False`` in the close-mosaic epochs)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif loader.generator is not None:
        # A seed per (seed, epoch) keeps shuffling reproducible after --resume, independent of past epochs.
        base = getattr(loader, "base_seed", 0)
        loader.generator.manual_seed(int(np.random.SeedSequence([base, epoch]).generate_state(1)[0]))
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
