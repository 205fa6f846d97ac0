"""Atomic file writes, shared by checkpoints, run records and data tools.

A write goes to a temp file in the target's folder, is flushed and fsync'ed, then ``os.replace``d over the old
file and the folder is fsync'ed: a crash at any moment leaves either the old or the new file, never a torn one.
Any failed write raises :class:`WriteError`, which names the file, and leaves the previous file untouched; no temp
file is left behind. "Any" matters: a full disk surfaces as ``OSError`` from ``write``/``fsync``, but as a
``RuntimeError`` from inside ``torch.save``'s zip writer (``inline_container.cc``), so the callback's failure is
converted whatever its type and the exit code does not depend on where the disk filled up.
The file gets the mode a plain ``open(path, "w")`` would (0644 under the usual umask 022), not the 0600 of
the temp file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from cspwrc.errors import InputError, WriteError, shorten  # WriteError: re-exported (its old home)

__all__ = ["WriteError", "atomic_write", "make_dir", "write_bytes", "write_json"]

# Test hook: a process sleeps this many seconds between writing a temp file and renaming it, so the reliability
# tests can kill -9 a training run exactly inside a checkpoint write. Unset in normal use.
PAUSE_ENV = "CSPWRC_CKPT_PAUSE_S"


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk (POSIX); not possible on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask_mode() -> int:
    """0666 minus the process umask: the mode ``open(path, "w")`` gives a new file."""
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(fileobj)`` atomically; raise :class:`WriteError` on failure."""
    path = Path(path)
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # every output path may name a folder not made yet
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if os.name == "posix":  # mkstemp creates 0600; run files are meant to be readable like any other output
            os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        if pause > 0:
            time.sleep(pause)
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except WriteError:
        raise
    except Exception as err:  # any: see the module doc, the failure's type depends on the writer
        raise WriteError(f"could not write {shorten(path)}: {shorten(err, 300)}; the previous file (if any) "
                         "is kept") from err
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def make_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create an output folder: :class:`InputError` when ``path`` is an existing file (the ``flag`` that named it
    is in the message), :class:`WriteError` when it cannot be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {shorten(path)} is a file, not a folder; pick another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot create the {flag} folder {shorten(path)}: {err}") from err
    return path


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Strict JSON: dataclasses, tensors and arrays (``tolist``) converted, NaN/inf written as ``null``."""
    write_bytes(path, json.dumps(_jsonable(data), indent=indent, default=str, allow_nan=False).encode())


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values; non-finite floats become None (bare NaN is not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return obj
