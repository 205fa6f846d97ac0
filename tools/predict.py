#!/usr/bin/env python
"""``cspwrc predict`` from a source checkout: see :mod:`cspwrc.cli.predict` (``--help`` for its flags)."""

import sys

from cspwrc.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
