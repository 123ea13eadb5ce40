"""`python -m benchmarks.mqar speed|playground|recipes`: the presets on MQAR, next to gated_deltanet.

    speed       training tokens/s of MirasLM(8192, d_model=64, 2 layers, 2 heads, spec=NAME) on MQAR (L=256,
                16 pairs, batch 32, one thread), steps after warm-up, every preset and attention; the ratio to
                gated_deltanet measured in the same run (target >= 0.5 for the MLP-memory presets)
    playground  every preset and attention at its recommended settings (`presets.recommended`) on the playground's
                default MQAR (V=64, L=32, 4 pairs): time to a held-out accuracy of 0.9 (target: within 90 s on 2 cores)
    recipes     MirasLM on MQAR (V=8192, L=256, 16 pairs): time to 0.9 / 0.99 held-out accuracy per recipe

A recipe is a `RunConfig` with a time budget: a curriculum trains first on short, easy MQAR (L=64, 4 pairs:
cheaper steps, on which the recall circuit forms) and then on the target task, at a given step or as soon
as the mean training loss of 20 steps is below a threshold. Held-out evaluations are on the target task.
"""

import argparse
import sys
import time

import polars as pl
import torch

import miras_lite as ml
from miras_lite.config import FitConfig, MirasLMConfig, MQARConfig, RunConfig
from miras_lite.presets import recommended as recommended_settings
from miras_lite.tasks.mqar import MQAR
from miras_lite.train import make_optimizer

from .common import machine_line, print_table

FLAGSHIPS = ("titans", "moneta", "yaad", "memora")


# ---------------------------------------------------------------------------------------------- speed


def _speed_model(name, vocab_size):
    mixer = "attention" if name == "attention" else "miras"
    return MirasLMConfig(d_model=64, n_layers=2, num_heads=2, mixer=mixer).build(
        vocab_size, "gated_deltanet" if name == "attention" else name)


def training_speeds(names, steps, task):
    """Training tokens/s of each model: `fit` steps timed round-robin (one step of every model in turn, `steps`
    rounds after 2 of warm-up), the fastest of each model's steps. Interleaving spreads whatever else the
    machine does over every model alike, so the ratios hold even when the absolute speeds drift."""
    built = task.build(0)
    models = {name: _speed_model(name, built.vocab_size) for name in names}
    optimizers = {name: make_optimizer(model, 1e-3, 0.1) for name, model in models.items()}
    times = {name: [] for name in names}
    for round_ in range(steps + 2):
        inputs, labels = built.batch(32, round_)
        for name, model in models.items():
            start = time.perf_counter()
            loss = model(inputs, labels=labels)["loss"]
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: inputs.numel() / min(seconds) for name, seconds in times.items()}


def speed(args):
    task = MQARConfig(vocab_size=8192, seq_len=256, num_kv_pairs=16, train_examples=32 * (args.steps + 2),
                      test_examples=1)
    if args.quick:
        task = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4, train_examples=32 * (args.steps + 2),
                          test_examples=1)
    names = ["attention", *ml.PRESETS]
    torch.set_num_threads(1)
    print(f"# training tokens/s, MirasLM({task.vocab_size}, d_model=64, 2 layers, 2 heads) on MQAR L={task.seq_len}, "
          f"{task.num_kv_pairs} pairs, batch 32, one thread: the fastest of {args.steps} steps per model, models taking "
          f"turns step by step; {machine_line()}", flush=True)
    speeds = training_speeds(names, args.steps, task)
    rows = []
    for name in names:
        memory = ml.preset(name).memory if name in ml.PRESETS else "-"
        ratio = speeds[name] / speeds["gated_deltanet"]
        rows.append({"model": name, "memory": memory, "tokens_per_s": speeds[name], "vs_gated_deltanet": ratio,
                     "target": 0.5 if memory == "mlp" else None, "met": None if memory != "mlp" else ratio >= 0.5})
    _report(rows, args.out)


# ----------------------------------------------------------------------------------------- playground

PLAYGROUND_TASK = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4, train_examples=4096, test_examples=256)


