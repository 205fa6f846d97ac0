#!/usr/bin/env python
"""``cspwrc merge`` from a source checkout: see :mod:`cspwrc.cli.merge` (``--help`` for its flags)."""

import sys

from cspwrc.cli.merge import main

if __name__ == "__main__":
    sys.exit(main())
