#!/usr/bin/env python
"""``cspwrc export`` from a source checkout: see :mod:`cspwrc.cli.export` (``--help`` for its flags)."""

import sys

from cspwrc.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
