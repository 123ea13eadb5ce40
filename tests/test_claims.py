"""The claims benchmark (`benchmarks.claims`): verdicts from per-seed recall, and the command in its reduced mode
(tiny runs): one process per row, a results file, a rerun that trains only the missing rows, a failed row that
loses nothing else."""

import subprocess
import sys

import polars as pl
import pytest

from benchmarks.claims import Beats, Reaches, all_claims, collect, row_path, train_row, verdicts
from browser import ROOT


@pytest.mark.parametrize("better,worse,verdict", [
    ({0: 0.9, 1: 0.8, 2: 0.95}, {0: 0.5, 1: 0.6, 2: 0.7}, "reproduced"),
    ({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.9, 1: 0.8, 2: 0.95}, "not reproduced"),
    ({0: 0.9, 1: 0.5, 2: 0.95}, {0: 0.5, 1: 0.8, 2: 0.7}, "inconclusive"),  # the seeds disagree
    ({0: 0.91, 1: 0.91, 2: 0.91}, {0: 0.9, 1: 0.9, 2: 0.9}, "inconclusive"),  # within the margin
])
def test_beats_pairs_the_seeds(better, worse, verdict):
    found, why = Beats("a", "b").judge({"a": better, "b": worse})
    assert found == verdict
    assert why.startswith("a − b per seed: ") and why.count(",") == 2


@pytest.mark.parametrize("level,values,verdict", [
    (0.9, {0: 1.0, 1: 0.995}, "reproduced"), (0.9, {0: 0.5, 1: 0.6}, "not reproduced"),
    (0.9, {0: 1.0, 1: 0.5}, "inconclusive"), (0.9, {}, "inconclusive"),
    (0.99, {0: 0.993, 1: 1.0, 2: 0.99}, "reproduced"),  # a level is the paper's threshold: no margin above it
    (0.99, {0: 0.989, 1: 0.95}, "not reproduced")])
def test_reaches(level, values, verdict):
    assert Reaches("a", level).judge({"a": values})[0] == verdict


def test_every_claim_compares_models_it_trains_with_one_budget():
    """The models an expectation compares train with the same steps, batch, task and curriculum."""
    for claim in all_claims().values():
        for expectation in claim.expect:
            assert set(expectation.models) <= set(claim.runs), (claim.name, str(expectation))
            if isinstance(expectation, Beats) and "width" not in claim.says:
                runs = [claim.runs[m] for m in expectation.models]
                budgets = {(r.fit.steps, r.fit.batch_size, r.task, r.curriculum) for r in runs}
                assert len(budgets) == 1, f"{claim.name}: {expectation} compares different budgets {budgets}"


