"""Rows, their processes and their results: the command `python -m benchmarks.claims` (see the package)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from miras_lite.files import atomic_write, atomic_write_text

from ..common import machine_line, print_table
from .catalog import all_claims
from .core import SEEDS

FAILED_TAIL = 2000  # characters of a failed row's stderr kept in the log


def row_path(folder, claim, model, seed):
    return Path(folder) / "rows" / claim / model.replace(" ", "_").replace("/", "-") / f"seed-{seed}.json"


def train_row(claim, model, seed, folder, reduced_runs=False):
    """Train one row and write its result file: the row's config and what the claim's score returned (recall, its
    curve, e.g. accuracy_by_pairs, final_loss, train_s; not the loss curve)."""
    chosen = all_claims(reduced_runs)[claim]
    run = chosen.runs[model].replace(seed=seed)
    result = chosen.score(run)
    kept = {name: value for name, value in result.items() if name != "loss_curve"}
    row = {"claim": claim, "model": model, "seed": seed, **kept, "config": run.to_dict()}
    atomic_write_text(row_path(folder, claim, model, seed), json.dumps(row))
    return row


# ----------------------------------------------------------------------------------------- every row


def planned_rows(claims, seeds):
    return [(claim.name, model, seed) for claim in claims for model in claim.runs for seed in seeds]


def run_rows(rows, folder, workers, reduced_runs):
    """Train `rows` in processes of their own, `workers` at a time; -> the rows that failed."""
    waiting, running, failed = list(rows), {}, []
    while waiting or running:
        while waiting and len(running) < workers:
            claim, model, seed = waiting.pop(0)
            command = [sys.executable, "-m", "benchmarks.claims", "--row", claim, model, str(seed), "--dir",
                       str(folder), *(["--reduced"] if reduced_runs else [])]
            # stderr goes to a file, not a pipe: a pipe nobody reads until the end blocks a row that writes much
            log = tempfile.TemporaryFile(mode="w+")
            running[(claim, model, seed)] = (subprocess.Popen(command, stderr=log, text=True), log)
        time.sleep(0.2)
        for key, (process, log) in list(running.items()):
            if process.poll() is None:
                continue
            del running[key]
            log.seek(0)
            error = log.read()
            log.close()
            status = "done" if process.returncode == 0 else f"failed (exit {process.returncode})"
            print(f"# {key[0]} / {key[1]} / seed {key[2]}: {status}", flush=True)
            if process.returncode != 0:
                failed.append(key)
                print(error[-FAILED_TAIL:], file=sys.stderr, flush=True)
    return failed


def collect(folder):
    """Every row file under `folder`/rows as one frame (empty when there is none)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("rows/*/*/seed-*.json")) if p.is_file()]
    if not rows:
        return pl.DataFrame(schema={"claim": pl.String, "model": pl.String, "seed": pl.Int64, "recall": pl.Float64})
    # claims score differently (accuracy by pairs, by length, ...): a column a row lacks is null there
    return pl.DataFrame([{**r, "config": json.dumps(r["config"])} for r in rows], infer_schema_length=None)


def verdicts(claims, results):
    """One row per expectation of each claim: the verdict and why, from the results frame."""
    out = []
    for claim in claims:
        mine = results.filter(pl.col("claim") == claim.name)
        recall = {model: {} for model in claim.runs}
        for row in mine.iter_rows(named=True):
            recall.setdefault(row["model"], {})[row["seed"]] = row["recall"]
        for expectation in claim.expect:
            verdict, why = expectation.judge(recall)
            out.append({"claim": claim.name, "expects": str(expectation), "verdict": verdict, "why": why})
    return pl.DataFrame(out)


def summary(results):
    """Recall per claim and model: mean, spread (min-max) over the seeds, and the seeds measured."""
    return (results.group_by("claim", "model", maintain_order=True)
            .agg(pl.col("recall").mean().alias("mean"), pl.col("recall").min().alias("min"),
                 pl.col("recall").max().alias("max"), pl.col("seed").sort().alias("seeds"))
            .sort("claim", "model"))


def report(claims, folder):
    results = collect(folder)
    atomic_write(Path(folder) / "results.parquet", results.write_parquet)
    table = summary(results)
    print_table(["claim", "model", "recall mean", "min", "max", "seeds"],
                [[r["claim"], r["model"], f"{r['mean']:.3f}", f"{r['min']:.3f}", f"{r['max']:.3f}",
                  " ".join(map(str, r["seeds"]))] for r in table.iter_rows(named=True)])
    for row in verdicts(claims, results).iter_rows(named=True):
        print(f"{row['claim']}: {row['expects']}: {row['verdict']} ({row['why']})")
    return results


# ------------------------------------------------------------------------------------------------ CLI


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claims", description="the papers' claims at toy scale")
    parser.add_argument("--claims", nargs="+", help=f"default: all ({', '.join(all_claims())})")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--workers", type=int, default=1, help="rows trained at once (one thread each)")
    parser.add_argument("--dir", default="runs/claims", help="where the rows and results.parquet go")
    parser.add_argument("--reduced", action="store_true", help="tiny models and tasks (a smoke test)")
    parser.add_argument("--row", nargs=3, metavar=("CLAIM", "MODEL", "SEED"), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.row:
        claim, model, seed = args.row
        train_row(claim, model, int(seed), args.dir, args.reduced)
        return 0
    known = all_claims(args.reduced)
    unknown = sorted(set(args.claims or ()) - set(known))
    if unknown:
        raise ValueError(f"--claims: {', '.join(unknown)} unknown; allowed values: {', '.join(known)}")
    if args.workers < 1:
        raise ValueError(f"--workers={args.workers} must be at least 1")
    claims = [known[name] for name in args.claims or known]
    rows = planned_rows(claims, args.seeds)
    todo = [r for r in rows if not row_path(args.dir, *r).is_file()]
    print(f"# claims {', '.join(c.name for c in claims)}: {len(rows)} rows, {len(rows) - len(todo)} already in "
          f"{args.dir}, {len(todo)} to train with {args.workers} worker(s); {machine_line()}", flush=True)
    failed = run_rows(todo, args.dir, args.workers, args.reduced)
    report(claims, args.dir)
    if failed:
        print(f"# {len(failed)} row(s) failed; run the command again to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
