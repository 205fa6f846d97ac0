"""One training process per run directory: ``RUN/run.lock`` holds the pid of the process training there.

The lock is an advisory ``flock`` on that file, so the kernel drops it when the process ends in any way
(``kill -9`` included): a stale file from a killed run never blocks ``--resume``, while a second live
process training into the same folder is refused with the holder's pid. Under DDP only rank 0 (the writer)
takes it. POSIX only; elsewhere the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from cspwrc.atomic import WriteError
from cspwrc.errors import InputError, shorten

try:
    import fcntl
except ImportError:  # Windows: no flock; the run directory is not guarded there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"


def is_held(run_dir: str | Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (a stale file from a killed run does not count)."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return False
    try:
        with path.open("r") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


class RunLock:
    """``acquire()`` ... ``release()`` the lock of ``run_dir``; acquire raises :class:`InputError` while a live
    process holds it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        if fcntl is None or self._fh is not None:
            return
        while True:
            try:
                fh = self.path.open("a+")
            except OSError as err:  # e.g. a read-only run directory: nothing could be saved there either
                raise WriteError(f"cannot create the run lock {shorten(self.path)}: {err}") from err
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = shorten(fh.read().strip() or "unknown", 40)
                fh.close()
                raise InputError(f"{shorten(self.path.parent)}: another live process (pid {holder}) is training in "
                                 f"this run directory (it holds {LOCK_NAME}). Wait for it to finish, stop it, or use "
                                 "another --out") from None
            # The holder before us may have removed the file between our open and our lock: lock the file
            # that is at the path now, not an orphaned inode.
            if self._same_file(fh):
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def _same_file(self, fh: IO[str]) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the file and drop the lock (removed while still held, so no one locks a deleted file).

        Never raises: in a folder that cannot be written (read-only, full) the file stays, which is harmless (a file
        nobody holds blocks no run, :func:`is_held`), and the error that stopped the run is the one reported.
        """
        if self._fh is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        self._fh.close()
        self._fh = None
