"""Where a sweep lives: an Optuna study in an RDB storage (SQLite file by default, or PostgreSQL),
with heartbeats, worker liveness, and the queue of planned configurations that are not finished yet.

A configuration's identity is its parameters (`config.config_key`) together with the hash of the sweep
file's fixed settings (`Sweep.fixed_hash`, stored as the trial's "fixed" attribute): after an edit of
[task] / [model] / [spec] / [fit], every configuration is new and runs again, and the trials of the old
settings stay in the study but are left out of the sweep's frame (never mixed with the new ones).

Lost workers are found in two ways:

* by process, at once: a worker records its host, process id and process start time on every trial it
  starts (the "worker" attribute, `worker_identity`). A running trial whose worker ran on this host and whose
  process is gone (or is a zombie, or its pid now belongs to another process) is failed and queued again by
  `fail_dead_workers`, which the coordinator runs when it starts (so an immediate re-run after a SIGKILL
  retries the killed trials) and while it waits.
* by heartbeat, for workers on other machines: every running trial writes a heartbeat every
  ``heartbeat_interval`` seconds; one whose heartbeat is older than ``grace_period`` is failed and queued
  again (Optuna's stale-trial check). A trial taken by a worker that died before recording itself (a few
  milliseconds) is failed by `fail_unstarted` once it is older than ``grace_period``.

A lost trial is retried at most ``max_retry`` times (`RetryLostTrial`). Finished trials are rows in the
database, so a killed worker loses none.

Two workers must never take the same queued trial. Optuna takes one by reading it as WAITING and writing
RUNNING "for update"; SQLite has no row locks and Python's sqlite3 reads outside a transaction, so two workers
could both read WAITING and both run the trial (the second then fails to record it). On SQLite every
transaction therefore starts with BEGIN IMMEDIATE (`_serialize_transactions`): one writer at a time, reads included.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import warnings
from datetime import datetime
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy import event

from .config import config_key

# a configuration with one of these is not queued again: it finished, or it is queued / running
SETTLED = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
# the user attributes a retry keeps: what the queue knows of the configuration (not the lost run's worker,
# settings or metrics)
QUEUE_ATTRS = ("config_key", "fixed")
STORAGE_FORMS = "sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
_URL = re.compile(r"(sqlite:///.+|postgresql(\+[a-z0-9_]+)?://.+)")


def default_storage(sweep):
    """sqlite:///runs/sweeps/<name>.sqlite3 (relative to the working directory)."""
    folder = Path("runs/sweeps")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / sweep.name}.sqlite3"


def redact_url(url):
    """The URL with its password hidden (for messages)."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def check_storage_url(url):
    """ValueError (one line, naming --storage and the allowed forms) unless ``url`` is an SQLite or PostgreSQL URL."""
    if not isinstance(url, str) or not _URL.fullmatch(url.strip()):
        shown = redact_url(url) if isinstance(url, str) else url
        raise ValueError(f"--storage={shown!r} is not a supported storage URL; allowed forms: {STORAGE_FORMS}")


class RetryLostTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a lost trial (a WAITING copy with the same parameters, at most ``max_retry`` times),
    keeping only the queue's attributes (`QUEUE_ATTRS`) of the lost trial."""

    def __call__(self, study, trial):
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in QUEUE_ATTRS}
        super().__call__(study, trial)


def _serialize_transactions(engine):
    """Make every transaction of the SQLite ``engine`` BEGIN IMMEDIATE (SQLAlchemy's recipe for SQLite locking):
    a read-then-write such as taking a queued trial is then atomic across processes."""

    @event.listens_for(engine, "connect")
    def _driver_does_not_begin(connection, _record):
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while the storage was created get the events too


def rdb_storage(sweep, url):
    """The RDBStorage of ``url`` with the sweep's heartbeat settings ([optuna] in the sweep file). A bad URL, a
    missing driver or a server that cannot be reached raise one ValueError naming --storage and the cause."""
    check_storage_url(url)
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:  # an unreachable server fails after 10 s instead of hanging
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    settings = sweep.optuna
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=settings["heartbeat_interval"],
                                 grace_period=settings["grace_period"],
                                 heartbeat_stale_trial_callback=RetryLostTrial(settings["max_retry"]))
    except Exception as error:  # sqlalchemy / driver errors of many types: one message
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = next((line for line in lines if not line.startswith(("(Background", "[SQL"))), type(error).__name__)
        cause = cause if len(cause) <= 240 else cause[:237] + "..."
        raise ValueError(f"--storage={redact_url(url)!r}: cannot open the study storage ({type(error).__name__}: "
                         f"{cause})") from None
    if url.startswith("sqlite"):  # PostgreSQL locks the row Optuna reads "for update"
        _serialize_transactions(storage.engine)
    return storage


