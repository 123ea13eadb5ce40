"""`python -m kernels.bench --quick` runs every method (the kernels interpreted on a CPU) and writes its files."""

import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_times_every_method_and_writes_parquet_and_chart(tmp_path):
    out = tmp_path / "bench.parquet"
    result = subprocess.run([sys.executable, "-m", "kernels.bench", "--quick", "--repeats", "1", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pl.read_parquet(out)
    expected = {("torch/loop", "gated_deltanet"), ("torch/exact_ut", "gated_deltanet"),
                ("triton/fused_recurrent", "gated_deltanet"), ("triton/chunk_delta", "gated_deltanet")}
    expected |= {(method, bias) for method in ("torch/chunked", "triton/chunk_minibatch") for bias in ("l2", "lp", "huber")}
    assert set(frame.select("method", "spec").unique().iter_rows()) == expected
    assert set(frame["passes"]) == {"fwd", "fwd+bwd"}
    assert (frame["seconds"] > 0).all() and (frame["tokens_per_s"] > 0).all()
    assert frame.filter(pl.col("method").str.starts_with("triton/"))["interpreted"].all()
    assert "target >= 50.0x" in result.stdout and "not measured here" in result.stdout
    chart = out.with_suffix(".html").read_text()
    assert "vega" in chart and "tokens_per_s" in chart
