"""``python -m miras_lite.sweeps SWEEP.toml ...``: `python -m miras_lite sweep` on its own (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
