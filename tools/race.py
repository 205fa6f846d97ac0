#!/usr/bin/env python3
"""The race of cspwrc detectors against Ultralytics YOLO: see :mod:`cspwrc.experiments.race` (``--help``)."""

import sys

from cspwrc.experiments.race import main

if __name__ == "__main__":
    sys.exit(main())
