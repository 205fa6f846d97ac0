"""Command-line tools: ``cspwrc train|val|predict|export|benchmark|merge|convert|wrc-weights`` (and ``tools/*.py``).

Every command is a module here with ``main(argv: list[str] | None = None) -> int``; ``tools/*.py`` are thin
shims over the same functions, so a flag behaves the same from the console script and from a source checkout.
:func:`guarded` is the one error path they share: cspwrc's errors become one message and an exit code
(:mod:`cspwrc.errors`: 2 bad input, 3 run stopped), the traceback only with ``--debug`` or ``CSPWRC_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from cspwrc.errors import CspwrcError, RunStopped

DEBUG_ENV = "CSPWRC_DEBUG"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an error (or set {DEBUG_ENV}=1)")


def guarded(body: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command's body; a :class:`CspwrcError` becomes one line on stderr and its exit code."""
    try:
        return body() or 0
    except CspwrcError as err:
        if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"{'stopped' if isinstance(err, RunStopped) else 'error'}: {err}", file=sys.stderr)
        return err.exit_code
