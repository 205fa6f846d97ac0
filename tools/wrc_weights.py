#!/usr/bin/env python
"""``cspwrc wrc-weights`` from a source checkout: see :mod:`cspwrc.cli.wrc_weights` (``--help`` for its flags)."""

import sys

from cspwrc.cli.wrc_weights import main

if __name__ == "__main__":
    sys.exit(main())