def playground_run(name):
    """A preset (or "attention", the softmax-attention baseline) at its recommended settings on the playground's
    default task, as the playground trains it."""
    recommended = recommended_settings(name)
    return RunConfig(task=PLAYGROUND_TASK, spec="gated_deltanet" if name == "attention" else name,
                     model=MirasLMConfig(d_model=64, n_layers=2, num_heads=1, chunk_size=recommended.chunk_size,
                                         eta_max=recommended.eta_max, mixer=_mixer(name)),
                     fit=FitConfig(steps=recommended.steps, batch_size=16, lr=recommended.lr,
                                   warmup=min(50, recommended.steps // 10), eval_every=max(1, recommended.steps // 20)))


def _mixer(name):
    return "attention" if name == "attention" else "miras"


def playground(args):
    names = args.presets or ["attention", *ml.PRESETS]
    print(f"# every preset at its recommended settings on MQAR V=64, L=32, 4 pairs (MirasLM d_model=64, 2 layers, 1 "
          f"head, batch 16); time to 0.9 held-out accuracy, budget {args.budget:.0f} s; {machine_line()}", flush=True)
    rows = []
    for name in names:
        run = playground_run(name)
        run = run.replace(fit=run.fit.replace(max_time=args.budget, target=0.9), threads=args.threads)
        _, metrics = run.train()
        rows.append(_time_to(name, metrics, 0.9, args.budget))
        print(f"# {name}: {rows[-1]}", file=sys.stderr, flush=True)
    _report(rows, args.out)


def _time_to(name, metrics, target, budget):
    evals = metrics.filter(pl.col("eval_accuracy").is_not_null()) if "eval_accuracy" in metrics.columns else None
    hit = evals.filter(pl.col("eval_accuracy") >= target) if evals is not None else None
    first = hit.row(0, named=True) if hit is not None and hit.height else None
    best = None if evals is None or evals.height == 0 else float(evals["eval_accuracy"].max())
    return {"model": name, f"time_to_{target}_s": first and first["time_s"],
            "steps": (first or metrics.row(-1, named=True))["step"], "best_acc": best, "budget_s": budget,
            "met": bool(first and first["time_s"] <= budget)}


# -------------------------------------------------------------------------------------------- recipes

TARGET_TASK = MQARConfig(vocab_size=8192, seq_len=256, num_kv_pairs=16, train_examples=40_000, test_examples=256)
WARMUP_STAGE = {"seq_len": 64, "num_kv_pairs": 4}


def _recipe(spec, switch, advance_below=None, num_heads=1, chunk_size="auto", eta_max=None, steps=1400, lr=1e-2,
            target=0.99, mixer="miras"):
    return RunConfig(task=TARGET_TASK, spec=spec,
                     model=MirasLMConfig(d_model=64, n_layers=2, num_heads=num_heads, chunk_size=chunk_size,
                                         eta_max=eta_max, mixer=mixer),
                     fit=FitConfig(steps=steps, batch_size=32, lr=lr, warmup=50, eval_every=50, target=target),
                     curriculum=((0, WARMUP_STAGE), (switch, {})), advance_below=advance_below, threads=2)


# name -> (RunConfig, the time budget in seconds on 2 CPU cores)
RECIPES = {
    "gated_deltanet": (_recipe("gated_deltanet", switch=1000, advance_below=1.0, chunk_size=None), 180.0),
    # softmax attention (with the same short conv on q, k, v) at its recommended learning rate, same curriculum
    "attention": (_recipe("gated_deltanet", switch=1000, advance_below=1.0, mixer="attention",
                          lr=recommended_settings("attention").lr), 180.0),
    "lp+lq": (_recipe({"bias": "lp", "retention": "lq"}, switch=600, chunk_size=8, eta_max=1.0, steps=1300), 300.0),
    # the flagships with their preset's inner rate and learning rate, in chunks of 32 tokens
    **{name: (_recipe(name, switch=1500, advance_below=1.0, chunk_size=32, eta_max=ml.named_preset(name).recommended.eta_max,
                      lr=ml.named_preset(name).recommended.lr, steps=3000, target=0.9), 600.0) for name in FLAGSHIPS},
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
    row = _time_to(name, metrics, run.fit.target, budget_s)
    final = MQAR(run.task.vocab_size, run.task.seq_len, run.task.num_kv_pairs, train_examples=1,
                 test_examples=final_examples, seed=run.seed + 1).evaluate(model)
    return {**row, "final_acc": final["accuracy"], "tokens_per_s": float(metrics["tokens_per_s"].median())}


def recipes(args):
    print(f"# MQAR V={TARGET_TASK.vocab_size} L={TARGET_TASK.seq_len} pairs={TARGET_TASK.num_kv_pairs}; {machine_line()}",
          flush=True)
    rows = []
    for name in args.specs:
        recipe, budget_s = RECIPES[name]
        recipe = quick(recipe) if args.quick else recipe
        print(f"# {name}: {recipe.to_dict()}, budget {budget_s:.0f}s", flush=True)
        start = time.perf_counter()
        rows.append(train_recipe(name, recipe, budget_s * args.budget_factor, args.final_examples))
        print(f"# {name} done in {time.perf_counter() - start:.0f}s: {rows[-1]}", file=sys.stderr, flush=True)
    _report(rows, args.out)
    print(f"# time_to_*: wall clock from the first step to the first held-out evaluation at or above the target ('-': "
          f"not reached within the budget); final_acc: {args.final_examples} other held-out examples.")


# ------------------------------------------------------------------------------------------------ CLI


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:,.0f}"
    return value


def _report(rows, out):
    """Print the rows as one table and write them (parquet); a column missing from a row (recipes with other
    targets have other time_to_* columns) is empty there."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{column: row.get(column) for column in columns} for row in rows]
    frame = pl.DataFrame(rows)
    print_table(columns, [[_cell(v) for v in row.values()] for row in rows])
    if out:
        frame.write_parquet(out)
    return frame


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mqar", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    p = sub.add_parser("speed", help="training tokens/s of every preset, next to gated_deltanet")
    p.add_argument("--steps", type=int, default=6, help="timed steps per model (after 2 of warm-up)")
    p.add_argument("--quick", action="store_true", help="MQAR V=64, L=32, 4 pairs instead (a smoke test)")
    p.set_defaults(run=speed)
    p = sub.add_parser("playground", help="every preset at its recommended settings on the playground's MQAR")
    p.add_argument("--presets", nargs="+", choices=["attention", *ml.PRESETS], help="default: all, and attention")
    p.add_argument("--budget", type=float, default=90.0, help="seconds per preset (default 90)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(run=playground)
    p = sub.add_parser("recipes", help="time to accuracy on MQAR V=8192, L=256, 16 pairs")
    p.add_argument("--specs", nargs="+", default=["gated_deltanet", "attention", *FLAGSHIPS], choices=list(RECIPES))
    p.add_argument("--budget-factor", type=float, default=1.0, help="stop each recipe at factor × its budget")
    p.add_argument("--final-examples", type=int, default=2000, help="held-out examples scored at the end")
    p.add_argument("--quick", action="store_true", help="tiny versions of the recipes (a smoke test)")
    p.set_defaults(run=recipes)
    for p in sub.choices.values():
        p.add_argument("--out", help="write the results here (parquet)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if torch.get_num_threads() > 2:
        torch.set_num_threads(2)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
