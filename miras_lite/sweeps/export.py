"""A sweep's trials as a polars frame (one row per trial) and back from parquet or a study.

Columns: trial, status ("complete", "diverged", "failed", "running", "waiting"), reason, retry_of (the
trial this one retries, after a worker was lost), the swept parameters, the memory axes of the trial's
spec (preset, memory, bias, retention, optimizer), the metrics (recall, final_loss, train_s),
the curves (accuracy_by_pairs: list of {num_kv_pairs, accuracy}; loss_curve: the training loss per
step), duration_s (start to end of the trial), settings (the trial's full settings as JSON) and run_dir (the
trial's run directory, `objective.trial_dir`: its trained model, loadable with `miras_lite.runs.load_run`).
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import optuna
import polars as pl
from optuna.trial import TrialState

from .storage import is_current, rdb_storage

SPEC_AXES = ("preset", "memory", "bias", "retention", "optimizer")
METRICS = ("recall", "final_loss", "train_s", "accuracy_by_pairs", "loss_curve")
RECORD = ("trial", "status", "reason", "retry_of", "duration_s", "settings", "run_dir")
LOST_WORKER = "the worker stopped during the trial (no heartbeat); it is queued again"


def trial_status(trial):
    """The trial's status column: its Optuna state, or "diverged" for a failed trial whose run diverged."""
    # The state decides: a worker killed after writing a trial's metrics but before telling Optuna
    # leaves them on a trial that the stale check then fails.
    if trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "diverged":
        return "diverged"
    return {TrialState.FAIL: "failed", TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
            TrialState.COMPLETE: "complete"}.get(trial.state, trial.state.name.lower())


def _reason(trial):
    if trial_status(trial) == "diverged":
        return trial.user_attrs["reason"]
    return trial.user_attrs.get("lost", LOST_WORKER) if trial.state == TrialState.FAIL else None


def trial_row(trial):
    """One trial as a dict of the frame's columns."""
    settings = trial.user_attrs.get("settings")
    spec = settings["spec"] if settings else {}
    duration = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
    return {"trial": trial.number, "status": trial_status(trial), "reason": _reason(trial),
            "retry_of": trial.system_attrs.get("failed_trial"),
            **json.loads(trial.user_attrs["config_key"]), **{axis: spec.get(axis) for axis in SPEC_AXES},
            **{name: trial.user_attrs.get(name) for name in METRICS}, "duration_s": duration,
            "settings": json.dumps(settings) if settings else None, "run_dir": trial.user_attrs.get("run_dir")}


def trials_frame(study, sweep=None):
    """The study's sweep trials as a polars frame (module docstring); trials without a queued
    configuration (a worker that found the queue empty) are left out, and so are, when ``sweep`` is given,
    trials of other fixed settings (an earlier version of the sweep file, `storage.is_current`)."""
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)
            if "config_key" in t.user_attrs and (sweep is None or is_current(t, sweep))]
    return pl.DataFrame(rows, infer_schema_length=None).sort("trial") if rows else pl.DataFrame()


def parameter_columns(frame):
    """The swept parameters among the columns of a trials frame (the columns of no other kind)."""
    return [c for c in frame.columns if c not in (*RECORD, *SPEC_AXES, *METRICS)]


def swept_axes(frame):
    """The columns of a trials frame that tell its configurations apart: the memory axes and swept parameters
    that take more than one value, the seed left out (a configuration is trained once per seed)."""
    names = dict.fromkeys(("memory", "bias", "retention", "optimizer", "preset", *parameter_columns(frame)))
    return [c for c in names if c in frame.columns and c != "seed" and frame[c].n_unique() > 1]


def read_trials(source, sweep=None):
    """The trials frame from a parquet file, or from a storage URL (then ``sweep`` names the study)."""
    if not str(source).startswith(("sqlite:", "postgresql")):
        return pl.read_parquet(Path(source))
    if sweep is None:
        raise ValueError(f"source={source!r} is a storage URL: give the sweep (its name is the study name)")
    try:
        study = optuna.load_study(study_name=sweep.name, storage=rdb_storage(sweep, source))
    except KeyError:
        raise ValueError(f"source={source!r} holds no study named {sweep.name!r}") from None
    return trials_frame(study, sweep)


def seed_agreement(frame):
    """Do the seeds rank the configurations alike? -> (table, rho): the recall of every configuration (`swept_axes`)
    as one row, one column ``recall seed=S`` per seed, best first by the mean; and the
    Spearman rank correlation between the seeds' columns, one per pair of seeds {(s1, s2): rho}. Finished trials
    only; a configuration missing a seed has a null there (left out of that pair's correlation). Without a
    ``seed`` column or with fewer than two seeds (or two configurations), rho is {}."""
    complete = frame.filter(pl.col("status") == "complete")
    if "seed" not in complete.columns or complete["seed"].n_unique() < 2:
        return complete, {}
    index = swept_axes(complete)
    if not index:  # a single configuration
        complete, index = complete.with_columns(configuration=pl.lit("all")), ["configuration"]
    seeds = sorted(complete["seed"].unique().to_list())
    columns = [f"recall seed={s}" for s in seeds]
    table = (complete.pivot("seed", index=index, values="recall", aggregate_function="mean")
             .rename({str(s): column for s, column in zip(seeds, columns)}).select(*index, *columns)
             .with_columns(pl.mean_horizontal(columns).alias("mean")).sort("mean", descending=True))
    rho = {}
    for (first, a), (second, b) in combinations(zip(seeds, columns), 2):
        pair = table.select(a, b).drop_nulls()
        if pair.height >= 2:
            rho[(first, second)] = pair.select(pl.corr(a, b, method="spearman")).item()
    return table, rho
