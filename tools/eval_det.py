#!/usr/bin/env python
"""``cspwrc val`` from a source checkout: see :mod:`cspwrc.cli.val` (``--help`` for its flags)."""

import sys

from cspwrc.cli.val import main

if __name__ == "__main__":
    sys.exit(main())
