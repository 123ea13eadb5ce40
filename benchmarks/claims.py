"""`python -m benchmarks.claims`: claims of the papers behind the project, tested at toy scale.

    python -m benchmarks.claims                                   # every claim, seeds 0 1 2, into runs/claims/
    python -m benchmarks.claims --claims titans_ablation --workers 2
    python -m benchmarks.claims --dir data/claims                 # rebuild the shipped results
    python -m benchmarks.claims --reduced --dir /tmp/claims       # tiny models and tasks: a smoke test

A claim compares models (its rows) that train with one budget (steps, batch, task) and the same seeds, and
states what the paper found: a `Beats` (one model scores above another) or a `Reaches` (a model reaches a
level). The score of a row is its recall: the mean held-out accuracy over numbers of key-value pairs (as in
the sweeps, `sweeps.objective.train_trial`). The verdict, per expectation:

    reproduced      every seed agrees with the paper, by more than `MARGIN`
    not reproduced  every seed disagrees with it, by more than `MARGIN`
    inconclusive    the seeds disagree, or the difference is within `MARGIN`

Each row (claim, model, seed) trains in a process of its own, on one thread, and writes its result file when
it ends (DIR/rows/CLAIM/MODEL/seed-N.json, written then renamed): a crash loses that row only, and a rerun
trains the rows that have no file yet. DIR/results.parquet collects the rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

import miras_lite as ml
from miras_lite.config import FitConfig, MirasLMConfig, MQARConfig, RunConfig
from miras_lite.files import atomic_write, atomic_write_text
from miras_lite.sweeps.objective import train_trial

from .common import machine_line, print_table

MARGIN = 0.02  # recall differences within this are "no difference"
SEEDS = (0, 1, 2)
FAILED_TAIL = 2000  # characters of a failed row's stderr kept in the log


@dataclass(frozen=True)
class Beats:
    """The paper finds `better` above `worse`."""

    better: str
    worse: str

    def judge(self, recall):
        """(verdict, why) from recall {model: {seed: value}}, the two models paired by seed."""
        seeds = sorted(set(recall[self.better]) & set(recall[self.worse]))
        gaps = [recall[self.better][s] - recall[self.worse][s] for s in seeds]
        shown = ", ".join(f"{g:+.3f}" for g in gaps)
        return _verdict(gaps, f"{self.better} − {self.worse} per seed: {shown}")


@dataclass(frozen=True)
class Reaches:
    """The paper finds `model` at `level` or above."""

    model: str
    level: float

    def judge(self, recall):
        values = [recall[self.model][s] for s in sorted(recall[self.model])]
        shown = ", ".join(f"{v:.3f}" for v in values)
        return _verdict([v - self.level for v in values], f"{self.model} per seed: {shown} (level {self.level})")


def _verdict(gaps, why):
    if not gaps:
        return "inconclusive", "no seed measured"
    if all(g > MARGIN for g in gaps):
        return "reproduced", why
    if all(g < -MARGIN for g in gaps):
        return "not reproduced", why
    return "inconclusive", why


@dataclass(frozen=True)
class Claim:
    """What a paper found (`source`, `says`) and the runs that test it at toy scale (`runs`: model -> RunConfig,
    seed 0; every seed replaces it)."""

    name: str
    source: str
    says: str
    runs: dict
    expect: tuple
    paper: dict = field(default_factory=dict)  # model -> the paper's figure for it, where it gives one


# ------------------------------------------------------------------------------------------- the runs

# the example sweep's task (sweeps/mqar_axes.toml): the playground's MQAR, trained on 1-4 pairs, recall over 1-8
RECALL_TASK = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=(1, 2, 3, 4), train_examples=4096,
                         test_examples=256, eval_pairs=(1, 2, 4, 6, 8))
TINY_TASK = MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2, train_examples=64, test_examples=16,
                       eval_pairs=(1, 2))


def preset_run(preset, spec=None, steps=None, d_model=64):
    """MirasLM (2 layers, 1 head) on `RECALL_TASK` at `preset`'s recommended chunk size, η_max and learning rate;
    `spec` replaces fields of the preset's spec; `steps`: the budget (default: the preset's recommended)."""
    recommended = ml.named_preset(preset).recommended
    steps = steps or recommended.steps
    return RunConfig(task=RECALL_TASK, spec={"preset": preset, **(spec or {})},
                     model=MirasLMConfig(d_model=d_model, n_layers=2, num_heads=1, chunk_size=recommended.chunk_size,
                                         eta_max=recommended.eta_max),
                     fit=FitConfig(steps=steps, batch_size=16, lr=recommended.lr, warmup=min(50, steps // 10)),
                     threads=1)


def reduced(run):
    """A tiny version of a run (V=16, L=16, d_model 8, 4 steps): the suite's smoke test of the command."""
    return run.replace(task=TINY_TASK, model=run.model.replace(d_model=8, chunk_size=4),
                       fit=run.fit.replace(steps=4, batch_size=4, warmup=1))


