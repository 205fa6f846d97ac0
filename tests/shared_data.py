"""The small real COCO-format data sets in ../shared/data beside the project root (read there, never copied)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str, *needed: str) -> Path:
    """Path of a data set under ../shared/data, or skip the test with the reason.

    ``needed``: paths inside the data set the test reads (default: its annotations folder); the test is skipped
    when one is absent (or an empty folder), so a machine with only some data sets, or a partial copy of one,
    skips the tests of what it lacks instead of failing them.
    """
    root = SHARED_DATA / name
    for rel in needed or ("annotations",):
        path = root / rel
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            pytest.skip(f"real data set {name!r}: {rel} not found at {root} (../shared/data beside the project root)")
    return root
