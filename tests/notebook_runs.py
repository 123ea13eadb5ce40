"""Run a notebook from a test as a user would, as a script or as a report, and read what the report shows."""

import html
import os
import re
import subprocess
import sys

from browser import ROOT


def notebook_env(**extra):
    """The test's environment, headless and quiet (no update check, no matplotlib window), plus `extra`."""
    return {**os.environ, "MARIMO_SKIP_UPDATE_CHECK": "1", "MPLBACKEND": "Agg", **extra}


def make_report(notebook, output, env=None, train=False):
    """`python -m miras_lite report NOTEBOOK -o OUTPUT [--train]`, finished."""
    return subprocess.run([sys.executable, "-m", "miras_lite", "report", str(notebook), "-o", str(output),
                           *(["--train"] if train else [])],
                          cwd=ROOT, env=notebook_env(**(env or {})), capture_output=True, text=True, timeout=600)


def page_text(page):
    """The words a reader sees in a report page: no scripts, styles or tags, whitespace collapsed."""
    page = re.sub(r"<script.*?</script>|<style.*?</style>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def run_script(notebook, env=None):
    """`python NOTEBOOK` (marimo's script mode), finished."""
    return subprocess.run([sys.executable, str(notebook)], cwd=ROOT, env=notebook_env(**(env or {})),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
