"""Command line: ``python -m miras_lite train|eval|sweep|report ...``.

    python -m miras_lite train --task mqar --preset gated_deltanet --steps 2000 --out runs/gdn
    python -m miras_lite train --task mqar --spec bias=lp,retention=lq --chunk-size 8 --out runs/lplq
    python -m miras_lite eval runs/gdn --task mqar            # accuracy per number of key-value pairs
    python -m miras_lite train --task babilong --model armt --context-length 256 \
        --curriculum 0:128,300:256 --steps 600 --out runs/armt
    python -m miras_lite eval runs/armt --lengths 1024 4096   # streamed accuracy vs context length

`train` builds the task and the model (`MirasLM`, or `ARMT` with ``--model armt``), runs
`miras_lite.train.fit` with a progress bar on stderr and prints a summary; RUN_DIR receives
checkpoint.pt, metrics.parquet and run.json (the command's task / model / training arguments, which
`eval` reads back). ``sweep SWEEP.toml`` runs an Optuna sweep (`miras_lite.sweeps`) and
``report notebooks/NAME.py -o report.html`` writes an offline HTML report (`miras_lite.reports`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from . import checkpoint
from .reports.command import add_report_parser
from .presets import PRESETS
from .spec import MemorySpec
from .sweeps.cli import add_parser as add_sweep_parser
from .train import ProgressBar, TrainingDiverged, early_stop, evaluate, fit, summarize

TASKS = ("mqar", "lm", "babilong")
MODELS = ("miras_lm", "armt")
MQAR_EVAL_PAIRS = (4, 8, 16, 32, 64)


# ------------------------------------------------------------------------------------ parsing helpers


def parse_spec(text):
    """``"bias=lp,retention=lq,p=3"`` -> MemorySpec (numbers are converted to the field's type)."""
    types = {f.name: type(f.default) for f in fields(MemorySpec)}
    changes = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--spec: {item!r} must be field=value; fields: {', '.join(types)}")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in types:
            raise ValueError(f"--spec: unknown field {key!r}; allowed: {', '.join(types)}")
        changes[key] = types[key](value) if types[key] in (int, float) else value
    return MemorySpec(**changes)


def _chunk_size(text):
    if text.lower() in ("none", "exact"):
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be an integer >= 1 or 'none'")
    return value


# ------------------------------------------------------------------------------------ tasks


def task_config(args):
    """The task's constructor arguments as plain data (stored in run.json)."""
    if args.task == "mqar":
        return {"name": "mqar", "vocab_size": args.vocab_size, "seq_len": args.seq_len,
                "num_kv_pairs": args.num_pairs if len(args.num_pairs) > 1 else args.num_pairs[0],
                "train_examples": args.train_examples, "test_examples": args.test_examples or 1000, "seed": args.seed}
    if args.task == "babilong":
        return {"name": "babilong", "task": args.babi_task, "context_length": args.context_length,
                "filler": args.text, "test_examples": args.test_examples or 200, "seed": args.seed,
                "questions": args.questions}
    return {"name": "lm", "path": args.text, "level": args.level, "seq_len": args.seq_len, "seed": args.seed}


def build_task(config):
    """A task object (``.batch``, ``.vocab_size``, ``.test_set`` / ``.evaluate``) from `task_config`."""
    config = dict(config)
    name = config.pop("name")
    if name == "mqar":
        from .tasks.mqar import MQAR

        return MQAR(**config)
    if name == "babilong":
        from .tasks.babilong import BabiLong

        return BabiLong(**config)
    if name == "lm":
        from .tasks.lm import LanguageModeling

        return LanguageModeling(**config)
    raise ValueError(f"--task={name!r} is not supported; allowed values: {', '.join(TASKS)}")


def parse_curriculum(text):
    """``"0:128,300:256"`` -> [(0, {"context_length": 128}), (300, {"context_length": 256})]."""
    stages = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            start, length = (int(x) for x in item.split(":"))
        except ValueError:
            raise ValueError(f"--curriculum: {item!r} must be STEP:CONTEXT_LENGTH (integers), e.g. 0:128,300:256") from None
        stages.append((start, {"context_length": length}))
    return stages


def build_model(args, vocab_size, spec):
    """`MirasLM` (``--model miras_lm``) or `ARMT` (``--model armt``; its memory: ``--memory``)."""
    from .models import ARMT, MirasLM

    if args.model == "armt":
        memory = spec if args.memory == "spec" else args.memory
        return ARMT(vocab_size, d_model=args.d_model, n_layers=args.layers, num_heads=args.heads,
                    segment_size=args.segment_size, num_mem_tokens=args.mem_tokens, memory=memory,
                    conv_size=args.conv_size)
    miras_kwargs = {"eta_max": args.eta_max} if args.eta_max is not None else None
    return MirasLM(vocab_size, d_model=args.d_model, n_layers=args.layers, num_heads=args.heads,
                   mixer=args.mixer, spec=spec, chunk_size=args.chunk_size, miras_kwargs=miras_kwargs)


# ------------------------------------------------------------------------------------ train


def _staged(task, config, curriculum, below, callbacks):
    """``--advance-below``: the curriculum's lengths as `TaskStages` (one task per context length, evaluated
    on ``task``) that move on at their step or once the mean training loss of 20 steps is below ``below``.
    Returns (the staged task, None: no step-based curriculum left)."""
    from .train import TaskStages, advance_when

    if not curriculum or config["name"] != "babilong":
        raise ValueError("--advance-below needs --task babilong and a --curriculum")
    stages = TaskStages([(start, build_task({**config, **lengths})) for start, lengths in curriculum], eval_task=task)
    callbacks.append(advance_when(stages, below))
    return stages, None


def run_train(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = parse_spec(args.spec) if args.spec else args.preset
    out = Path(args.out or f"runs/{args.task}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    config = task_config(args)
    task = build_task(config)
    torch.manual_seed(args.seed)
    model = build_model(args, task.vocab_size, spec)
    curriculum = parse_curriculum(args.curriculum) if args.curriculum else None
    callbacks = [] if args.quiet else [ProgressBar(args.steps)]
    if args.advance_below is not None:
        task, curriculum = _staged(task, config, curriculum, args.advance_below, callbacks)
    fit_kwargs = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      warmup=args.warmup, clip=args.clip, eval_every=args.eval_every, seed=args.seed,
                      max_time=args.max_time)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"task": config, "model": type(model).__name__, "fit": fit_kwargs,
                                              "curriculum": args.curriculum}, indent=2))
    n_params = sum(p.numel() for p in model.parameters())
    what = (f"ARMT memory={args.memory if args.memory != 'spec' else spec} segment_size={args.segment_size} "
            f"mem_tokens={args.mem_tokens}" if args.model == "armt" else
            f"MirasLM mixer={args.mixer} spec={args.spec or args.preset} chunk_size={args.chunk_size}")
    print(f"# {out}: {what} d_model={args.d_model} layers={args.layers} heads={args.heads} "
          f"({n_params / 1e6:.2f}M parameters), task {config}", flush=True)
    if args.target is not None:
        callbacks.append(early_stop("eval_accuracy", args.target))
    try:
        metrics = fit(model, task, callbacks=callbacks, out_dir=out, curriculum=curriculum, **fit_kwargs)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for cb in callbacks:
            if isinstance(cb, ProgressBar):
                cb.close()
    stopped = None
    if metrics.height < args.steps:
        stopped = "target reached" if args.target is not None else "max_time reached"
    print(summarize(metrics, stopped))
    print(f"saved {out / 'checkpoint.pt'} and {out / 'metrics.parquet'}")
    return 0


