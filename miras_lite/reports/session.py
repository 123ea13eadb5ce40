"""Run a notebook once, in quick mode, and return what every cell showed.

`marimo export html` runs the notebook top to bottom (here with MIRAS_LITE_QUICK=1, so gated training
runs at once at a small size) and embeds the session snapshot in its page: per cell, in notebook
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

MOUNT_CONFIG = "__MARIMO_MOUNT_CONFIG__"
FROZEN = "Object.freeze("


@dataclass
class NotebookRun:
    title: str
    cells: list  # the snapshot's cells: {"id", "outputs": [...], "console": [...]}

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


def run_notebook(notebook, timeout=600):
    """Execute `notebook` with ``marimo export html`` in quick mode and return its `NotebookRun`."""
    notebook = Path(notebook)
    if notebook.suffix != ".py" or not notebook.is_file():
        raise ValueError(f"notebook: {notebook} is not a marimo notebook file (NAME.py)")
    env = {**os.environ, "MIRAS_LITE_QUICK": "1", "MARIMO_SKIP_UPDATE_CHECK": "1"}
    with tempfile.TemporaryDirectory(prefix="miras-report-") as tmp:
        page = Path(tmp) / "marimo.html"
        # exit status 1 means "exported, but some cells raised": the snapshot holds those errors
        done = subprocess.run(
            [sys.executable, "-m", "marimo", "export", "html", "--no-include-code", "-f", str(notebook),
             "-o", str(page)],
            env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if not page.exists():
            raise RuntimeError(f"marimo export html {notebook} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        config = mount_config(page.read_text())
    title = config["appConfig"].get("app_title") or notebook.stem
    return NotebookRun(title=title, cells=config["session"]["cells"])
