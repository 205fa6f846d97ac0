"""The run directory: which folder a run writes to, and taking it over (lock, what a killed run left).

A new run does not overwrite an old one: :func:`next_free_run_dir` picks ``runs/det2``, ``runs/det3``, ... (Ultralytics'
``increment_path``), rank 0 choosing for every DDP rank (:func:`choose_run_dir`). :func:`open_run_dir` creates the
folder, takes its :class:`~cspwrc.engine.lock.RunLock` (one training process per folder) and only then removes the
temp files a killed run left, never those of a live run.
"""

from __future__ import annotations

from pathlib import Path

from cspwrc.atomic import WriteError, make_dir
from cspwrc.engine import distributed as dist
from cspwrc.engine.lock import LOCK_NAME, RunLock, is_held
from cspwrc.errors import shorten

__all__ = ["choose_run_dir", "next_free_run_dir", "open_run_dir", "remove_stale_temp_files"]


def next_free_run_dir(path: Path) -> Path:
    """``path`` if it is not a folder holding files, else the first free ``path2``, ``path3``, ... (Ultralytics'
    increment_path: ``runs/det`` -> ``runs/det2``). A folder with nothing but hidden files and a stale lock (what a
    run killed before its first checkpoint leaves) is reused, one a live run holds is not; a file named ``path`` is
    left to the run's own output checks.
    """
    def taken(p: Path) -> bool:
        if not p.exists():
            return False
        files = [c for c in p.iterdir() if not c.name.startswith(".") and c.name != LOCK_NAME] if p.is_dir() else [p]
        return bool(files) or is_held(p)

    if not path.is_dir():
        return path
    n = 2
    candidate = path
    while taken(candidate):
        candidate = path.with_name(f"{path.name}{n}")
        n += 1
    return candidate


def choose_run_dir(out: str) -> str:
    """The folder of a new run asked to write to ``out``: :func:`next_free_run_dir`, picked by rank 0 for all ranks
    (each picking its own could race to different numbers). A collective under DDP."""
    return dist.broadcast_object(str(next_free_run_dir(Path(out))) if dist.is_main() else None)


def open_run_dir(out: Path, lock: RunLock) -> None:
    """Create ``out`` and take ``lock`` (rank 0 only, the writer), then remove a killed run's temp files."""
    if not dist.is_main():
        return
    make_dir(out, "--out (train.out)")
    lock.acquire()  # before the clean-up below: never remove a live run's temp files
    remove_stale_temp_files(out)


def remove_stale_temp_files(folder: Path) -> None:
    """Temp files a killed run left behind (``.NAME.XXXX.tmp`` from atomic_write); never a real checkpoint.

    A file that cannot be removed means a folder that cannot be written: :class:`WriteError` (exit 3) now rather
    than at the first checkpoint.
    """
    for path in folder.glob(".*.tmp"):
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise WriteError(f"cannot remove the stale temp file {shorten(path)} of a killed run: {err}; the run "
                             "folder is not writable") from err
