#!/usr/bin/env python
"""The GPU measurement of issue 15 (start it with tools/gpu_check.sh): see :mod:`cspwrc.experiments.gpu_check`."""

import sys

from cspwrc.experiments.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
