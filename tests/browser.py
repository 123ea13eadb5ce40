"""Drive a marimo app in Debian's Chromium: start `marimo run` on a free port, open it with Playwright,
and collect the cell errors the kernel reports.

`marimo run` hides cells that raised (their output is dropped from the page), so errors are read from
the kernel's websocket messages instead: a cell output with mimetype ``application/vnd.marimo+error``
whose error is not one of the benign kinds (a cell stopped by `mo.stop` upstream, an interruption).
The server's stderr is kept too: a traceback there (e.g. from a thread) also counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "runs" / "screenshots"  # git-ignored: the latest screenshots, to look at
ERROR_MIMETYPE = "application/vnd.marimo+error"
BENIGN_ERRORS = {"ancestor-stopped", "ancestor-prevented", "interruption"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def marimo_app(notebook, timeout=60.0, env=None):
    """Serve `notebook` with `marimo run --headless` on 127.0.0.1; yields (url, stderr_path)."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="marimo-run-")) / "stderr.txt"
    server_env = {**os.environ, "MARIMO_SKIP_UPDATE_CHECK": "1", **(env or {})}
    with open(log, "w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "marimo", "run", str(notebook), "--headless", "--host", "127.0.0.1",
             "--port", str(port), "--no-token"],
            cwd=ROOT, env=server_env, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            # another process on that port would answer too: our server must still be alive
            if server.poll() is not None:
                raise RuntimeError(f"marimo run exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"marimo run did not open port {port} within {timeout} s")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            page = response.read().decode("utf-8", "replace")
        assert Path(notebook).name in page, f"{url} serves another app than {notebook} (port taken meanwhile?)"
        yield url, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def launch_chromium(playwright):
    """Debian's Chromium, headless (never a browser downloaded by Playwright)."""
    if not CHROMIUM.exists():
        raise AssertionError(f"{CHROMIUM} is missing: install Debian's chromium package "
                             "(`make browser`, which `make test` runs first)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


class KernelErrors:
    """Collects cell errors from the marimo websocket of `page` (attach before `page.goto`)."""

    def __init__(self, page):
        self.errors = []
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload):
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", "replace")
        if ERROR_MIMETYPE not in payload:
            return
        data = json.loads(payload).get("data", {})
        output = data.get("output") or {}
        if output.get("mimetype") != ERROR_MIMETYPE:
            return
        for error in output.get("data", []):
            if error.get("type") not in BENIGN_ERRORS:
                self.errors.append({"cell": data.get("cell_id"), **error})


def assert_no_errors(kernel_errors, stderr_path):
    assert not kernel_errors.errors, f"cells raised: {kernel_errors.errors}\nserver stderr:\n" + \
        stderr_path.read_text()[-4000:]
    assert "Traceback" not in stderr_path.read_text(), f"server stderr:\n{stderr_path.read_text()[-4000:]}"


def save_screenshot(page, tmp_path, name):
    """A full-page PNG in the test's tmp dir, copied to runs/screenshots/ (the latest one, to look at)."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / name)
    return shot
