"""The small real COCO-format data sets in ../shared/data beside the project root (read there, never copied)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a data set under ../shared/data, or skip the test with the reason."""
    root = SHARED_DATA / name
    if not (root / "annotations").is_dir():
        pytest.skip(f"real data set {name!r} not found at {root} (../shared/data beside the project root)")
    return root
