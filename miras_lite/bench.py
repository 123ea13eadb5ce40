"""Benchmarks: `python -m miras_lite.bench <command>`.

Commands
    train   MQAR (V=8192, L=256, 16 pairs) time to >= 0.99 held-out accuracy of MirasLM (2 layers, d_model=64)
            with gated_deltanet and with an lp-bias / lq-retention memory, next to the issue's targets.
    scan    forward+backward time of the exact recurrence as a token loop, of `memory_scan(chunk_size=None)`
            where it has an exact chunk-parallel form (l2: the UT-transform delta rule), and of the chunked
            mini-batch form (chunk_size=64), per attentional bias and sequence length.

Add a command by writing `_add_<name>(subparsers)` that registers a subparser with
`set_defaults(run=<function taking the parsed args>)` and listing it in `COMMANDS`.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .recurrent import exact_scan
from .scan import exact_parallel_update, memory_scan
from .spec import MemorySpec

# --------------------------------------------------------------------------------------- helpers


def fastest_seconds(fn, repeats):
    """Fastest wall-clock seconds of `repeats` calls of fn(): the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _add_options(parser, kind, options):
    """Register options of one type given as (flag, default, help); the help ends with the default."""
    for flag, default, help_text in options:
        parser.add_argument(flag, type=kind, default=default, help=f"{help_text} (default {default})".lstrip())


