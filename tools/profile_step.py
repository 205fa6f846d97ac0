#!/usr/bin/env python3
"""Where one training step goes: see :mod:`cspwrc.experiments.step_profile` (``--help``)."""

import sys

from cspwrc.experiments.step_profile import main

if __name__ == "__main__":
    sys.exit(main())