def open_study(sweep, url):
    """The sweep's study (created on first use; maximises recall)."""
    storage = rdb_storage(sweep, url)
    try:
        return optuna.create_study(storage=storage, study_name=sweep.name, direction="maximize", load_if_exists=True)
    except ValueError as error:  # e.g. a study of that name with another direction
        raise ValueError(f"--storage={redact_url(url)!r}: study {sweep.name!r}: {error}") from None


# ------------------------------------------------------------------------------------ worker liveness


def _start_time(pid):
    """(state, start time in clock ticks since boot) of process ``pid`` from /proc, or None when it is gone;
    ("?", None) where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else ("?", None)
    except (OSError, IndexError, ValueError):
        return ("?", None)


def worker_identity():
    """What a worker records on a trial it starts: {"host", "pid", "start"} (start: its process start time)."""
    found = _start_time(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": found[1] if found else None}


def worker_alive(worker):
    """False when ``worker`` (a `worker_identity`) ran on this host and its process is gone, a zombie, or its pid
    now belongs to a process started later; True otherwise (another host: the heartbeat decides)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return True
    pid = worker.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    found = _start_time(pid)
    if found is None:
        return False
    state, start = found
    if state in ("Z", "X"):
        return False
    if start is not None and worker.get("start") is not None and start != worker["start"]:
        return False  # the pid was reused
    if state == "?":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


def _fail(study, trial, reason):
    """Fail a running trial (recording why) and queue its retry; False when another process finished it first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "lost", reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    callback = storage.get_heartbeat_stale_trial_callback() if hasattr(storage, "get_heartbeat_stale_trial_callback") \
        else None
    if callback is not None:
        callback(study, storage.get_trial(trial._trial_id))
    return True


def fail_dead_workers(study):
    """Fail (and queue again) every running trial whose worker process on this host is gone. Returns their number."""
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is not None and not worker_alive(worker):
            failed += _fail(study, trial, f"the worker stopped during the trial (process {worker.get('pid')} on "
                                          f"{worker.get('host')} is gone); it is queued again")
    return failed


def fail_unstarted(study, grace_period):
    """Fail the trials a worker took from the queue but died before starting (before it recorded itself, so neither
    its process nor a heartbeat can be checked): running for over ``grace_period`` s without a worker."""
    now = datetime.now()  # Optuna stores local naive times
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if ("settings" not in trial.user_attrs and "worker" not in trial.user_attrs
                and (now - trial.datetime_start).total_seconds() > grace_period):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def fail_lost(study, sweep):
    """Every check for lost trials: stale heartbeats, dead local workers, unstarted trials."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)
    fail_dead_workers(study)
    fail_unstarted(study, sweep.optuna["grace_period"])


# ------------------------------------------------------------------------------------ the queue


def is_current(trial, sweep):
    """The trial belongs to the sweep file's current fixed settings."""
    return trial.user_attrs.get("fixed") == sweep.fixed_hash


def is_settled(trial, sweep=None):
    """Finished for good (complete, or diverged: it would diverge again) or queued / running, under the sweep's
    current fixed settings (when ``sweep`` is given)."""
    if sweep is not None and not is_current(trial, sweep):
        return False
    return trial.state in SETTLED or trial.user_attrs.get("status") == "diverged"


def _drop_outdated(study, sweep):
    """Fail the queued trials of earlier fixed settings: no worker of the current file may run them."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if "config_key" in trial.user_attrs and not is_current(trial, sweep):
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "lost", "the sweep file's fixed settings "
                                                   "changed before it ran")
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:
                pass


def queue_missing(study, sweep):
    """Fail the lost trials (their retries are queued) and the queued trials of earlier settings, then queue every
    planned configuration that has no settled trial. Returns the number queued."""
    fail_lost(study, sweep)
    _drop_outdated(study, sweep)
    settled = {t.user_attrs.get("config_key") for t in study.get_trials(deepcopy=False) if is_settled(t, sweep)}
    missing = [params for params in sweep.plan if config_key(params) not in settled]
    for params in missing:
        study.enqueue_trial(params, user_attrs={"config_key": config_key(params), "fixed": sweep.fixed_hash},
                            skip_if_exists=False)
    return len(missing)


def queued(study, sweep=None):
    """Number of trials waiting for a worker (of the sweep's current settings, when given)."""
    return len([t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if sweep is None or is_current(t, sweep)])


def running(study, sweep):
    """The sweep's running trials (current settings)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if is_current(t, sweep)]


def progress(study, sweep):
    """(planned configurations with a finished trial, planned configurations)."""
    planned = {config_key(params) for params in sweep.plan}
    done = {t.user_attrs.get("config_key") for t in study.get_trials(deepcopy=False)
            if is_current(t, sweep) and (t.state == TrialState.COMPLETE or t.user_attrs.get("status") == "diverged")}
    return len(planned & done), len(planned)
