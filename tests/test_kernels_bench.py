"""`python -m benchmarks.kernels --quick` runs every method (the kernels interpreted on a CPU) and writes its files."""

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.kernels


def test_quick_bench_times_every_method_and_writes_parquet_and_chart(tmp_path):
    out = tmp_path / "bench.parquet"
    command = [sys.executable, "-m", "benchmarks.kernels", "--quick", "--repeats", "1", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pl.read_parquet(out)
    expected = {("torch/recurrent", "gated_deltanet"), ("torch/delta_rule", "gated_deltanet"),
                ("triton/recurrent", "gated_deltanet"), ("triton/delta_rule", "gated_deltanet")}
    expected |= {(method, bias) for method in ("torch/minibatch", "triton/minibatch") for bias in ("l2", "lp", "huber")}
    expected |= {(method, f"mlp-{bias}") for method in ("torch/mlp_dual", "triton/mlp_minibatch")
                 for bias in ("l2", "lp", "huber")}
    assert set(frame.select("method", "spec").unique().iter_rows()) == expected
    assert set(frame["passes"]) == {"fwd", "fwd+bwd"}
    assert (frame["seconds"] > 0).all() and (frame["tokens_per_s"] > 0).all()
    assert frame.filter(pl.col("method").str.starts_with("triton/"))["interpreted"].all()
    assert "target >= 50.0x" in result.stdout and "not measured here" in result.stdout
    chart = out.with_suffix(".html").read_text()
    assert "vega" in chart and "tokens_per_s" in chart