def titans_ablation():
    steps = ml.named_preset("titans").recommended.steps
    variants = {"titans": {}, "titans w/o momentum": {"optimizer": "gd"},
                "titans w/o weight decay": {"retention": "none"},
                "titans w/o both": {"optimizer": "gd", "retention": "none"}}
    return Claim(
        name="titans_ablation", source="Titans (arXiv 2501.00663), ablation table",
        says="Removing the momentum of the surprise or the weight decay (forgetting) of the long-term memory "
             "makes the model worse on language modelling, reasoning and long context.",
        runs={name: preset_run("titans", spec, steps) for name, spec in variants.items()},
        expect=(Beats("titans", "titans w/o momentum"), Beats("titans", "titans w/o weight decay")))


def moneta_pq():
    steps = ml.named_preset("moneta").recommended.steps
    points = {(3, 4), (2, 4), (4, 4), (3, 2)}
    return Claim(
        name="moneta_pq", source="Miras (arXiv 2504.13173), the effect of p and q (Moneta)",
        says="Moneta's ℓp attentional bias and ℓq retention with p = 3, q = 4 do better than the ℓ2 choices "
             "(p = 2: the usual regression loss; q = 2: no normalisation).",
        runs={f"p={p}, q={q}": preset_run("moneta", {"p": float(p), "q": float(q)}, steps)
              for p, q in sorted(points)},
        expect=(Beats("p=3, q=4", "p=2, q=4"), Beats("p=3, q=4", "p=3, q=2")))


def all_claims(reduced_runs=False):
    """name -> Claim, every claim of the benchmark (tiny runs with `reduced_runs`)."""
    claims = [titans_ablation(), moneta_pq()]
    if reduced_runs:
        claims = [Claim(c.name, c.source, c.says, {m: reduced(r) for m, r in c.runs.items()}, c.expect, c.paper)
                  for c in claims]
    return {c.name: c for c in claims}


# -------------------------------------------------------------------------------------------- one row


def row_path(folder, claim, model, seed):
    return Path(folder) / "rows" / claim / model.replace(" ", "_").replace("/", "-") / f"seed-{seed}.json"


def train_row(claim, model, seed, folder, reduced_runs=False):
    """Train one row and write its result file (the row's config, recall curve and timings)."""
    run = all_claims(reduced_runs)[claim].runs[model].replace(seed=seed)
    result = train_trial(run)
    row = {"claim": claim, "model": model, "seed": seed, "recall": result["recall"],
           "accuracy_by_pairs": result["accuracy_by_pairs"], "final_loss": result["final_loss"],
           "train_s": result["train_s"], "config": run.to_dict()}
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
    return pl.DataFrame([{**r, "config": json.dumps(r["config"])} for r in rows])


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
            out.append({"claim": claim.name, "expects": _expects(expectation), "verdict": verdict, "why": why})
    return pl.DataFrame(out)


def _expects(expectation):
    if isinstance(expectation, Beats):
        return f"{expectation.better} > {expectation.worse}"
    return f"{expectation.model} >= {expectation.level}"


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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claims", description=__doc__.split("\n\n")[0])
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
