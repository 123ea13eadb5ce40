"""What the marimo notebooks share beyond the library itself."""

import os
import sys


def quick_mode():
    """True when a notebook should run its expensive cells at once, at a small size: when it runs as a
    script (`python notebooks/NAME.py`) or with MIRAS_LITE_QUICK=1 (static reports, browser tests).
    Otherwise those cells wait for their `mo.ui.run_button`."""
    import marimo as mo

    if os.environ.get("MIRAS_LITE_QUICK") == "1":
        return True
    mode = mo.app_meta().mode
    if mode is None:  # in the setup cell marimo has not set the mode yet: a script's __main__ is the notebook
        return isinstance(getattr(sys.modules["__main__"], "app", None), mo.App)
    return mode == "script"
