"""Running a sweep: queue the missing configurations, start worker processes, watch, export.

`run_sweep` is the coordinator: it fails the trials of lost workers (a worker process on this machine that
is gone is seen at once; one elsewhere by its stale heartbeat) and queues every planned configuration
without a settled trial (`storage.queue_missing`, so a re-run skips the finished ones and retries the
killed ones), starts ``workers`` processes ``python -m miras_lite.sweeps SWEEP.toml --worker --storage URL``
and reports progress. While it waits it keeps checking its workers: a trial whose worker died is failed and
queued again for the live workers. It returns once no trial of the sweep is queued or running (workers
started again for retries queued after its workers finished); if one of its workers exited with an error,
it raises RuntimeError (finished trials are kept: run it again to resume).
Each worker (`work`) runs on one torch thread and takes queued trials until the queue is empty;
workers on other machines can join by running the same command against a shared PostgreSQL URL.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import torch
from optuna.exceptions import ExperimentalWarning

from ..checks import check_int
from ..files import atomic_write
from ..train import TrainingDiverged
from .export import trial_status, trials_frame
from .objective import objective
from .storage import default_storage, fail_lost, open_study, progress, queue_missing, queued, redact_url, running


def prepare(sweep, storage=None):
    """Open (or create) the study and queue the missing configurations -> (study, number queued)."""
    study = open_study(sweep, storage or default_storage(sweep))
    return study, queue_missing(study, sweep)


def _report(study, trial):
    if "config_key" not in trial.user_attrs:  # a worker that found the queue empty
        return
    detail = f"recall {trial.value:.3f}" if trial.value is not None else trial.user_attrs.get("reason", "")
    print(f"trial {trial.number} {trial_status(trial)}: {trial.params} {detail}", flush=True)


def _stop_when_queue_empty(study, trial):
    if queued(study) == 0:
        study.stop()


def work(sweep, storage):
    """A worker: run queued trials of ``sweep`` in ``storage`` (a URL) until none is left, on one torch
    thread (the workers of a machine share its cores)."""
    torch.set_num_threads(1)
    study = open_study(sweep, storage)
    if queued(study) == 0:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.optimize(objective(sweep), catch=(TrainingDiverged,), callbacks=[_report, _stop_when_queue_empty])


def worker_command(sweep, storage):
    """The command line of one worker process."""
    if sweep.path is None:
        raise ValueError("sweep: worker processes need a sweep read from a file (load_sweep(path))")
    return [sys.executable, "-m", "miras_lite.sweeps", str(sweep.path), "--worker", "--storage", storage]


def _start(sweep, storage, count):
    return [subprocess.Popen(worker_command(sweep, storage)) for _ in range(count)]


def run_sweep(sweep, storage=None, workers=1, out=None, on_progress=None, poll_s=1.0):
    """Run ``sweep`` with ``workers`` processes; returns the trials frame (`export.trials_frame`), also
    written to ``out`` (parquet) when given. ``on_progress(done, total)`` is called as trials finish."""
    check_int("workers", workers)
    storage = storage or default_storage(sweep)
    study, _ = prepare(sweep, storage)
    processes = _start(sweep, storage, min(workers, queued(study, sweep)))
    last = None
    try:
        while True:
            fail_lost(study, sweep)  # a dead worker's trial is queued again at once, for the live workers
            if not any(p.poll() is None for p in processes):
                failed = [p.returncode for p in processes if p.returncode != 0]
                if failed:
                    raise RuntimeError(f"{len(failed)} of {len(processes)} sweep workers exited with an error (exit "
                                       f"codes {failed}); finished trials are kept in {redact_url(storage)}: run the sweep again "
                                       "to resume")
                if queued(study, sweep):  # retries queued after the workers had found the queue empty
                    processes = _start(sweep, storage, min(workers, queued(study, sweep)))
                elif not running(study, sweep):  # nothing left, here or in workers elsewhere
                    break
            state = progress(study, sweep)
            if on_progress is not None and state != last:
                on_progress(*state)
            last = state
            time.sleep(poll_s)
    except BaseException:  # KeyboardInterrupt, or the error above: do not leave workers behind
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    state = progress(study, sweep)
    if on_progress is not None and state != last:
        on_progress(*state)
    frame = trials_frame(study, sweep)
    if out is not None:
        atomic_write(out, frame.write_parquet)
    return frame
