"""Every marimo notebook passes `marimo check --strict` and runs top to bottom as a plain script."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    # headless and quiet: no browser, no telemetry, no stray matplotlib windows
    env.setdefault("MPLBACKEND", "Agg")
    env["MARIMO_SKIP_UPDATE_CHECK"] = "1"
    return env


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.py found"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_marimo_check_strict(notebook):
    result = subprocess.run(
        [sys.executable, "-m", "marimo", "check", "--strict", str(notebook)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"marimo check --strict failed:\n{output}"
    assert "warning" not in output.lower(), f"marimo check reported warnings:\n{output}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_as_script(notebook):
    result = subprocess.run(
        [sys.executable, str(notebook)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{notebook.name} exited {result.returncode}:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, f"{notebook.name} printed a traceback:\n{result.stderr[-4000:]}"
