"""``python -m cspwrc.cli COMMAND ...``: the same as the ``cspwrc`` console script."""

import sys

from cspwrc.cli.main import main

sys.exit(main())
