"""cspwrc.atomic: a failed write names the file, keeps the previous one and leaves no temp file."""

import dataclasses
import json
import os
import stat

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

    with pytest.raises(WriteError, match=r"results\.csv.*No space left.*previous file"):
        atomic_write(target, full_disk)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_read_only_filesystem_simulated(tmp_path, monkeypatch):
    # As root, chmod does not stop writes; simulate EROFS where the temp file is created.
    def erofs(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", erofs)
    with pytest.raises(WriteError, match=r"metrics\.json.*Read-only file system"):
        write_json(tmp_path / "metrics.json", {})
    assert not any(tmp_path.iterdir())


def test_write_json_converts_dataclasses_and_tensors(tmp_path):
    @dataclasses.dataclass
    class Row:
        name: str
        ap: float

    write_json(tmp_path / "m.json", {"rows": [Row("cat", float("nan"))], "stats": torch.tensor([1.0, float("inf")]),
                                     "x": float("nan")})

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} is not JSON")

    data = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)
    assert data == {"rows": [{"name": "cat", "ap": None}], "stats": [1.0, None], "x": None}


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_any_failure_of_the_writer_is_a_write_error(tmp_path):
    # torch.save on a full disk raises RuntimeError from its zip writer, not OSError: same outcome required.
    target = tmp_path / "last.state.pt"
    target.write_bytes(b"old")

    def torn_zip(fh):
        fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1984 vs 1878")

    with pytest.raises(WriteError, match=r"last\.state\.pt.*inline_container.*previous file") as info:
        atomic_write(target, torn_zip)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]
