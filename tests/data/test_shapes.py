"""Embedded shapes data set: deterministic, exact boxes, atomic cached generation."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from cspwrc.data import shapes
from cspwrc.data.checks import verify_coco


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_seed_dependent(tmp_path):
    a = shapes.generate_shapes(tmp_path / "a", num_train=6, num_val=3)
    b = shapes.generate_shapes(tmp_path / "b", num_train=6, num_val=3)
    c = shapes.generate_shapes(tmp_path / "c", num_train=6, num_val=3, seed=1)
    assert _digest(a.parent) == _digest(b.parent)
    assert _digest(a.parent) != _digest(c.parent)


def test_boxes_are_the_exact_extent_of_the_shapes():
    for i in range(20):
        masks: list[np.ndarray] = []
        image, objects = shapes.make_image(0, 0, i, masks)
        assert 1 <= len(objects) <= 5 and len(masks) == len(objects)
        h, w = image.shape[:2]
        for (cls, (x, y, bw, bh)), mask in zip(objects, masks, strict=True):
            assert 0 <= cls < len(shapes.CLASSES) and 20 <= max(bw, bh) <= 143
            ys, xs = np.nonzero(mask)
            assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        # the last drawn object is not covered by anything: its pixels are the saturated object colour
        pixels = image[masks[-1] > 0].astype(int)
        assert (pixels.max(axis=1) - pixels.min(axis=1)).min() > 60


def test_ensure_is_cached_atomic_and_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("CSPWRC_CACHE", str(tmp_path / "cache"))
    yaml_path = shapes.ensure_shapes_dataset(num_train=8, num_val=4)
    assert yaml_path.parent.parent == tmp_path / "cache" and yaml_path.parent.name.startswith("shapes-v1")
    assert [p.name for p in yaml_path.parent.parent.iterdir()] == [yaml_path.parent.name]  # no temp dirs left
    stamp = yaml_path.stat().st_mtime_ns
    assert shapes.ensure_shapes_dataset(num_train=8, num_val=4) == yaml_path and yaml_path.stat().st_mtime_ns == stamp
    for split, n in (("train", 8), ("val", 4)):
        ann = yaml_path.parent / "annotations" / f"instances_{split}.json"
        report = verify_coco(ann, yaml_path.parent / "images" / split, progress=False)
        assert len(report.images) == n and not report.skipped
        data = json.loads(ann.read_text())
        assert [c["name"] for c in data["categories"]] == list(shapes.CLASSES)
        assert np.all([a["bbox"][2] > 0 for a in data["annotations"]])
