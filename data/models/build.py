"""Rebuild the trained models shipped in data/models/ (run directories: checkpoint.pt, metrics.parquet, run.json).

    .venv/bin/python data/models/build.py                 # all of them (about 50 minutes on 2 cores)
    .venv/bin/python data/models/build.py titans armt-qa1  # some

Each MQAR model is a preset trained with its recommended settings on the playground's default task (MQAR with
V=64, L=32, 4 pairs; `benchmarks.mqar.playground_run`); armt-qa1 is the ARMT recipe of `benchmarks.armt` (25
CPU-minutes), plus its accuracy by context length (lengths.parquet: 2K to 10M tokens, about 12 minutes more), which
notebook 07 shows;
that table alone, for the model as it is:

    .venv/bin/python -m benchmarks.armt --evaluate data/models/armt-qa1 --out data/models/armt-qa1/lengths.parquet

`python -m miras_lite eval data/models/NAME` evaluates one; the notebooks and the reports load them.
"""

import shutil
import sys
from pathlib import Path

from benchmarks.armt import BUDGET_CPU_S, RECIPE, build_parser
from benchmarks.armt import run as armt_bench
from benchmarks.mqar import playground_run

HERE = Path(__file__).resolve().parent
MQAR_MODELS = ("gated_deltanet", "deltanet", "longhorn", "titans")
MODELS = (*MQAR_MODELS, "armt-qa1")


def build(name):
    out = HERE / name
    if out.exists():
        shutil.rmtree(out)
    if name == "armt-qa1":
        RECIPE.train(out_dir=out, callbacks=[lambda row: row["cpu_s"] >= BUDGET_CPU_S])
        armt_bench(build_parser().parse_args(["--evaluate", str(out), "--out", str(out / "lengths.parquet")]))
    else:
        run = playground_run(name)
        run.replace(fit=run.fit.replace(eval_every=run.fit.steps // 10), threads=2).train(out_dir=out)
    (out / ".lock").unlink(missing_ok=True)
    return out


def main(names):
    for name in names or MODELS:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
        print(f"built {build(name)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