# ------------------------------------------------------------------------------------ eval


def print_frame(frame, out=None):
    """A polars frame as a plain whitespace-aligned table (floats with 4 decimals)."""
    cells = [list(frame.columns)] + [[f"{x:.4f}" if isinstance(x, float) else str(x) for x in row]
                                     for row in frame.iter_rows()]
    widths = [max(len(r[i]) for r in cells) for i in range(len(frame.columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    print("\n".join(lines), file=out or sys.stdout, flush=True)


def _mqar_eval(model, config, pairs, examples, by_distance):
    from .tasks.mqar import MQAR, accuracy_by_distance, accuracy_by_pairs, predictions_at_labels

    seq_len = config["seq_len"]
    trained = config["num_kv_pairs"] if isinstance(config["num_kv_pairs"], (list, tuple)) else [config["num_kv_pairs"]]
    pairs = sorted(set(pairs or [d for d in MQAR_EVAL_PAIRS if 4 * d <= seq_len] + list(trained)))
    task = MQAR(config["vocab_size"], seq_len, pairs, train_examples=len(pairs),
                test_examples=examples or config.get("test_examples", 1000), seed=config.get("seed", 0))
    inputs, labels = task.test_set()
    preds = []
    with torch.no_grad():
        for s in range(0, len(inputs), 128):
            x, y = inputs[s:s + 128], labels[s:s + 128]
            preds.append(predictions_at_labels(model(x, labels=y)["logits"], y))
    preds = torch.cat(preds)
    frames = {"accuracy per number of key-value pairs (trained on " + ", ".join(map(str, trained)) + ")":
              accuracy_by_pairs(preds, inputs, labels)}
    if by_distance:
        frames["accuracy per query distance (all pair counts)"] = accuracy_by_distance(preds, inputs, labels)
    return frames


def run_eval(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    path = run / "checkpoint.pt" if run.is_dir() else run
    run_json = (path.parent / "run.json")
    config = json.loads(run_json.read_text())["task"] if run_json.exists() else None
    if config is None or (args.task and args.task != config["name"]):
        if args.task is None:
            raise SystemExit(f"{run_json} not found: give --task and the task options")
        config = {"name": args.task}
    model, extra = checkpoint.load(path, return_extra=True)
    step = (extra or {}).get("step")
    print(f"# {path}: {type(model).__name__}, step {step}")
    if config["name"] == "mqar":
        for key in ("vocab_size", "seq_len"):
            if getattr(args, key) is not None:
                config[key] = getattr(args, key)
        config.setdefault("vocab_size", model.vocab_size)
        config.setdefault("seq_len", 256)
        config.setdefault("num_kv_pairs", 16)
        for title, frame in _mqar_eval(model, config, args.pairs, args.test_examples, args.by_distance).items():
            print(f"# {title}")
            print_frame(frame)
    elif config["name"] == "babilong":
        from .tasks.babilong import babilong_accuracy

        task = build_task(config)
        print(f"accuracy {task.evaluate(model)['accuracy']:.4f} ({config['task']}, context length "
              f"{task.context_length}, {task.test_examples} held-out samples)")
        if args.lengths:
            if not hasattr(model, "stream"):
                raise ValueError("--lengths needs a model with .stream (ARMT)")
            frame = babilong_accuracy(model, config["task"], args.lengths, num_samples=args.samples,
                                      segment_size=model.segment_size, seed=config.get("seed", 0),
                                      filler=config.get("filler"))
            print("# streamed accuracy vs context length")
            print_frame(frame)
    else:
        task = build_task(config)
        result = {**evaluate(model, *task.test_set()), **task.evaluate(model)}
        print("  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0


# ------------------------------------------------------------------------------------ parser


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m miras_lite", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    p = sub.add_parser("train", help="train a MirasLM on a task", description="Train a MirasLM on a task "
                       "(fit: AdamW, warmup + cosine, clipping) and save checkpoint.pt, metrics.parquet, run.json.")
    p.add_argument("--task", choices=TASKS, default="mqar")
    p.add_argument("--model", choices=MODELS, default="miras_lm")
    p.add_argument("--out", help="run directory (default runs/<task>-<model>-<time>)")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="gated_deltanet", choices=sorted(PRESETS), help="memory preset (default gated_deltanet)")
    g.add_argument("--spec", help="a MemorySpec as field=value pairs, e.g. bias=lp,retention=lq (overrides --preset)")
    g.add_argument("--mixer", default="miras", choices=("miras", "attention", "sliding", "hybrid"))
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--heads", type=int, default=2)
    g.add_argument("--chunk-size", type=_chunk_size, default=None, help="MirasLayer chunk size, or 'none' for the exact recurrence (default)")
    g.add_argument("--eta-max", type=float, default=None, help="MirasLayer upper bound of the inner learning rate")
    g.add_argument("--memory", default="dpfp", help="ARMT memory: 'dpfp' (the paper's), a preset name, or 'spec' "
                   "(the --spec / --preset memory)")
    g.add_argument("--segment-size", type=int, default=64, help="ARMT segment size (default 64)")
    g.add_argument("--mem-tokens", type=int, default=8, help="ARMT memory tokens per segment (default 8)")
    g.add_argument("--conv-size", type=int, default=0, help="ARMT: causal conv over K tokens before each attention "
                   "(default 0: none, the paper's blocks)")
    g = p.add_argument_group("task")
    g.add_argument("--vocab-size", type=int, default=8192, help="MQAR vocabulary V (default 8192)")
    g.add_argument("--seq-len", type=int, default=256, help="sequence length L (default 256)")
    g.add_argument("--num-pairs", type=int, nargs="+", default=[16], help="MQAR key-value pairs (several: a mixture)")
    g.add_argument("--train-examples", type=int, default=20_000, help="MQAR training set size (cycled)")
    g.add_argument("--test-examples", type=int, default=None, help="held-out examples (MQAR: per pair count, default "
                   "1000; babilong: default 200)")
    g.add_argument("--text", help="LM task: a text file (default: the shipped corpus); babilong: a filler text file")
    g.add_argument("--babi-task", default="qa1", choices=("qa1", "qa2", "qa3"), help="babilong task (default qa1)")
    g.add_argument("--context-length", type=int, default=256, help="babilong training context length (default 256)")
    g.add_argument("--questions", default="one", choices=("one", "all"), help="babilong training batches: one "
                   "question (default) or every answerable question of the story (more labels per sample)")
    g.add_argument("--level", default="char", choices=("char", "word"), help="LM task tokenisation")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup", type=int, default=None, help="warmup steps (default min(100, steps/10))")
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: none)")
    g.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default steps/10)")
    g.add_argument("--curriculum", default=None, help="babilong context length by step, e.g. 0:128,300:256")
    g.add_argument("--advance-below", type=float, default=None, help="babilong: start each --curriculum stage "
                   "earlier, once the mean training loss of 20 steps is below this")
    g.add_argument("--target", type=float, default=None, help="stop once the held-out accuracy reaches this")
    g.add_argument("--max-time", type=float, default=None, help="stop after this many seconds")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)

    p = sub.add_parser("eval", help="evaluate a trained run", description="Load RUN/checkpoint.pt and print "
                       "its held-out accuracy (MQAR: per number of key-value pairs).")
    p.add_argument("run", help="a run directory (from train --out) or a checkpoint file")
    p.add_argument("--task", choices=TASKS, default=None, help="default: the task the run was trained on")
    p.add_argument("--pairs", type=int, nargs="+", default=None, help=f"MQAR pair counts (default {MQAR_EVAL_PAIRS} that fit, + the trained ones)")
    p.add_argument("--test-examples", type=int, default=None, help="examples per pair count (default: the run's)")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--by-distance", action="store_true", help="MQAR: also accuracy per query distance")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="babilong + ARMT: streamed accuracy at these context lengths")
    p.add_argument("--samples", type=int, default=50, help="babilong --lengths: samples per length (default 50)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(handler=run_eval)

    add_sweep_parser(sub)
    add_report_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
