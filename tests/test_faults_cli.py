"""The fault suite (issue 14), part 2: `python -m miras_lite train` as a process under faults: SIGKILL at random
moments, Ctrl-C and SIGTERM (once, and twice), two runs into one --out (at once, and one after the other), and
a disk that stops taking writes (a file-size limit, what a full disk looks like to the writer).

Each test starts real processes (a few seconds each, most of it importing torch), hence the slow mark.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import miras_lite as ml
from miras_lite import checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = ["--task", "mqar", "--preset", "gated_deltanet", "--batch-size", "4", "--d-model", "16", "--layers", "1",
        "--heads", "1", "--vocab-size", "64", "--seq-len", "32", "--num-pairs", "4", "--train-examples", "64",
        "--test-examples", "8", "--threads", "1"]
# steps of about 0.8 s: a second signal lands inside a step
SLOW = ["--task", "mqar", "--preset", "gated_deltanet", "--batch-size", "256", "--d-model", "32", "--layers", "1",
        "--heads", "1", "--vocab-size", "256", "--seq-len", "256", "--num-pairs", "8", "--train-examples", "256",
        "--test-examples", "8", "--threads", "1", "--eval-every", "0"]


def train(out, *args, **popen):
    return subprocess.Popen([sys.executable, "-m", "miras_lite", "train", *args, "--out", str(out)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


class Lines:
    """Collects a process's stderr lines in a thread; `wait_for(text)` blocks until a line contains it."""

    def __init__(self, process):
        self.lines, self.process = [], process
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} within {timeout} s: {''.join(self.lines)[-3000:]}")

    def text(self):
        self.thread.join(30)
        return "".join(self.lines)


def assert_intact(out):
    """Whatever a killed run left: every file it wrote reads whole and checks out."""
    metrics = pl.read_parquet(out / "metrics.parquet")
    payload = checkpoint.load_checkpoint(out / "checkpoint.pt")  # verifies the checksum
    assert payload["extra"]["step"] <= metrics.height and payload["extra"]["step"] % 3 == 0
    json.loads((out / "run.json").read_text())
    return metrics, payload


def test_sigkill_at_random_moments_never_tears_a_file(tmp_path):
    """metrics.parquet was rewritten in place: a SIGKILL tore it in 1 of 30 runs, losing the whole history."""
    out, rng = tmp_path / "run", random.Random(0)
    for attempt in range(5):
        process = train(out, *TINY, "--steps", "100000", "--eval-every", "3", *(["--overwrite"] if attempt else []))
        deadline = time.monotonic() + 120
        while not (out / "metrics.parquet").exists() or not (out / "checkpoint.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        assert_intact(out)
    result = subprocess.run([sys.executable, "-m", "miras_lite", "train", *TINY, "--steps", "3", "--eval-every", "3",
                             "--quiet", "--overwrite", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics, payload = assert_intact(out)
    assert metrics.height == 3 and payload["extra"]["complete"] is True
    assert not list(out.glob(".*.tmp"))  # the temporary files of the killed writes are gone


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_the_last_step_and_exits_130_with_one_line(tmp_path, signum):
    """It printed a traceback and lost everything since the last checkpoint (~300 steps), and the checkpoint did
    not record that it was interrupted."""
    out = tmp_path / "run"
    process = train(out, *TINY, "--steps", "100000", "--eval-every", "0")
    lines = Lines(process)
    lines.wait_for("step ")
    time.sleep(0.5)
    process.send_signal(signum)
    process.wait(120)
    stderr = lines.text()
    assert process.returncode == 130, stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"interrupted by {name}: saving after this step" in stderr and "Traceback" not in stderr
    metrics = pl.read_parquet(out / "metrics.parquet")
    model, extra = ml.load(out / "checkpoint.pt", return_extra=True)
    assert extra["step"] == metrics.height >= 1  # nothing lost: the checkpoint is of the last step run
    assert extra["stopped"] == f"interrupted by {name}" and extra["complete"] is False


def test_a_second_signal_stops_at_once_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    process = train(out, *SLOW, "--steps", "100000")
    lines = Lines(process)
    lines.wait_for("step ")
    process.send_signal(signal.SIGINT)
    lines.wait_for("saving after this step")  # the first signal's handler ran: the second is a second one
    process.send_signal(signal.SIGINT)
    process.wait(120)
    stderr = lines.text()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "stopped at once by a second signal" in stderr or "saved" in process.stdout.read()
    if (out / "checkpoint.pt").exists():
        ml.load(out / "checkpoint.pt")


def test_two_runs_into_one_out_at_once_the_second_is_refused_before_writing(tmp_path):
    """Both ran: one lost its files (FileNotFoundError on the shared temporary file, 5 of 5 tries) and run.json of one
    sat next to the other's checkpoint (2 of 5)."""
    out = tmp_path / "run"
    first = train(out, *TINY, "--steps", "100000", "--eval-every", "0", "--seed", "1")
    lines = Lines(first)
    lines.wait_for("step ")
    second = subprocess.run([sys.executable, "-m", "miras_lite", "train", *TINY, "--steps", "3", "--seed", "2",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr[-3000:]
    assert f"is in use by a run of pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert json.loads((out / "run.json").read_text())["seed"] == 1  # the first run's, untouched
    first.send_signal(signal.SIGINT)
    first.wait(120)
    assert first.returncode == 130, lines.text()[-3000:]
    _, extra = ml.load(out / "checkpoint.pt", return_extra=True)
    assert extra["fit"]["seed"] == 1 and json.loads((out / "run.json").read_text())["seed"] == 1


def test_a_run_into_a_directory_holding_another_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "miras_lite", "train", *TINY, "--steps", "3", "--quiet", *args,
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert run("--seed", "1").returncode == 0
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.parquet", "run.json")}
    refused = run("--seed", "2")
    assert refused.returncode == 1 and "already holds a run" in refused.stderr and "--overwrite" in refused.stderr
    assert all((out / name).read_bytes() == data for name, data in before.items())
    replaced = run("--seed", "2", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    _, extra = ml.load(out / "checkpoint.pt", return_extra=True)
    assert extra["fit"]["seed"] == 2 and json.loads((out / "run.json").read_text())["seed"] == 2


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_that_stops_taking_writes_is_one_error_line_naming_the_file(tmp_path):
    """It aborted with a raw torch error ("PytorchStreamWriter failed writing file")."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "miras_lite", "train", *TINY, "--steps", "20", "--eval-every", "5",
                             "--quiet", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            preexec_fn=_file_size_limit(12_000), env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    assert f"cannot write {out / 'checkpoint.pt'}: File too large" in error[0]
    assert "the run stopped at step 5" in error[0] and "keeps no checkpoint of this run" in error[0]
    assert pl.read_parquet(out / "metrics.parquet").height == 5 and not (out / "checkpoint.pt").exists()
