"""cspwrc.atomic: a failed write names the file, keeps the previous one and leaves no temp file."""

import dataclasses
import json

import pytest
import torch

from cspwrc import atomic
from cspwrc.atomic import WriteError, atomic_write, write_json


def test_failed_write_keeps_previous_and_cleans_temp(tmp_path):
    # A writer failing half-way (what a full disk does: ENOSPC from write) must leave the old file intact.
    target = tmp_path / "results.csv"
    target.write_text("old")

    def full_disk(fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="results.csv.*No space left.*previous file"):
        atomic_write(target, full_disk)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_read_only_filesystem_simulated(tmp_path, monkeypatch):
    # As root, chmod does not stop writes; simulate EROFS where the temp file is created.
    def erofs(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", erofs)
    with pytest.raises(WriteError, match="metrics.json.*Read-only file system"):
        write_json(tmp_path / "metrics.json", {})
    assert not any(tmp_path.iterdir())


def test_write_json_converts_dataclasses_and_tensors(tmp_path):
    @dataclasses.dataclass
    class Row:
        name: str
        ap: float

    write_json(tmp_path / "m.json", {"rows": [Row("cat", 0.5)], "stats": torch.tensor([1.0, 2.0]), "x": float("nan")})
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["rows"] == [{"name": "cat", "ap": 0.5}] and data["stats"] == [1.0, 2.0]
    assert data["x"] != data["x"]  # NaN round-trips


def test_any_failure_of_the_writer_is_a_write_error(tmp_path):
    # torch.save on a full disk raises RuntimeError from its zip writer, not OSError: same outcome required.
    target = tmp_path / "last.state.pt"
    target.write_bytes(b"old")

    def torn_zip(fh):
        fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1984 vs 1878")

    with pytest.raises(WriteError, match="last.state.pt.*inline_container.*previous file") as info:
        atomic_write(target, torn_zip)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]
