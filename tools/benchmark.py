#!/usr/bin/env python
"""``cspwrc benchmark`` from a source checkout: see :mod:`cspwrc.cli.benchmark` (``--help`` for its flags)."""

import sys

from cspwrc.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
