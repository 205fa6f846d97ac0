"""Shared test fixtures."""

from pathlib import Path

import pytest
import torch

# ../shared/data beside the project root holds the small real COCO-format sets (read-only, never copied).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a data set under ../shared/data, or skip the test with the reason."""
    root = SHARED_DATA / name
    if not (root / "annotations").is_dir():
        pytest.skip(f"real data set {name!r} not found at {root} (../shared/data beside the project root)")
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
