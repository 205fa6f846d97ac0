"""Loaders: collate, reproducibility whatever the worker count, epoch/mosaic protocol, skip counting."""

from __future__ import annotations

import shutil

import torch

from cspwrc.data.config import build_datasets
from cspwrc.data.loader import build_loader, collate_detection, count_skipped, measure_throughput, prepare_epoch


def _batches(loader, epoch, mosaic=None):
    prepare_epoch(loader, epoch, mosaic)
    return [(images.clone(), [t["image_id"] for t in targets], [t["boxes"] for t in targets])
            for images, targets in loader]


def _same(a, b) -> bool:
    # The batch count first: a predicate, so another count is False rather than zip's ValueError. The boxes are
    # compared only once the image ids matched, so there are as many on both sides.
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and x[1] == y[1] and all(torch.equal(p, q) for p, q in zip(x[2], y[2], strict=True))
        for x, y in zip(a, b, strict=True))


def test_collate_stacks_images_and_keeps_targets():
    batch = [(torch.zeros(3, 32, 32, dtype=torch.uint8), {"image_id": i}) for i in range(3)]
    images, targets = collate_detection(batch)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert [t["image_id"] for t in targets] == [0, 1, 2]


def test_train_batches_are_reproducible_with_0_and_2_workers_and_change_per_epoch(shapes_yaml):
    train, _ = build_datasets(shapes_yaml, img=64, seed=3, progress=False)
    zero = build_loader(train, 8, train=True, workers=0, seed=5)
    two = build_loader(train, 8, train=True, workers=2, seed=5)
    epoch1 = _batches(zero, 1)
    assert _same(epoch1, _batches(two, 1))
    assert _same(epoch1, _batches(zero, 1))  # resume: the same epoch again gives the same data
    assert not _same(epoch1, _batches(zero, 2))
    assert len(epoch1) == 3 and epoch1[0][0].shape == (8, 3, 64, 64)


def test_close_mosaic_reaches_the_workers(shapes_yaml):
    train, _ = build_datasets(shapes_yaml, img=64, augment={"scale": 0.0, "translate": 0.0, "fliplr": 0.0},
                              progress=False)
    loader = build_loader(train, 4, train=False, workers=2)
    plain = build_loader(build_datasets(shapes_yaml, img=64, progress=False)[1], 4, train=False)
    without = _batches(loader, 0, mosaic=False)
    assert not _same(_batches(loader, 0, mosaic=True), without)
    # without mosaic/affine/flip the only change left is colour: boxes equal the letterboxed val boxes
    train_val = build_datasets(shapes_yaml, img=64, progress=False)[0]
    train_val.train = False
    reference = _batches(build_loader(train_val, 4, train=False), 0)
    assert all(all(torch.allclose(p, q) for p, q in zip(x[2], y[2], strict=True))
               for x, y in zip(without, reference, strict=True))
    assert plain.dataset.class_names == train.class_names


def test_distributed_sampler_splits_the_data(shapes_yaml):
    train, _ = build_datasets(shapes_yaml, img=64, progress=False)
    ids = []
    for rank in range(2):
        loader = build_loader(train, 4, train=True, distributed=True, rank=rank, world_size=2, seed=1)
        ids.append([i for batch in _batches(loader, 0) for i in batch[1]])
    assert len(ids[0]) == len(ids[1]) == 12 and not set(ids[0]) & set(ids[1])


def test_read_failures_in_workers_are_counted_in_the_main_process(shapes_yaml, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shapes_yaml.parent, root)
    train, _ = build_datasets(root / shapes_yaml.name, img=64, augment={"mosaic": 0.0}, progress=False)
    (root / "images" / "train" / "00003.jpg").write_bytes(b"broken after the check")
    loader = build_loader(train, 6, train=True, workers=2)
    prepare_epoch(loader, 0)
    skipped = sum(count_skipped(targets) for _, targets in loader)
    assert skipped == 1  # no mosaic: the broken file is read exactly once per epoch


def test_measure_throughput_reports_images_per_second(shapes_yaml):
    train, _ = build_datasets(shapes_yaml, img=64, progress=False)
    assert measure_throughput(train, batch_size=4, workers=0, batches=2) > 0


def test_persistent_workers_follow_the_epoch_and_mosaic_switch(shapes_yaml):
    """Workers started in epoch 1 still produce epoch 2's (and mosaic-off) data: the state is shared, not copied."""
    train, _ = build_datasets(shapes_yaml, img=64, seed=3, progress=False)
    zero = build_loader(train, 8, train=True, workers=0, seed=5)
    two = build_loader(train, 8, train=True, workers=2, seed=5)
    assert two.persistent_workers and not zero.persistent_workers
    for epoch, mosaic in ((1, True), (2, True), (3, False)):
        assert _same(_batches(two, epoch, mosaic), _batches(zero, epoch, mosaic)), epoch
