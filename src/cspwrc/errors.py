"""The project's error types and the exit codes every tool maps them to.

Every error a user can cause or meet is one of two kinds, and every CLI (``cspwrc.cli``) turns them into the
same exit codes and one-line messages:

* :class:`InputError` -- bad input (config, data, checkpoint, command line): exit 2, nothing was started or
  written. ``ConfigError``, ``DataError`` and ``CheckpointError`` are input errors.
* :class:`RunStopped` -- the run stopped (non-finite loss, unwritable output, a signal, a lost DDP peer): exit 3,
  the last good files are kept. ``WriteError`` and ``TrainingStopped`` are stops.

The concrete classes keep their historical builtin bases (``ValueError``/``RuntimeError``) so that code catching
those still works.
"""

from __future__ import annotations


class CspwrcError(Exception):
    """Base of the errors cspwrc raises on purpose; ``exit_code`` is what a CLI exits with."""

    exit_code = 1


class InputError(CspwrcError):
    """Bad input: the message names the file (or flag), the record and the fault. Exit 2."""

    exit_code = 2


class ConfigError(InputError, ValueError):
    """A fatal problem in a run config or detector options: names the source (file or command line), the key and
    the fault. (Also importable from :mod:`cspwrc.engine.config`, where it used to live.)"""


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
