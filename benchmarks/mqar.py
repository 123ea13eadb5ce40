"""`python -m benchmarks.mqar`: MirasLM on MQAR (V=8192, L=256, 16 pairs), time to a held-out accuracy.

Each recipe is a `RunConfig` with a time budget: a curriculum trains first on short, easy MQAR (L=64,
4 pairs: 4x cheaper steps, on which the recall circuit forms) and then on the target task, at a given
step or as soon as the mean training loss of 20 steps is below a threshold. Held-out evaluations are on
the target task only. The table reports the wall-clock time to the first evaluation at or above the
target accuracy, next to the recipe's budget, and the accuracy on a second, larger held-out set.
"""

import argparse
import sys
import time

import polars as pl

from miras_lite.config import FitConfig, MirasLMConfig, MQARConfig, RunConfig
from miras_lite.tasks.mqar import MQAR

from .common import machine_line, print_table

TARGET_TASK = MQARConfig(vocab_size=8192, seq_len=256, num_kv_pairs=16, train_examples=40_000, test_examples=256)
WARMUP_STAGE = {"seq_len": 64, "num_kv_pairs": 4}


def _recipe(spec, switch, advance_below=None, num_heads=1, chunk_size="auto", eta_max=None, steps=1400):
    return RunConfig(task=TARGET_TASK, spec=spec,
                     model=MirasLMConfig(d_model=64, n_layers=2, num_heads=num_heads, chunk_size=chunk_size,
                                         eta_max=eta_max),
                     fit=FitConfig(steps=steps, batch_size=32, lr=1e-2, warmup=50, eval_every=50, target=0.99),
                     curriculum=((0, WARMUP_STAGE), (switch, {})), advance_below=advance_below, threads=2)


# name -> (RunConfig, the time budget in seconds on 2 CPU cores)
RECIPES = {
    "gated_deltanet": (_recipe("gated_deltanet", switch=1000, advance_below=1.0, chunk_size=None), 180.0),
    "lp+lq": (_recipe({"bias": "lp", "retention": "lq"}, switch=600, chunk_size=8, eta_max=1.0, steps=1300), 300.0),
}


def quick(run):
    """A tiny version of a recipe (V=64, L=32, 4 pairs, 20 steps): a smoke test of the command."""
    return run.replace(task=MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4, train_examples=256, test_examples=16),
                       model=run.model.replace(d_model=16),
                       fit=run.fit.replace(steps=20, batch_size=8, warmup=2, eval_every=5),
                       curriculum=((0, {"seq_len": 16, "num_kv_pairs": 2}), (10, {})))


def train_recipe(name, run, budget_s, final_examples):
    """Train one recipe within its budget -> a result row (plain numbers; None where not reached)."""
    run = run.replace(fit=run.fit.replace(max_time=budget_s))
    model, metrics = run.train()
    evals = metrics.filter(pl.col("eval_accuracy").is_not_null()) if "eval_accuracy" in metrics.columns else None
    hit = evals.filter(pl.col("eval_accuracy") >= run.fit.target) if evals is not None else None
    first = hit.row(0, named=True) if hit is not None and hit.height else None
    stop = first or metrics.row(-1, named=True)
    final = MQAR(run.task.vocab_size, run.task.seq_len, run.task.num_kv_pairs, train_examples=1,
                 test_examples=final_examples, seed=run.seed + 1).evaluate(model)
    eval_s = 0.0 if evals is None else evals.filter(pl.col("step") <= stop["step"])["eval_s"].sum()
    return {"spec": name, "budget_s": budget_s, f"time_to_{run.fit.target}_s": first and first["time_s"],
            "cpu_s": stop["cpu_s"], "train_s": stop["time_s"] - eval_s, "steps": stop["step"],
            "acc_at_stop": stop.get("eval_accuracy"), "final_acc": final["accuracy"],
            "tokens_per_s": metrics["tokens_per_s"].median(), "met": bool(first and first["time_s"] <= budget_s)}


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4f}" if isinstance(value, float) and value <= 1 else f"{value:.1f}" if isinstance(value, float) else value


def run(args):
    recipes = {name: RECIPES[name] for name in args.specs}
    print(f"# MQAR V={TARGET_TASK.vocab_size} L={TARGET_TASK.seq_len} pairs={TARGET_TASK.num_kv_pairs}; {machine_line()}",
          flush=True)
    rows = []
    for name, (recipe, budget_s) in recipes.items():
        recipe = quick(recipe) if args.quick else recipe
        print(f"# {name}: {recipe.to_dict()}, budget {budget_s:.0f}s", flush=True)
        start = time.perf_counter()
        rows.append(train_recipe(name, recipe, budget_s * args.budget_factor, args.final_examples))
        print(f"# {name} done in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    frame = pl.DataFrame(rows)
    print_table(frame.columns, [[_cell(v) for v in row.values()] for row in rows])
    print("# time_to_*: wall clock from the first step to the first held-out evaluation at or above the target "
          "('-': not reached within the budget); train_s: the same without the evaluations; final_acc: "
          f"{args.final_examples} other held-out examples; tokens_per_s: median training throughput.")
    if args.out:
        frame.write_parquet(args.out)
    return frame


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.mqar", description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="recipes to run")
    p.add_argument("--budget-factor", type=float, default=1.0, help="stop each recipe at factor × its budget")
    p.add_argument("--final-examples", type=int, default=2000, help="held-out examples scored at the end")
    p.add_argument("--quick", action="store_true", help="tiny versions of the recipes (a smoke test)")
    p.add_argument("--out", help="write the results here (parquet)")
    return p


def main(argv=None):
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
