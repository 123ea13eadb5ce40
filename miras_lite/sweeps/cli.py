"""``python -m miras_lite sweep SWEEP.toml``: run a sweep, print the best configurations (and, when seeds are
swept, the recall of every configuration per seed and how alike the seeds rank them), write parquet.

    python -m miras_lite sweep sweeps/mqar_axes.toml --workers 2
    python -m miras_lite sweep sweeps/mqar_axes.toml --storage postgresql://user@host/db   # shared study
    python -m miras_lite sweep sweeps/mqar_axes.toml --worker --storage URL               # one more worker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import polars as pl

from .config import load_sweep
from .export import seed_agreement
from .runner import run_sweep, work
from .storage import check_storage_url, default_storage, redact_url


def _print_progress(done, total):
    print(f"[sweep] {done}/{total} configurations finished", file=sys.stderr, flush=True)


def run(args):
    """The sweep command. Bad input (the sweep file, --storage, --workers) raises ValueError (the caller prints it as
    a usage error); a failed worker or Ctrl-C print one line and return 1 / 130."""
    sweep = load_sweep(args.sweep)
    if args.storage is not None:
        check_storage_url(args.storage)
    storage = args.storage or default_storage(sweep)
    if args.worker:
        try:
            work(sweep, storage)
        except KeyboardInterrupt:
            print(f"error: worker {os.getpid()} interrupted; its trial is queued again by the next run", file=sys.stderr)
            return 130
        return 0
    out = Path(args.out or f"runs/sweeps/{sweep.name}.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"# sweep {sweep.name}: {sweep.sampler}, {sweep.n_trials} configurations, {args.workers} worker(s), "
          f"storage {redact_url(storage)}", flush=True)
    start = time.perf_counter()
    try:
        frame = run_sweep(sweep, storage, workers=args.workers, out=out, on_progress=_print_progress)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nerror: interrupted; finished trials are kept in {redact_url(storage)}: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    counts = ", ".join(f"{n} {s}" for s, n in frame.group_by("status").len().sort("status").iter_rows())
    print(f"# {frame.height} trials ({counts}) in {time.perf_counter() - start:.1f}s; wrote {out}")
    best = frame.filter(pl.col("status") == "complete").sort("recall", descending=True)
    with pl.Config(tbl_rows=30, tbl_cols=-1, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        print(best.select("trial", *sweep.space, "recall", "final_loss", "duration_s").head(10))
        table, rho = seed_agreement(frame)
        if rho:  # seeds swept: do the seeds rank the configurations alike?
            print("# recall per configuration and seed")
            print(table.with_columns(pl.selectors.float().round(3)).head(30))
            print("# Spearman rank correlation of the configurations' recall between seeds: "
                  + ", ".join(f"seeds {a} and {b}: {r:.2f}" for (a, b), r in rho.items()))
    return 0


DESCRIPTION = ("Run the trials of a sweep file with worker processes; re-running resumes (finished trials are "
               "skipped). Results: a parquet file, one row per trial.")


def add_parser(subparsers):
    """Register the `sweep` subcommand of ``python -m miras_lite`` (its handler returns the exit code)."""
    add_arguments(subparsers.add_parser("sweep", help="run a sweep (Optuna) from a TOML file", description=DESCRIPTION))


def main(argv=None):
    """``python -m miras_lite.sweeps``: the same command without the rest of the CLI (what workers run:
    they start faster)."""
    parser = argparse.ArgumentParser(prog="python -m miras_lite.sweeps", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        parser.error(str(error))


def add_arguments(p):
    """The sweep command's arguments on parser ``p``."""
    p.add_argument("sweep", help="the sweep file, e.g. sweeps/mqar_axes.toml")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///runs/sweeps/NAME.sqlite3; "
                   "postgresql://... lets workers on several machines share the study)")
    p.add_argument("--out", default=None, help="parquet file of the trials (default runs/sweeps/NAME.parquet)")
    p.add_argument("--worker", action="store_true", help="run as one worker: take queued trials until none is left")
    p.set_defaults(handler=run)
