#!/usr/bin/env python
"""``cspwrc convert`` from a source checkout: see :mod:`cspwrc.cli.convert` (``--help`` for its flags)."""

import sys

from cspwrc.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
