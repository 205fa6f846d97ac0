#!/usr/bin/env python
"""``cspwrc train`` from a source checkout: see :mod:`cspwrc.cli.train` (``--help`` for its flags)."""

import sys

from cspwrc.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
