"""Fixtures of the data tests: a private cache dir and a builder of small COCO-format data sets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cocofiles import write_coco

from cspwrc.data.shapes import ensure_shapes_dataset


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check caches and generated data sets go to the test's tmp dir, never ~/.cache."""
    monkeypatch.setenv("CSPWRC_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def coco_builder(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """``build(images, annotations, categories)`` -> ``(ann_file, image_dir)`` under tmp_path."""
    return lambda *args, **kw: write_coco(tmp_path / "coco", *args, **kw)


@pytest.fixture(scope="session")
def shapes_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small embedded shapes data set (24 train / 8 val images), generated once per session."""
    return ensure_shapes_dataset(tmp_path_factory.mktemp("shapes") / "s", num_train=24, num_val=8)
