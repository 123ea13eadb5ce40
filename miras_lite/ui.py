"""What the marimo notebooks share beyond the library itself."""

import os


def quick_mode():
    """True when a notebook should run its expensive cells at once, at a small size: when it runs as a
    script (`python notebooks/NAME.py`) or with MIRAS_LITE_QUICK=1 (static reports, browser tests).
    Otherwise those cells wait for their `mo.ui.run_button`."""
    import marimo as mo

    return os.environ.get("MIRAS_LITE_QUICK") == "1" or mo.app_meta().mode == "script"
