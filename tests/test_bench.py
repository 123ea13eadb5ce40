"""The benchmark commands (`benchmarks/`) run end to end in their quick modes and write their results files."""

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import miras_lite as ml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_scan_benchmark_times_every_bias_and_length(tmp_path):
    out = tmp_path / "scan.parquet"
    _run("-m", "benchmarks.scan", "--quick", "--repeats", "1", "--loop-repeats", "1", "--out", str(out))
    frame = pl.read_parquet(out)
    assert set(frame.select("bias", "T").iter_rows()) == {(b, T) for b in ("l2", "lp", "huber[coord]") for T in (64, 256)}
    assert (frame["loop_s"] > 0).all() and (frame["chunked_s"] > 0).all() and (frame["speedup"] > 0).all()
    # only l2 has an exact chunk-parallel form (the delta rule); the other biases run the loop
    assert frame.filter(pl.col("exact_s").is_not_null())["bias"].unique().to_list() == ["l2"]


def test_benchmarks_refuse_bad_options():
    result = subprocess.run([sys.executable, "-m", "benchmarks.scan", "--repeats", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--repeats must be >= 1" in result.stderr


def test_mqar_recipes_train_each_recipe(tmp_path):
    out = tmp_path / "mqar.parquet"
    _run("-m", "benchmarks.mqar", "recipes", "--quick", "--final-examples", "16", "--specs", "gated_deltanet",
         "attention", "lp+lq", "titans", "--out", str(out))
    frame = pl.read_parquet(out)
    assert frame["model"].to_list() == ["gated_deltanet", "attention", "lp+lq", "titans"]
    assert frame["budget_s"].to_list() == [180.0, 180.0, 300.0, 600.0]
    # gated_deltanet and lp+lq aim at 0.99, titans at 0.9: each row has its own time_to column
    assert {"time_to_0.99_s", "time_to_0.9_s"} <= set(frame.columns)
    assert frame["final_acc"].is_between(0, 1).all() and (frame["steps"] >= 1).all()
    assert frame["met"].dtype == pl.Boolean


def test_mqar_speed_measures_every_preset_against_gated_deltanet(tmp_path):
    out = tmp_path / "speed.parquet"
    _run("-m", "benchmarks.mqar", "speed", "--quick", "--steps", "2", "--out", str(out))
    frame = pl.read_parquet(out)
    assert set(frame["model"]) == {"attention", *ml.PRESETS} and (frame["tokens_per_s"] > 0).all()
    assert frame.filter(pl.col("model") == "gated_deltanet")["vs_gated_deltanet"].item() == 1.0
    assert frame.filter(pl.col("target").is_not_null())["model"].to_list() == [
        name for name, spec in ml.PRESETS.items() if spec.memory == "mlp"]


def test_mqar_playground_row(tmp_path):
    out = tmp_path / "playground.parquet"
    _run("-m", "benchmarks.mqar", "playground", "--presets", "attention", "gated_deltanet", "--budget", "3",
         "--threads", "1", "--out", str(out))
    frame = pl.read_parquet(out)
    assert frame["model"].to_list() == ["attention", "gated_deltanet"]
    assert (frame["budget_s"] == 3.0).all() and (frame["steps"] >= 1).all()


def test_armt_benchmark_trains_saves_and_streams(tmp_path):
    run_dir, out = tmp_path / "armt", tmp_path / "armt.parquet"
    _run("-m", "benchmarks.armt", "--quick", "--run-dir", str(run_dir), "--out", str(out))
    frame = pl.read_parquet(out)
    assert frame["context"].to_list() == [64, 256] and frame["accuracy"].is_between(0, 1).all()
    assert {"checkpoint.pt", "metrics.parquet", "run.json"} <= {p.name for p in run_dir.iterdir()}
    assert ml.load(run_dir / "checkpoint.pt").config["conv_size"] == 3
    table = tmp_path / "eval.parquet"
    _run("-m", "miras_lite", "eval", str(run_dir), "--lengths", "64", "--samples", "2", "--out", str(table))
    tables = pl.read_parquet(table).partition_by("table", as_dict=True)
    assert set(tables) == {("held-out accuracy",), ("streamed accuracy vs context length",)}
    assert tables[("streamed accuracy vs context length",)]["context_length"].to_list() == [64]


def test_armt_benchmark_streams_the_shipped_model(tmp_path):
    """`--evaluate` streams a trained run instead of training one: the shipped model answers the short
    contexts its training covered."""
    out = tmp_path / "armt.parquet"
    _run("-m", "benchmarks.armt", "--quick", "--evaluate", "data/models/armt-qa1", "--out", str(out))
    frame = pl.read_parquet(out)
    assert frame["context"].to_list() == [64, 256] and (frame["peak_rss_mb"] > 0).all()
    assert frame["accuracy"][1] == 1.0
