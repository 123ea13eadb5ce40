"""`python -m benchmarks.claims`: claims of the papers behind the project, tested at toy scale.

    python -m benchmarks.claims                                   # every claim, seeds 0 1 2, into runs/claims/
    python -m benchmarks.claims --claims titans_ablation --workers 2
    python -m benchmarks.claims --dir data/claims                 # rebuild the shipped results
    python -m benchmarks.claims --reduced --dir /tmp/claims       # tiny models and tasks: a smoke test

A claim compares models (its rows) that train with one budget (steps, batch, task) and the same seeds, and
states what the paper found: a `Beats` (one model scores above another) or a `Reaches` (a model reaches a
level). The score of a row is its recall, the claim's `score` of the trained model: on MQAR the mean held-out
accuracy over numbers of key-value pairs (as in the sweeps, `sweeps.objective.train_trial`). The verdict, per
expectation:

    reproduced      every seed agrees with the paper: by more than `MARGIN` (Beats), or at the level (Reaches)
    not reproduced  every seed disagrees with it: by more than `MARGIN`, or below the level
    inconclusive    the seeds disagree, or a difference is within `MARGIN`

Each row (claim, model, seed) trains in a process of its own, on one thread, and writes its result file when
it ends (DIR/rows/CLAIM/MODEL/seed-N.json, written then renamed): a crash loses that row only, and a rerun
trains the rows that have no file yet. DIR/results.parquet collects the rows.

The package: `core` (claims, expectations, verdicts, the runs they share), one module per paper's claims
(`titans`, `miras`, ...), `catalog` (every claim by name) and `runner` (rows, processes, results, the command).
"""

from .catalog import all_claims
from .core import MARGIN, SEEDS, Beats, Claim, Reaches
from .runner import collect, main, row_path, summary, train_row, verdicts

__all__ = ["MARGIN", "SEEDS", "Beats", "Claim", "Reaches", "all_claims", "collect", "main", "row_path", "summary",
           "train_row", "verdicts"]
