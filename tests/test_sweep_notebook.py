"""Notebook 09 (the sweep explorer) as users run it: its box names the sweep file its button runs, and the button
runs that file; on load it shows the results that exist (the newest runs/sweeps/*.parquet, else the shipped
data/sweeps/mqar_axes.parquet); its report (shipped mode) runs no sweep and shows no control that set nothing;
as a script it prints the best configurations."""

import html
import importlib.util
from pathlib import Path

import polars as pl
import pytest

from browser import ROOT
from notebook_runs import make_report, page_text, run_script

NOTEBOOK = ROOT / "notebooks" / "09_sweep_explorer.py"
SHIPPED = ROOT / "data" / "sweeps" / "mqar_axes.parquet"

TINY = """
name = "tiny_nb"
sampler = "grid"
[task]
vocab_size = 16
seq_len = 16
num_kv_pairs = 2
train_examples = 64
test_examples = 8
eval_pairs = [1, 2]
[model]
d_model = 8
n_layers = 1
num_heads = 1
chunk_size = 4
[spec]
preset = "gated_deltanet"
[fit]
steps = 2
batch_size = 4
warmup = 1
[space.spec]
bias = ["l2", "huber"]
"""


def _notebook():
    spec = importlib.util.spec_from_file_location("sweep_explorer", NOTEBOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shown(monkeypatch, runs):
    """Open the notebook as a fresh page load with runs/ at `runs` -> the names its cells defined."""
    monkeypatch.setenv("MIRAS_LITE_RUNS", str(runs))
    monkeypatch.delenv("MIRAS_LITE_REPORT", raising=False)
    _, defs = _notebook().app.run()
    return defs


def test_the_shipped_results_are_the_example_sweep_with_two_seeds_and_run_directories():
    frame = pl.read_parquet(SHIPPED)
    assert frame.height == 24 and frame["status"].to_list() == ["complete"] * 24
    assert sorted(frame["seed"].unique().to_list()) == [0, 1]
    assert frame["recall"].is_between(0, 1).all()
    assert frame["run_dir"].str.starts_with("runs/sweeps/mqar_axes/trial-").all()


def test_on_load_without_saved_results_the_page_shows_the_shipped_ones(tmp_path, monkeypatch):
    defs = _shown(monkeypatch, tmp_path / "runs")
    assert defs["results"].value == "data/sweeps/mqar_axes.parquet (shipped)"
    assert defs["trials"].equals(pl.read_parquet(SHIPPED))
    assert {"bias", "retention", "optimizer"} <= set(defs["axes"])


def test_the_box_names_the_file_its_button_runs_and_a_reload_shows_what_it_wrote(tmp_path, monkeypatch):
    """The button's label names the picked sweep file, and `run_here` (what the button calls) runs that file as the
    sweep command does: its parquet under runs/sweeps/, which the next page load shows first."""
    runs = tmp_path / "runs"
    defs = _shown(monkeypatch, runs)
    assert defs["sweep_file"].value == "mqar_small.toml"
    assert "\\u003eRun sweeps/mqar_small.toml (4 trials, 2 workers)\\u003c" in html.unescape(defs["launch"].text)
    sweep_file = tmp_path / "tiny_nb.toml"
    sweep_file.write_text(TINY)
    launched = defs["run_here"](sweep_file)
    assert launched["out"] == runs / "sweeps" / "tiny_nb.parquet" and launched["queued"] == 2
    assert launched["storage"] == f"sqlite:///{runs / 'sweeps' / 'tiny_nb.sqlite3'}"
    reloaded = _shown(monkeypatch, runs)  # a reload: the saved results are there, picked first
    assert reloaded["results"].value == str(runs / "sweeps" / "tiny_nb.parquet")
    assert list(reloaded["result_paths"])[-1] == "data/sweeps/mqar_axes.parquet (shipped)"
    assert reloaded["trials"]["bias"].sort().to_list() == ["huber", "l2"]
    assert all(Path(p).is_dir() for p in reloaded["trials"]["run_dir"])
    assert defs["run_here"](sweep_file)["queued"] == 0  # a second run resumes: nothing left to run


def test_script_prints_the_best_configurations_of_the_results_it_shows(tmp_path):
    done = run_script(NOTEBOOK, env={"MIRAS_LITE_RUNS": str(tmp_path / "runs")})
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "sweep results: data/sweeps/mqar_axes.parquet (shipped), 24 trials (24 complete)", done.stdout
    assert lines[1] == "best configurations (recall, mean over 2 seeds):"
    best = pl.read_parquet(SHIPPED).group_by("bias", "retention", "optimizer").agg(
        pl.col("recall").mean(), pl.col("recall").sort_by("seed").alias("by_seed")).sort("recall", descending=True)
    top = best.row(0, named=True)
    assert lines[2] == (f"bias={top['bias']} retention={top['retention']} optimizer={top['optimizer']}: "
                        f"{top['recall']:.3f} (seed=0 {top['by_seed'][0]:.3f}, seed=1 {top['by_seed'][1]:.3f})"), done.stdout
    assert len(lines) == 8 and lines[7].startswith("Spearman rank correlation between seeds: ")


@pytest.mark.slow
def test_shipped_report_shows_results_and_runs_no_sweep(tmp_path):
    """The report (shipped mode) shows the shipped results, says that no sweep ran, and shows no sweep-file picker,
    Run button or storage-URL field; MIRAS_LITE_QUICK is ignored, as in the other reports."""
    output = tmp_path / "09.html"
    runs = tmp_path / "runs"
    done = make_report(NOTEBOOK, output, env={"MIRAS_LITE_QUICK": "1", "MIRAS_LITE_RUNS": str(runs)})
    assert done.returncode == 0, done.stderr[-4000:]
    page = output.read_text()
    text = page_text(page)
    assert "This page is a report: no sweep ran for it" in text, text[:3000]
    assert "Shown: data/sweeps/mqar_axes.parquet (shipped) . 24 trials : 24 complete" in text
    assert not (runs / "sweeps").exists() or not any((runs / "sweeps").iterdir())  # nothing ran
    # the controls shown (labels travel escaped in the widgets' attributes): the results picked, and nothing else
    assert "u003eresults&#92;u003c" in page
    for label in ("sweep file", "Run sweeps/mqar_small.toml (4 trials, 2 workers)",
                  "or a running study: its storage URL (the sweep file above names the study)"):
        assert f"u003e{label}&#92;u003c" not in page, f"the report shows the control {label!r}"
