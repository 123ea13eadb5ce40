"""Where a sweep lives: an Optuna study in an RDB storage (SQLite file by default, or PostgreSQL),
with heartbeats, and the queue of planned configurations that are not finished yet.

Every running trial writes a heartbeat every ``heartbeat_interval`` seconds; a trial whose heartbeat is
older than ``grace_period`` (its worker was killed) is marked failed by the next worker that starts a
trial, and `RetryHeartbeatStaleTrialCallback` queues it again with the same parameters (at most
``max_retry`` times). A trial whose worker died after taking it but before its first heartbeat is
failed by `fail_unstarted` when a sweep is (re-)run. Finished trials are rows in the database, so a
killed worker loses none.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from .config import config_key

# a configuration with one of these is not queued again: it finished, or it is queued / running
SETTLED = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)


def default_storage(sweep):
    """sqlite:///runs/sweeps/<name>.sqlite3 (relative to the working directory)."""
    folder = Path("runs/sweeps")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / sweep.name}.sqlite3"


def rdb_storage(sweep, url):
    """The RDBStorage of ``url`` with the sweep's heartbeat settings ([optuna] in the sweep file)."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    settings = sweep.optuna
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=settings["heartbeat_interval"],
                          grace_period=settings["grace_period"],
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(settings["max_retry"]))


def open_study(sweep, url):
    """The sweep's study (created on first use; maximises recall)."""
    return optuna.create_study(storage=rdb_storage(sweep, url), study_name=sweep.name, direction="maximize",
                               load_if_exists=True)


def is_settled(trial):
    """Finished for good (complete, or diverged: it would diverge again) or queued / running."""
    return trial.state in SETTLED or trial.user_attrs.get("status") == "diverged"


def fail_unstarted(study, grace_period):
    """Fail the trials a worker took from the queue but died before starting (before its first heartbeat,
    so Optuna's stale check never sees them): running for over ``grace_period`` s without settings."""
    now = datetime.now()  # Optuna stores local naive times
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "settings" not in trial.user_attrs and (now - trial.datetime_start).total_seconds() > grace_period:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def queue_missing(study, sweep):
    """Fail the stale trials (their retries are queued) and the unstarted ones, then queue every planned
    configuration that has no settled trial. Returns the number queued."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)
    fail_unstarted(study, sweep.optuna["grace_period"])
    settled = {t.user_attrs.get("config_key") for t in study.get_trials(deepcopy=False) if is_settled(t)}
    missing = [params for params in sweep.plan if config_key(params) not in settled]
    for params in missing:
        study.enqueue_trial(params, user_attrs={"config_key": config_key(params)}, skip_if_exists=False)
    return len(missing)


def queued(study):
    """Number of trials waiting for a worker."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def progress(study, sweep):
    """(planned configurations with a finished trial, planned configurations)."""
    planned = {config_key(params) for params in sweep.plan}
    done = {t.user_attrs.get("config_key") for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE or t.user_attrs.get("status") == "diverged"}
    return len(planned & done), len(planned)
