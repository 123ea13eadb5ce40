"""`python -m miras_lite.bench scan --quick` prints one table with a row per (bias, T)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_scan_quick_table():
    result = subprocess.run(
        [sys.executable, "-m", "miras_lite.bench", "scan", "--quick", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("#")]
    header, rule, *rows = lines
    assert header.split() == ["bias", "T", "loop_s", "exact_s", "chunked_s", "speedup"]
    assert set(rule) == {"-"}
    assert len(rows) == 6, result.stdout
    seen = set()
    for row in rows:
        bias, T, loop_s, exact_s, chunked_s, speedup = row.split()
        seen.add((bias, int(T)))
        assert float(loop_s) > 0 and float(chunked_s) > 0
        # only l2 has an exact chunk-parallel form (the delta rule); the other biases run the loop
        assert (exact_s != "-") == (bias == "l2") and (exact_s == "-" or float(exact_s) > 0)
        assert speedup.endswith("x") and float(speedup[:-1]) > 0
    assert seen == {(b, T) for b in ("l2", "lp", "huber[coord]") for T in (64, 256)}


def test_bench_requires_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "miras_lite.bench"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "command" in result.stderr


def test_bench_train_armt_quick(tmp_path):
    """`bench train --specs armt_qa1 --quick`: trains a tiny ARMT, saves the run, prints accuracy per length."""
    out = tmp_path / "armt"
    result = subprocess.run(
        [sys.executable, "-m", "miras_lite.bench", "train", "--quick", "--specs", "armt_qa1", "--threads", "1",
         "--armt-out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line.split() for line in result.stdout.splitlines() if line.strip() and not line.startswith("#")]
    header, rule, *rows = lines
    assert header == ["context", "samples", "accuracy", "target", "met", "stream", "tok/s", "load"]
    assert [int(r[0]) for r in rows] == [64, 256] and all(0 <= float(r[2]) <= 1 for r in rows)
    assert {"checkpoint.pt", "metrics.parquet", "run.json"} <= {p.name for p in out.iterdir()}
    evaluated = subprocess.run([sys.executable, "-m", "miras_lite", "eval", str(out), "--lengths", "64", "--samples", "2"],
                               cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    assert "held-out samples" in evaluated.stdout and "streamed accuracy vs context length" in evaluated.stdout
