"""Sweeps on Optuna: ``python -m miras_lite sweep SWEEP.toml [--workers N] [--storage URL]``.

    config.py     the sweep file (TOML) -> `Sweep`: fixed settings, search space, the trial plan
    objective.py  one trial: a short MQAR training (`ml.fit`) and its recall per number of pairs
    storage.py    the Optuna study (SQLite or PostgreSQL, heartbeats, retries) and the queue
    runner.py     the coordinator (`run_sweep`) and the worker processes (`work`)
    export.py     trials -> a polars frame / parquet (one row per trial)
    cli.py        the `sweep` subcommand

Optuna's own log lines are turned down to warnings: a sweep prints one line per trial itself.
"""

import optuna

from .config import Sweep, load_sweep, parse_sweep
from .export import read_trials, trials_frame
from .objective import train_trial
from .runner import prepare, run_sweep, work

optuna.logging.set_verbosity(optuna.logging.WARNING)

__all__ = ["Sweep", "load_sweep", "parse_sweep", "prepare", "read_trials", "run_sweep", "train_trial",
           "trials_frame", "work"]
