"""One sweep trial: a short MQAR training (`ml.fit`) and its recall curve over the number of pairs.

    recall = (1/|P|) Σ_{D ∈ P} acc(D)      P = [task] eval_pairs (default: the trained pair counts)

acc(D) is the held-out accuracy on MQAR examples with D key-value pairs (`MQAR.evaluate`, the same
counts as `tasks.mqar.accuracy_by_pairs`); the mean over D weights every pair count equally (an area
under the recall curve), where the overall accuracy would favour the counts with more queries.

Each trial trains into its own run directory, <runs>/sweeps/<sweep name>/trial-<number> (<runs>: runs/ in the
working directory, or MIRAS_LITE_RUNS; `trial_dir`), holding run.json, checkpoint.pt and metrics.parquet like
every run (`miras_lite.runs.load_run`), so the playground can load a trial's trained model.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna

from ..tasks.mqar import MQAR
from ..train import TrainingDiverged
from ..ui import runs_root
from .config import config_key, suggest
from .storage import worker_identity


def trial_dir(sweep_name, number, root=None):
    """A new directory, created here, for trial ``number`` of the sweep ``sweep_name``:
    root/sweeps/<sweep_name>/trial-<number> (root: `ui.runs_root()`), or trial-<number>-2, -3, ... when an
    earlier attempt took it (a study started again under the same name, e.g. after its SQLite file was
    deleted, numbers its trials from 0 again). A retried trial has a number of its own, so a directory
    never holds two attempts."""
    folder = Path(root if root is not None else runs_root()) / "sweeps" / sweep_name
    folder.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        path = folder / (f"trial-{number}" if attempt == 1 else f"trial-{number}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ValueError(f"number={number!r}: {folder} already holds 999 directories of trial {number}")


def train_trial(run, out_dir=None):
    """Train the `RunConfig` ``run`` (an MQAR task), into the run directory ``out_dir`` when given; returns the
    trial's metrics: recall, accuracy_by_pairs [{num_kv_pairs, accuracy}], final_loss, loss_curve, train_s.
    Raises `TrainingDiverged` as `fit` does."""
    start = time.perf_counter()
    model, metrics = run.train(out_dir=out_dir)
    train_s = time.perf_counter() - start
    task = run.task
    trained = task.num_kv_pairs if isinstance(task.num_kv_pairs, tuple) else (task.num_kv_pairs,)
    probe = MQAR(task.vocab_size, task.seq_len, task.eval_pairs or trained, train_examples=None,
                 test_examples=task.test_examples, seed=run.seed, writes=task.writes, write_mode=task.write_mode)
    scores = probe.evaluate(model)
    curve = [{"num_kv_pairs": d, "accuracy": scores[f"accuracy@{d}"]} for d in probe.pairs]
    return {"recall": sum(point["accuracy"] for point in curve) / len(curve), "accuracy_by_pairs": curve,
            "final_loss": metrics["loss"][-1], "loss_curve": metrics["loss"].to_list(), "train_s": train_s}


class QueueEmpty(optuna.TrialPruned):
    """The worker asked for a trial after the last queued one was taken by another worker."""


def objective(sweep):
    """The Optuna objective of ``sweep``: maximise `recall`; the metrics go to the trial's user attrs.
    A diverging run is recorded (status "diverged", reason = the `TrainingDiverged` message) and
    re-raised, so Optuna marks the trial failed."""

    def run(trial):
        if "config_key" not in trial.user_attrs:
            raise QueueEmpty("no queued configuration left")
        trial.set_user_attr("worker", worker_identity())  # first: a coordinator can now tell if this process dies
        params = suggest(trial, sweep.space)
        if config_key(params) != trial.user_attrs["config_key"] or trial.user_attrs.get("fixed") != sweep.fixed_hash:
            raise ValueError(f"trial {trial.number}: its configuration {trial.user_attrs['config_key']} (fixed settings "
                             f"{trial.user_attrs.get('fixed')}) is not this worker's {config_key(params)} (fixed "
                             f"settings {sweep.fixed_hash}): the sweep file changed while the study ran; run the "
                             "sweep command again to queue the configurations of the current file")
        trial.set_user_attr("settings", sweep.settings(params))
        out_dir = trial_dir(sweep.name, trial.number)
        trial.set_user_attr("run_dir", str(out_dir))
        try:
            result = train_trial(sweep.run_config(params), out_dir)
        except TrainingDiverged as error:
            trial.set_user_attr("status", "diverged")
            trial.set_user_attr("reason", str(error))
            raise
        for name, value in result.items():
            trial.set_user_attr(name, value)
        return result["recall"]

    return run