def _claims(folder, *extra):
    return subprocess.run([sys.executable, "-m", "benchmarks.claims", "--reduced", "--claims", "titans_ablation",
                           "--seeds", "0", "--workers", "2", "--dir", str(folder), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_command_resumes_and_a_failed_row_loses_nothing_else(tmp_path):
    claim = all_claims(reduced_runs=True)["titans_ablation"]
    blocked = row_path(tmp_path, "titans_ablation", "titans w/o both", 0)
    blocked.mkdir(parents=True)  # the row's result file cannot be written: its process fails
    first = _claims(tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "4 rows, 0 already in" in first.stdout and "titans w/o both / seed 0: failed" in first.stdout
    results = pl.read_parquet(tmp_path / "results.parquet")
    assert sorted(results["model"]) == sorted(m for m in claim.runs if m != "titans w/o both")
    assert results["recall"].is_between(0, 1).all() and (results["seed"] == 0).all()
    assert {v["claim"] for v in verdicts([claim], results).iter_rows(named=True)} == {"titans_ablation"}

    blocked.rmdir()
    second = _claims(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 rows, 3 already in" in second.stdout and "1 to train" in second.stdout
    assert second.stdout.count(": done") == 1  # only the missing row trained
    assert sorted(collect(tmp_path)["model"]) == sorted(claim.runs)


def test_an_unknown_claim_is_refused(tmp_path):
    done = _claims(tmp_path, "--claims", "no_such_claim")
    assert done.returncode != 0 and "--claims: no_such_claim unknown; allowed values: " in done.stderr


@pytest.mark.parametrize("claim", list(all_claims()))
def test_each_claims_tiny_row_trains_and_is_saved(claim, tmp_path):
    tiny = all_claims(reduced_runs=True)[claim]
    model = next(iter(tiny.runs))
    row = train_row(claim, model, 0, tmp_path, reduced_runs=True)
    assert 0 <= row["recall"] <= 1 and row["config"] == tiny.runs[model].to_dict()
    assert collect(tmp_path)["model"].to_list() == [model]


def _differences(runs):
    """The fields (spec and model) in which the runs differ from the first."""
    first, *rest = [(run.spec, run.model.to_dict()) for run in runs]
    return [{k for part, base in zip(other, first) if isinstance(part, dict)
             for k in set(part) | set(base) if part.get(k) != base.get(k)} for other in rest]


def test_robust_biases_change_the_bias_only():
    claim = all_claims()["robust_biases"]
    control = claim.runs.pop("l2, no outliers (control)")
    assert control.task == claim.runs["l2"].task.replace(writes=1) and control.replace(task=claim.runs["l2"].task) == \
        claim.runs["l2"]
    assert all(diff <= {"bias", "p"} for diff in _differences(claim.runs.values()))
    specs = [run.memory_spec() for run in claim.runs.values()]
    biases = {getattr(spec, "spec", spec).bias for spec in specs}  # a preset's spec, or the spec
    assert biases == {"l2", "huber", "lp", "robust"}
    task = next(iter(claim.runs.values())).task
    assert (task.writes, task.write_mode) == (3, "outlier")


def test_armt_gamma_switches_gamma_only():
    claim = all_claims()["armt_gamma"]
    assert _differences(claim.runs.values()) == [{"dpfp_gamma"}]
    assert [run.model.dpfp_gamma for run in claim.runs.values()] == [True, False]
    assert next(iter(claim.runs.values())).task.write_mode == "update"


def test_zoology_names_say_width_length_and_pairs():
    for name, run in all_claims()["zoology_mqar"].runs.items():
        model, width, length, pairs = name.split(" ")
        assert (width, length, pairs) == (f"d={run.model.d_model}", f"L={run.task.seq_len}",
                                          f"D={run.task.num_kv_pairs}")
        assert (run.model.mixer == "attention") == (model == "attention")


def test_needle_recall_is_the_mean_over_lengths_and_depths(monkeypatch):
    """The needle claim's score reads the trained model at READ_AT × the training length, every depth."""
    from benchmarks.claims import niah

    run = all_claims(reduced_runs=True)["miras_niah"].runs["gated_deltanet"]
    read = []
    real = niah.niah_accuracy

    def spy(model, task, context_lengths, batch_size):
        frame = real(model, task, context_lengths=context_lengths, batch_size=batch_size)
        read.append(frame)
        return frame

    monkeypatch.setattr(niah, "niah_accuracy", spy)
    result = niah.needle_recall(run)
    (frame,) = read
    assert frame["context_length"].unique().sort().to_list() == [f * run.task.context_length for f in niah.READ_AT]
    assert frame.height == len(niah.READ_AT) * 5
    assert result["recall"] == pytest.approx(frame["accuracy"].mean())
    assert [p["context_length"] for p in result["accuracy_by_length"]] == [f * 48 for f in niah.READ_AT]
    assert result["recall"] == pytest.approx(sum(p["accuracy"] for p in result["accuracy_by_length"]) / 3)


def test_the_papers_figures_belong_to_models_the_claim_trains():
    for claim in all_claims().values():
        assert set(claim.paper) <= set(claim.runs) and all(0 <= v <= 1 for v in claim.paper.values()), claim.name
