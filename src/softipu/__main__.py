"""``python -m softipu``: the command line (see :mod:`softipu.cli`)."""

import sys

from softipu.cli import main

sys.exit(main())