def _print_table(columns, rows, out=sys.stdout):
    """A plain whitespace-aligned table: a header line, a rule, one line per row."""
    cells = [[str(c) for c in columns]] + [[str(x) for x in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    print("\n".join(lines), file=out, flush=True)


# ---------------------------------------------------------------------------------------- scan

SCAN_BIASES = {
    "l2": MemorySpec(bias="l2", retention="l2", optimizer="gd", grad_at="previous"),
    "lp": MemorySpec(bias="lp", retention="l2", optimizer="gd", grad_at="previous"),
    "huber[coord]": MemorySpec(bias="huber", huber_mode="coord", retention="l2", optimizer="gd", grad_at="previous"),
}


def _scan_inputs(T, B, H, D, seed):
    """Random leaf inputs (all requiring grad): unit-norm q/k, η ≈ 0.1, α ≈ 0.99."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    eta = 0.2 * torch.sigmoid(torch.randn(B, T, H, generator=g))  # in (0, 0.2), mean 0.1
    alpha = 1 - 0.02 * torch.sigmoid(torch.randn(B, T, H, generator=g))  # in (0.98, 1), mean 0.99
    grad_out = torch.randn(B, T, H, D, generator=g)
    leaves = [x.requires_grad_() for x in (q, k, v, eta, alpha)]
    return leaves, grad_out


def _scan_step(spec, leaves, grad_out, chunk_size):
    q, k, v, eta, alpha = leaves
    for x in leaves:
        x.grad = None
    o, _ = memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec, chunk_size=chunk_size)
    o.backward(grad_out)


def _token_loop_step(spec, leaves, grad_out):
    """The exact recurrence one token at a time (`recurrent.exact_scan`), whatever `memory_scan` would pick."""
    q, k, v, eta, alpha = leaves
    for x in leaves:
        x.grad = None
    B, T, H, Dk = q.shape
    zeros = (q.new_zeros(B, H, Dk, v.shape[-1]),)
    o = exact_scan(*(x.transpose(1, 2) for x in (q, k, v, eta, alpha)), None, None, spec, zeros, zeros)[0]
    o.backward(grad_out.transpose(1, 2))


def run_scan(args):
    B, H, D, C = args.batch, args.heads, args.dim, args.chunk
    lengths = (64, 256) if args.quick else (256, 1024, 4096)
    print(
        f"# memory_scan forward+backward, float32 CPU, torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; "
        f"B={B} H={H} Dk=Dv={D}, retention=l2, optimizer=gd, grad_at=previous, η≈0.1, α≈0.99",
        flush=True,
    )
    print(
        f"# loop_s: exact recurrence token by token, fastest of {args.exact_repeats} run(s); exact_s: memory_scan(chunk_size=None) "
        f"where an exact chunk-parallel form exists (else '-': it is the loop); chunked_s: chunk_size={C}; "
        f"fastest of {args.repeats} after 1 warm-up; speedup = loop_s / chunked_s",
        flush=True,
    )
    leaves, grad_out = _scan_inputs(32, B, H, D, seed=0)
    _token_loop_step(SCAN_BIASES["l2"], leaves, grad_out)
    for chunk_size in (None, C):
        _scan_step(SCAN_BIASES["l2"], leaves, grad_out, chunk_size)
    rows = []
    for name, spec in SCAN_BIASES.items():
        for T in lengths:
            leaves, grad_out = _scan_inputs(T, B, H, D, seed=T)
            loop = fastest_seconds(lambda: _token_loop_step(spec, leaves, grad_out), args.exact_repeats)
            exact = "-"
            if exact_parallel_update(spec):
                exact = f"{fastest_seconds(lambda: _scan_step(spec, leaves, grad_out, None), args.repeats):.4f}"
            _scan_step(spec, leaves, grad_out, C)
            chunked = fastest_seconds(lambda: _scan_step(spec, leaves, grad_out, C), args.repeats)
            rows.append((name, T, f"{loop:.4f}", exact, f"{chunked:.4f}", f"{loop / chunked:.1f}x"))
            if args.progress:
                print(f"# done {name} T={T}", file=sys.stderr, flush=True)
    _print_table(("bias", "T", "loop_s", "exact_s", "chunked_s", "speedup"), rows)
    print(f"# load average at the end {os.getloadavg()[0]:.1f} (other processes on the machine skew the times)", flush=True)


def _add_scan(subparsers):
    p = subparsers.add_parser(
        "scan",
        help="exact recurrence (token loop, exact parallel form) vs chunked memory_scan, forward+backward",
        description="Time forward+backward of the exact token loop, the exact chunk-parallel form and chunk_size=C for the biases "
        "l2, lp and huber[coord] and T in (256, 1024, 4096).",
    )
    p.add_argument("--quick", action="store_true", help="T in (64, 256) only (a smoke test)")
    _add_options(p, int, [("--repeats", 5, "repeats of the parallel forms (fastest counts)"),
                          ("--exact-repeats", 3, "repeats of the slow token loop (fastest counts)"),
                          ("--chunk", 64, "chunk size C of the chunked form"), ("--batch", 2, "B"),
                          ("--heads", 4, "H"), ("--dim", 64, "Dk = Dv")])
    p.add_argument("--progress", action="store_true", help="print a line to stderr after each row")
    p.set_defaults(run=run_scan)


# ---------------------------------------------------------------------------------------- train

# The MQAR numbers: MirasLM (2 layers, d_model=64) on MQAR (V=8192, L=256, 16 pairs), time to
# >= 0.99 held-out accuracy on 2 CPU cores. A recipe trains first on short, easy MQAR (L=64, 4 pairs:
# 4x cheaper steps, on which the recall circuit forms) and then on the target task (`TaskStages`): at
# step `switch`, or as soon as the mean training loss of the last 20 steps is below `switch_below`.
# Every held-out evaluation is on the target task (none before the switch).
TRAIN_TASK = dict(vocab_size=8192, seq_len=256, num_kv_pairs=16)
WARMUP_TASK = dict(vocab_size=8192, seq_len=64, num_kv_pairs=4)
TRAIN_RECIPES = {
    "gated_deltanet": dict(spec=dict(preset="gated_deltanet"), target_s=180.0, num_heads=1, chunk_size=None,
                           miras_kwargs=None, lr=1e-2, batch_size=32, warmup=50, switch=1000, switch_below=1.0,
                           steps=1400, train_examples=40_000, eval_every=50),
    "lp+lq": dict(spec=dict(bias="lp", retention="lq"), target_s=300.0, num_heads=1, chunk_size=8,
                  miras_kwargs=dict(eta_max=1.0), lr=1e-2, batch_size=32, warmup=50, switch=600, switch_below=None,
                  steps=1300, train_examples=40_000, eval_every=50),
}
QUICK_TASK = dict(vocab_size=64, seq_len=32, num_kv_pairs=4)
QUICK_WARMUP_TASK = dict(vocab_size=64, seq_len=16, num_kv_pairs=2)


def _spec_name(spec):
    """A recipe's spec in a few words: the preset name, or the MemorySpec fields that differ from the defaults."""
    if "preset" in spec:
        return spec["preset"]
    return "MemorySpec(" + ", ".join(f"{k}={v!r}" for k, v in spec.items()) + ")"


def _recipe_spec(spec):
    """A MemorySpec from a recipe's spec dict ({"preset": name} or MemorySpec fields)."""
    from .spec import preset

    return preset(spec["preset"]) if "preset" in spec else MemorySpec(**spec)


def _recipe_model(recipe, task_kwargs, args):
    from .models import MirasLM

    torch.manual_seed(args.seed)
    return MirasLM(task_kwargs["vocab_size"], d_model=args.d_model, n_layers=args.layers, num_heads=recipe["num_heads"],
                   spec=_recipe_spec(recipe["spec"]), chunk_size=recipe["chunk_size"], miras_kwargs=recipe["miras_kwargs"])


def _train_one(name, recipe, task_kwargs, warmup_kwargs, args):
    """Train one recipe to the target accuracy (or its time budget); a row of the results table."""
    import polars as pl

    from .tasks.mqar import MQAR
    from .train import TaskStages, advance_when, early_stop, fit

    start = time.perf_counter()
    target = MQAR(**task_kwargs, train_examples=recipe["train_examples"], test_examples=args.eval_examples, seed=args.seed)
    stages = [(recipe["switch"], target)]
    if recipe["switch"]:
        easy = MQAR(**warmup_kwargs, train_examples=recipe["train_examples"], test_examples=1, seed=args.seed + 2)
        stages.insert(0, (0, easy))
    task = TaskStages(stages, eval_early=False)
    task.test_set()
    switch = [advance_when(task, recipe["switch_below"])] if recipe["switch"] and recipe["switch_below"] else []
    data_s = time.perf_counter() - start
    model = _recipe_model(recipe, task_kwargs, args)
    budget = recipe["target_s"] * args.budget_factor
    progress = []
    if args.progress:
        progress.append(lambda row: row.get("eval_accuracy") is not None and print(
            f"# {name} step {row['step']} loss {row['loss']:.3f} held-out acc {row['eval_accuracy']:.4f} "
            f"{row['time_s']:.0f}s", file=sys.stderr, flush=True) and False)
    metrics = fit(model, task, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                  warmup=recipe["warmup"], eval_every=recipe["eval_every"], max_time=budget, seed=args.seed,
                  callbacks=[*switch, early_stop("eval_accuracy", args.target), *progress])
    if "eval_accuracy" not in metrics.columns:  # the budget ran out before the switch: no evaluation yet
        metrics = metrics.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in ("eval_accuracy", "eval_s"))
    evals = metrics.filter(metrics["eval_accuracy"].is_not_null())
    hit = evals.filter(evals["eval_accuracy"] >= args.target)
    first = hit.row(0, named=True) if hit.height else None
    in_target = evals.filter(evals["time_s"] <= recipe["target_s"])
    last = metrics.row(-1, named=True)
    # a second, larger held-out set, never used for stopping
    final = MQAR(**task_kwargs, train_examples=1, test_examples=args.final_examples, seed=args.seed + 1).evaluate(model)
    return {
        "spec": name,
        "target_s": f"{recipe['target_s']:.0f}",
        f"time_to_{args.target}_s": f"{first['time_s']:.1f}" if first else "-",
        "cpu_s": f"{(first or last)['cpu_s']:.0f}",
        "train_s": f"{(first or last)['time_s'] - evals.filter(evals['step'] <= (first or last)['step'])['eval_s'].sum():.1f}",
        "steps": str((first or last)["step"]),
        "examples": str((first or last)["step"] * recipe["batch_size"]),
        "acc_at_stop": "-" if (first or last)["eval_accuracy"] is None else f"{(first or last)['eval_accuracy']:.4f}",
        "acc_in_target": f"{in_target['eval_accuracy'].max():.4f}" if in_target.height else "-",
        "final_acc": f"{final['accuracy']:.4f}",
        "tokens/s": f"{metrics['tokens_per_s'].median() / 1e3:.1f}k",
        "met": "yes" if first and first["time_s"] <= recipe["target_s"] else "no",
        "_data_s": data_s,
    }


def _timed_backward(fn, repeats):
    """Fastest seconds of forward + backward of fn() (a scalar), after one warm-up call."""
    fn().backward()
    return fastest_seconds(lambda: fn().backward(), repeats)


def _profile_step(name, recipe, task_kwargs, args, out=sys.stdout):
    """Where one training step spends its time: each part timed alone, forward + backward, same shapes."""
    from .tasks.mqar import MQAR
    from .train import make_optimizer

    B, V = recipe["batch_size"], task_kwargs["vocab_size"]
    task = MQAR(**task_kwargs, train_examples=B, test_examples=1, seed=args.seed)
    x, y = task.batch(B, 0)
    model = _recipe_model(recipe, task_kwargs, args)
    opt = make_optimizer(model, 1e-4, 0.1)
    block, layer = model.blocks[0], model.blocks[0].mixer
    h = torch.randn(B, x.shape[1], args.d_model, requires_grad=True)
    q, k, v, _ = layer.qkv(h)
    eta, alpha, theta = layer.rates(h)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    rates = [t.detach().requires_grad_() if isinstance(t, torch.Tensor) else t for t in (eta, alpha, theta)]
    mask = y != -100
    hidden = torch.randn(int(mask.sum()), args.d_model, requires_grad=True)

    def step():
        loss = model(x, labels=y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    parts = {
        "whole step (forward + backward + AdamW)": fastest_seconds(step, args.repeats),
        f"  {args.layers} x MirasLayer": args.layers * _timed_backward(lambda: layer(h).square().mean(), args.repeats),
        f"    of which {args.layers} x memory_scan": args.layers * _timed_backward(lambda: memory_scan(
            *leaves, eta=rates[0], alpha=rates[1], theta=rates[2], spec=layer.spec,
            chunk_size=layer.chunk_size)[0].square().mean(), args.repeats),
        f"  {args.layers} x SwiGLU": args.layers * _timed_backward(lambda: block.ffn(h).square().mean(), args.repeats),
        f"  {args.layers * 2 + 1} x RMSNorm": (args.layers * 2 + 1) * _timed_backward(
            lambda: block.norm1(h).square().mean(), args.repeats),
        f"  head + cross-entropy ({int(mask.sum())} labelled positions x V={V})": _timed_backward(
            lambda: torch.nn.functional.cross_entropy(model.head(hidden), y[mask]), args.repeats),
        "  AdamW step": fastest_seconds(opt.step, args.repeats),
    }
    whole = parts["whole step (forward + backward + AdamW)"]
    listed = sum(v for k, v in parts.items() if k.startswith("  ") and not k.startswith("    "))
    parts["  rest (embedding, residuals, autograd overhead)"] = max(whole - listed, 0.0)
    print(f"# where a training step goes: {name}, batch {B} x {x.shape[1]} tokens, each part timed alone "
          f"(fastest of {args.repeats}, forward + backward)", file=out)
    _print_table(("part", "seconds", "share"), [(k, f"{v:.4f}", f"{100 * v / whole:.0f}%") for k, v in parts.items()], out)


# The long-context numbers: ARMT trained on BABILong-style qa1 with contexts of at most 2K tokens,
# streamed accuracy at 64K (target 0.9) and 1M tokens (target 0.8). A curriculum over the context length,
# as ARMT's own training (arXiv 2407.04841) grows the number of segments: no filler first (story and question
# share one segment: attention alone answers, which forms the fact-reading circuit), then 256 ... 2048 tokens,
# where the question has a segment of its own and the answer can only come through the memory. Each stage
# starts once the mean training loss of 20 steps is below `advance_below`; training batches ask every
# answerable question of the story (`BabiLong(questions="all")`), the evaluation one, as the benchmark.
ARMT_RECIPE = dict(model=dict(d_model=64, n_layers=2, num_heads=4, segment_size=128, num_mem_tokens=8, conv_size=6),
                   lengths=(0, 256, 512, 1024, 2048), advance_below=0.4, lr=3e-3, batch_size=32, warmup=30,
                   steps=3000, budget_cpu_s=600.0)
ARMT_EVAL = ((2048, 100), (16_384, 50), (65_536, 20), (1_048_576, 3))  # (context length, samples)
ARMT_TARGETS = {65_536: 0.9, 1_048_576: 0.8}
ARMT_QUICK = dict(model=dict(d_model=16, n_layers=1, num_heads=2, segment_size=16, num_mem_tokens=2, conv_size=3),
                  lengths=(0, 32), advance_below=0.4, lr=3e-3, batch_size=4, warmup=2, steps=6, budget_cpu_s=60.0)
ARMT_QUICK_EVAL = ((64, 2), (256, 1))


def _armt_progress(stages, recipe):
    """A `fit` callback printing the step, the curriculum's context length and the loss every 50 steps."""

    def report(row):
        if row["step"] % 50 == 0:
            print(f"# armt_qa1 step {row['step']} context {recipe['lengths'][stages.current]} loss {row['loss']:.3f} "
                  f"{row['time_s']:.0f}s {row['cpu_s']:.0f} CPU-s", file=sys.stderr, flush=True)
        return False  # never asks fit to stop

    return report


def _train_armt(recipe, args):
    """ARMT trained by ``recipe`` on one thread, saved to ``args.armt_out`` -> (model, metrics, length reached)."""
    from .models import ARMT
    from .tasks.babilong import BabiLong
    from .train import TaskStages, advance_when, fit

    # every stage after the first waits for the loss (its step is never reached)
    stages = TaskStages([(0 if i == 0 else recipe["steps"], BabiLong("qa1", n, seed=args.seed, questions="all"))
                         for i, n in enumerate(recipe["lengths"])],
                        eval_task=BabiLong("qa1", recipe["lengths"][-1], test_examples=64, seed=args.seed))
    torch.manual_seed(args.seed)
    model = ARMT(stages.vocab_size, **recipe["model"])
    # the budget is CPU time of this process, which other processes on the machine inflate less than the wall clock
    callbacks = [advance_when(stages, recipe["advance_below"]), lambda row: row["cpu_s"] >= recipe["budget_cpu_s"]]
    if args.progress:
        callbacks.append(_armt_progress(stages, recipe))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recipe's budget is for one thread (tiny tensors: a second one mostly waits)
    metrics = fit(model, stages, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                  warmup=recipe["warmup"], eval_every=0, seed=args.seed, out_dir=args.armt_out, callbacks=callbacks)
    torch.set_num_threads(threads)
    run = {"task": {"name": "babilong", "task": "qa1", "seed": args.seed, "context_length": recipe["lengths"][-1],
                    "test_examples": stages.eval_task.test_examples},
           "model": "ARMT", "recipe": recipe}
    (Path(args.armt_out) / "run.json").write_text(json.dumps(run, indent=2))
    return model, metrics, recipe["lengths"][stages.current]


def _armt_rows(model, evals, seed):
    """Streamed accuracy per (context length, samples) of `evals`, next to `ARMT_TARGETS`: table rows."""
    from .tasks.babilong import babilong_accuracy

    rows = []
    for length, samples in evals:
        frame = babilong_accuracy(model, "qa1", [length], num_samples=samples, segment_size=model.segment_size, seed=seed)
        accuracy, target = frame["accuracy"][0], ARMT_TARGETS.get(length)
        met = "-" if target is None else ("yes" if accuracy >= target else "no")
        rows.append((length, samples, f"{accuracy:.3f}", "-" if target is None else f"{target:.2f}", met,
                     f"{frame['tokens_per_s'][0]:,.0f}", f"{os.getloadavg()[0]:.1f}"))
    return rows


def _armt_qa1(args, out=sys.stdout):
    """Train ARMT on qa1 by `ARMT_RECIPE`, save it, print its streamed accuracy per context length."""
    recipe, evals = (ARMT_QUICK, ARMT_QUICK_EVAL) if args.quick else (ARMT_RECIPE, ARMT_EVAL)
    print(f"# ARMT qa1: {recipe['model']}; lr={recipe['lr']} batch={recipe['batch_size']} context lengths "
          f"{recipe['lengths']} (next once the loss < {recipe['advance_below']}), at most {recipe['steps']} steps or "
          f"{recipe['budget_cpu_s']:.0f} CPU-s on one thread; streamed evaluation with threads={torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}", file=out, flush=True)
    model, metrics, reached = _train_armt(recipe, args)
    last = metrics.row(-1, named=True)
    print(f"# trained {last['time_s']:.0f}s ({last['cpu_s']:.0f} CPU-s), {last['step']} steps, up to context length "
          f"{reached}; final training loss {metrics['loss'][-20:].mean():.3f}; saved {args.armt_out}", file=out, flush=True)
    _print_table(("context", "samples", "accuracy", "target", "met", "stream tok/s", "load"),
                 _armt_rows(model, evals, args.seed), out)


def run_train(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if "armt_qa1" in args.specs:
        _armt_qa1(args)
        args.specs = [s for s in args.specs if s != "armt_qa1"]
        if not args.specs:
            return
    task_kwargs, warmup_kwargs = (QUICK_TASK, QUICK_WARMUP_TASK) if args.quick else (TRAIN_TASK, WARMUP_TASK)
    recipes = {n: dict(r) for n, r in TRAIN_RECIPES.items() if n in args.specs}
    for r in recipes.values():
        r.update({k: getattr(args, k) for k in ("lr", "batch_size", "steps", "switch") if getattr(args, k) is not None})
    if args.quick:
        args.d_model = 16
        for r in recipes.values():
            r.update(steps=20, switch=10, train_examples=256, eval_every=5, batch_size=8, warmup=2)
    print(f"# MQAR V={task_kwargs['vocab_size']} L={task_kwargs['seq_len']} pairs={task_kwargs['num_kv_pairs']}; "
          f"MirasLM {args.layers} layers, d_model={args.d_model}; float32 CPU, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    for name, r in recipes.items():
        until = f"loss < {r['switch_below']} (mean of 20 steps) or step {r['switch']}" if r["switch_below"] else f"step {r['switch']}"
        easy = (f"MQAR L={warmup_kwargs['seq_len']} pairs={warmup_kwargs['num_kv_pairs']} until {until}, then the target task"
                if r["switch"] else "the target task only")
        print(f"# {name}: spec={_spec_name(r['spec'])} heads={r['num_heads']} chunk_size={r['chunk_size']} "
              f"{r['miras_kwargs'] or ''} lr={r['lr']} batch={r['batch_size']} warmup={r['warmup']} cosine over "
              f"{r['steps']} steps; {easy}; {r['train_examples']} training examples per task; held-out evaluation every "
              f"{r['eval_every']} steps after the switch on {args.eval_examples} examples; budget "
              f"{r['target_s'] * args.budget_factor:.0f}s", flush=True)
    if args.profile:
        for name, r in recipes.items():
            _profile_step(name, r, task_kwargs, args)
    rows = [_train_one(name, r, task_kwargs, warmup_kwargs, args) for name, r in recipes.items()]
    columns = [c for c in rows[0] if not c.startswith("_")]
    _print_table(columns, [[row[c] for c in columns] for row in rows])
    print(f"# time_to_{args.target}_s: wall clock from the first step to the first periodic held-out evaluation "
          f"reading >= {args.target} (evaluations included; '-' = not reached within the budget); train_s: the same "
          f"without the evaluations; acc_at_stop: that evaluation (or the last one); cpu_s: CPU seconds of the "
          f"process (all threads) at that point, which other processes inflate less than the wall clock; "
          f"acc_in_target: the best periodic held-out accuracy within target_s; final_acc: {args.final_examples} "
          f"other held-out examples; tokens/s: median training throughput. Building the data took "
          f"{sum(r['_data_s'] for r in rows):.1f}s (not counted). Load average at the end "
          f"{os.getloadavg()[0]:.1f} (other processes on the machine slow the runs).", flush=True)


def _add_train(subparsers):
    p = subparsers.add_parser(
        "train",
        help="MQAR time-to-accuracy of MirasLM with gated_deltanet and an lp + lq (Moneta-style linear) memory",
        description="Train MirasLM (2 layers, d_model=64) on MQAR (V=8192, L=256, 16 pairs) with each recipe of "
        "TRAIN_RECIPES and print the time to reach the target held-out accuracy next to the issue's targets "
        "(180 s / 300 s on 2 CPU cores), or the accuracy reached within the budget.",
    )
    p.add_argument("--specs", nargs="+", default=[*TRAIN_RECIPES, "armt_qa1"], choices=[*TRAIN_RECIPES, "armt_qa1"],
                   help="recipes to run (armt_qa1: ARMT on BABILong-style qa1, streamed to 1M tokens)")
    p.add_argument("--armt-out", default="runs/armt-qa1", help="where armt_qa1 saves its run (default runs/armt-qa1)")
    _add_options(p, float, [("--target", 0.99, "held-out accuracy to reach"),
                            ("--budget-factor", 1.0, "stop at factor x target_s")])
    _add_options(p, int, [("--eval-examples", 256, "held-out examples of the periodic evaluation"),
                          ("--final-examples", 2000, "other held-out examples scored at the end"),
                          ("--threads", 2, "torch threads (2: the issue's 2 cores)"),
                          ("--layers", 2, "MirasLM layers"), ("--d-model", 64, "MirasLM width"), ("--seed", 0, "")])
    p.add_argument("--lr", type=float, default=None, help="override the recipes' peak learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipes' batch size")
    p.add_argument("--steps", type=int, default=None, help="override the recipes' schedule length")
    p.add_argument("--switch", type=int, default=None, help="override the (latest) step of the switch to the target "
                   "task (0: train on the target task only)")
    p.add_argument("--profile", action="store_true", help="first print where one training step spends its time")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each --profile timing (fastest counts)")
    p.add_argument("--progress", action="store_true", help="print every evaluation to stderr")
    p.add_argument("--quick", action="store_true", help="a tiny MQAR (V=64, L=32, 4 pairs, 20 steps): a smoke test")
    p.set_defaults(run=run_train)


# ----------------------------------------------------------------------------------------- CLI

COMMANDS = [_add_scan, _add_train]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m miras_lite.bench", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", metavar="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("repeats", "exact_repeats", "chunk", "batch", "heads", "dim"):
        if getattr(args, name, 1) < 1:
            build_parser().error(f"--{name.replace('_', '-')} must be >= 1")
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
