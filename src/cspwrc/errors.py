"""The project's error types and the exit codes every tool maps them to.

Every error a user can cause or meet is one of two kinds, and every CLI (``cspwrc.cli``) turns them into the
same exit codes and one-line messages:

* :class:`InputError` -- bad input (config, data, checkpoint, command line): exit 2, nothing was started or
  written. ``ConfigError``, ``DataError`` and ``CheckpointError`` are input errors.
* :class:`RunStopped` -- the run stopped (non-finite loss, unwritable output, a signal, a lost DDP peer): exit 3,
  the last good files are kept. ``WriteError`` and ``TrainingStopped`` are stops.

Two more live here because every error class of the project does: :class:`Fault` (what the validator found, before
a caller names where) and :class:`SampleReadError` (one image that cannot be read; the data side substitutes it).
The modules that raise them re-export them under their old names (``cspwrc.atomic.WriteError``,
``cspwrc.data.checks.DataError``, ``cspwrc.engine.trainer.TrainingStopped``, ...).

The concrete classes keep their historical builtin bases (``ValueError``/``RuntimeError``/``OSError``) so that
code catching those still works.
"""

from __future__ import annotations

import os


class CspwrcError(Exception):
    """Base of the errors cspwrc raises on purpose; ``exit_code`` is what a CLI exits with."""

    exit_code = 1


class InputError(CspwrcError):
    """Bad input: the message names the file (or flag), the record and the fault. Exit 2."""

    exit_code = 2


class ConfigError(InputError, ValueError):
    """A fatal problem in a run config or detector options: names the source (file or command line), the key and
    the fault. (Also importable from :mod:`cspwrc.engine.config`, where it used to live.)"""


class DataError(InputError, ValueError):
    """A fatal data or config problem: stops before training, names file, record and fault."""

    def __init__(self, file: str | os.PathLike[str], record: str, fault: str) -> None:
        self.file, self.record, self.fault = str(file), record, fault
        # Names in the message are shortened: a hostile 100,000-character file_name must not flood the log.
        super().__init__(f"{shorten(self.file)}: {shorten(record)}: {shorten(fault, 600)}")


class RunStopped(CspwrcError):
    """A run stopped on purpose; the message says why and what was kept. Exit 3."""

    exit_code = 3


def shorten(text: object, limit: int = 120) -> str:
    """``text`` as a string of at most ``limit`` characters (middle elided): names in messages stay readable."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]}[...]{text[-keep:]}"


class CheckpointError(InputError, RuntimeError):
    """A file is not a checkpoint this library will load, or pretrained weights cannot be had (exit 2).

    Writes fail with :class:`cspwrc.atomic.WriteError` instead. Defined here (re-exported by
    :mod:`cspwrc.engine.checkpoint`) so that the backbone can raise it without importing the engine.
    """


class WriteError(RunStopped, RuntimeError):
    """A file could not be written; the previous file (if any) is kept (:mod:`cspwrc.atomic`)."""


class TrainingStopped(RunStopped, RuntimeError):
    """The run stopped on purpose (non-finite loss, unwritable checkpoint, a signal, a lost DDP peer); the message
    says why and what was kept."""


class Fault(ValueError):
    """A key or value fault without its location (:mod:`cspwrc.validate`); callers re-raise it as their
    :class:`InputError`."""


class SampleReadError(OSError):
    """A per-sample problem found when reading an image (missing, corrupt, unreadable ...; raised by
    :mod:`cspwrc.data.image_io`); the dataset substitutes another sample, ``cspwrc predict`` skips the file."""
