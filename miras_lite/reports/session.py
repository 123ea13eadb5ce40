"""Run a notebook once, as a report, and return what every cell showed.

`marimo export html` runs the notebook top to bottom (here with MIRAS_LITE_REPORT set to the report mode,
`ui.report_mode`: "shipped" shows the trained models the project ships and the runs saved under runs/,
"full" trains at the settings the page shows) and embeds the session snapshot in its page: per cell, in notebook
order, a list of outputs ``{"type": "data", "data": {mimetype: content}}`` or ``{"type": "error",
...}``. Only that snapshot is kept; marimo's page itself loads its frontend from a CDN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..ui import REPORT_MODES

MOUNT_CONFIG = "__MARIMO_MOUNT_CONFIG__"
FROZEN = "Object.freeze("


@dataclass
class NotebookRun:
    title: str
    cells: list  # the snapshot's cells: {"id", "outputs": [...], "console": [...]}
    mode: str  # the report mode it ran in (`ui.report_mode`)

    @property
    def errors(self):
        """The error outputs of all cells: ``{"cell": id, "type": "error", "ename": ..., "evalue": ...}``."""
        return [{"cell": cell["id"], **output} for cell in self.cells for output in cell["outputs"]
                if output["type"] == "error"]


def mount_config(page):
    """The JSON object marimo's exported page passes to its frontend."""
    mount = page.find(MOUNT_CONFIG)
    start = page.find(FROZEN, mount)
    if mount < 0 or start < 0:
        raise ValueError("the exported page has no marimo mount config (is marimo 0.25.2 installed?)")
    config, _ = json.JSONDecoder().raw_decode(page, start + len(FROZEN))
    return config


def run_notebook(notebook, mode="shipped", timeout=600):
    """Execute `notebook` with ``marimo export html`` in report `mode` and return its `NotebookRun`. In "full"
    mode its training progress goes to this process's stderr and there is no time limit."""
    notebook = Path(notebook)
    if notebook.suffix != ".py" or not notebook.is_file():
        raise ValueError(f"notebook: {notebook} is not a marimo notebook file (NAME.py)")
    if mode not in REPORT_MODES:
        raise ValueError(f"mode={mode!r} is not a report mode; allowed: {', '.join(REPORT_MODES)}")
    env = {**os.environ, "MIRAS_LITE_REPORT": mode, "MARIMO_SKIP_UPDATE_CHECK": "1"}
    env.pop("MIRAS_LITE_QUICK", None)
    full = mode == "full"
    with tempfile.TemporaryDirectory(prefix="miras-report-") as tmp:
        page = Path(tmp) / "marimo.html"
        # exit status 1 means "exported, but some cells raised": the snapshot holds those errors
        done = subprocess.run(
            [sys.executable, "-m", "marimo", "export", "html", "--no-include-code", "-f", str(notebook),
             "-o", str(page)],
            env=env, stdout=subprocess.PIPE, stderr=None if full else subprocess.PIPE, text=True,
            timeout=None if full else timeout, stdin=subprocess.DEVNULL,
        )
        if not page.exists():
            raise RuntimeError(f"marimo export html {notebook} failed ({done.returncode}):\n{(done.stderr or '')[-3000:]}")
        config = mount_config(page.read_text())
    title = config["appConfig"].get("app_title") or notebook.stem
    return NotebookRun(title=title, cells=config["session"]["cells"], mode=mode)
