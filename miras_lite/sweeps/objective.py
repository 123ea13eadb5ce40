"""One sweep trial: a short MQAR training (`ml.fit`) and its recall curve over the number of pairs.

    recall = (1/|P|) Σ_{D ∈ P} acc(D)      P = [task] eval_pairs (default: the trained pair counts)

acc(D) is the held-out accuracy on MQAR examples with D key-value pairs (`MQAR.evaluate`, the same
counts as `tasks.mqar.accuracy_by_pairs`); the mean over D weights every pair count equally (an area
under the recall curve), where the overall accuracy would favour the counts with more queries.
"""

from __future__ import annotations

import time

import optuna

from ..tasks.mqar import MQAR
from ..train import TrainingDiverged
from .config import config_key, suggest
from .storage import worker_identity


def train_trial(run):
    """Train the `RunConfig` ``run`` (an MQAR task); returns the trial's metrics: recall, accuracy_by_pairs
    [{num_kv_pairs, accuracy}], final_loss, loss_curve, train_s. Raises `TrainingDiverged` as `fit` does."""
    start = time.perf_counter()
    model, metrics = run.train()
    train_s = time.perf_counter() - start
    task = run.task
    trained = task.num_kv_pairs if isinstance(task.num_kv_pairs, tuple) else (task.num_kv_pairs,)
    probe = MQAR(task.vocab_size, task.seq_len, task.eval_pairs or trained, train_examples=None,
                 test_examples=task.test_examples, seed=run.seed)
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
        try:
            result = train_trial(sweep.run_config(params))
        except TrainingDiverged as error:
            trial.set_user_attr("status", "diverged")
            trial.set_user_attr("reason", str(error))
            raise
        for name, value in result.items():
            trial.set_user_attr(name, value)
        return result["recall"]

    return run
