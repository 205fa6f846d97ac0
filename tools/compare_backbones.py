#!/usr/bin/env python3
"""One detector recipe on several backbones x seeds, paired statistics: see :mod:`cspwrc.experiments.compare`."""

import sys

from cspwrc.experiments.compare import main

if __name__ == "__main__":
    sys.exit(main())
