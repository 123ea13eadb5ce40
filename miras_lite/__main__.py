"""Command line: ``python -m miras_lite train|eval|sweep|report ...``.

    python -m miras_lite train --task mqar --preset gated_deltanet --steps 2000 --out runs/gdn
    python -m miras_lite train --task mqar --spec bias=lp,retention=lq --chunk-size 8 --out runs/lplq
    python -m miras_lite eval runs/gdn --task mqar            # accuracy per number of key-value pairs
    python -m miras_lite train --task babilong --model armt --context-length 256 \
        --curriculum 0:128,300:256 --steps 600 --out runs/armt
    python -m miras_lite eval runs/armt --lengths 1024 4096   # streamed accuracy vs context length
    python -m miras_lite train --task niah --haystack passkey --context-length 1024 --out runs/niah
    python -m miras_lite eval runs/niah --lengths 1024 2048   # accuracy by context length and needle depth

`train` turns its options into a `config.RunConfig` (options not given keep the config's defaults),
trains it with a progress bar on stderr and prints a summary; RUN_DIR receives checkpoint.pt,
metrics.parquet and run.json (the RunConfig, which `eval` reads back). RUN_DIR is locked while the run
lasts (a second run into it is refused at once), and one that already holds a run is refused unless
--overwrite. Ctrl-C or SIGTERM stops after the running step and saves (the checkpoint records "stopped":
"interrupted by SIGINT"); a second one stops at once, keeping the last checkpoint written; either way the
exit status is 130 and the message one line, no traceback. A failed write (disk full, read-only) is one
"error:" line naming the file, exit status 1. ``sweep SWEEP.toml`` runs an Optuna sweep (`miras_lite.sweeps`)
and ``report notebooks/NAME.py -o report.html`` writes an offline HTML report (`miras_lite.reports`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import polars as pl
import torch

from . import checkpoint
from .config import (MODEL_CONFIGS, TASK_CONFIGS, ARMTConfig, BabiLongConfig, FitConfig, LMConfig, MirasLMConfig,
                     MQARConfig, NIAHConfig, RunConfig)
from .presets import PRESETS, named_preset
from .reports.command import add_report_parser
from .spec import MemorySpec
from .sweeps.cli import add_parser as add_sweep_parser
from .tasks.niah import HAYSTACKS
from .files import RunDirectoryError, RunLock
from .train import ProgressBar, TrainingDiverged, evaluate, summarize

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
        try:
            changes[key] = types[key](value) if types[key] in (int, float) else value
        except ValueError:
            raise ValueError(f"--spec: {key}={value!r} must be {'an integer' if types[key] is int else 'a number'}") from None
    return MemorySpec().replace(**changes)


def _chunk_size(text):
    if text.lower() in ("none", "exact"):
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("must be an integer >= 1, 'auto' or 'none'")
    return value


def parse_curriculum(text):
    """``"0:128,300:256,900:4096:16"`` -> ((0, {"context_length": 128}), (300, {"context_length": 256}),
    (900, {"context_length": 4096, "batch_size": 16})): STEP:CONTEXT_LENGTH, or STEP:CONTEXT_LENGTH:BATCH_SIZE."""
    stages = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            start, length, *batch_size = (int(x) for x in item.split(":"))
            if len(batch_size) > 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"--curriculum: {item!r} must be STEP:CONTEXT_LENGTH or STEP:CONTEXT_LENGTH:BATCH_SIZE "
                             "(integers), e.g. 0:128,300:256,900:4096:16") from None
        stages.append((start, {"context_length": length, **({"batch_size": batch_size[0]} if batch_size else {})}))
    return tuple(stages)


# Command-line options -> fields of the run configuration's sections; None (not given) keeps the config's default.
TASK_OPTIONS = {
    "mqar": {"vocab_size": "vocab_size", "seq_len": "seq_len", "num_pairs": "num_kv_pairs",
             "train_examples": "train_examples", "test_examples": "test_examples"},
    "babilong": {"babi_task": "task", "context_length": "context_length", "text": "filler",
                 "test_examples": "test_examples", "questions": "questions"},
    "niah": {"haystack": "haystack", "context_length": "context_length", "digits": "digits", "text": "filler",
             "test_examples": "test_examples"},
    "lm": {"text": "path", "level": "level", "seq_len": "seq_len"},
}
MODEL_OPTIONS = {
    "miras_lm": {"d_model": "d_model", "layers": "n_layers", "heads": "num_heads", "mixer": "mixer",
                 "chunk_size": "chunk_size", "eta_max": "eta_max", "conv_size": "conv_size"},
    "armt": {"d_model": "d_model", "layers": "n_layers", "heads": "num_heads", "segment_size": "segment_size",
             "mem_tokens": "num_mem_tokens", "memory": "memory", "conv_size": "conv_size",
             "bptt_segments": "bptt_segments", "write_l1": "write_l1"},
}
FIT_OPTIONS = ("steps", "batch_size", "lr", "weight_decay", "warmup", "clip", "eval_every", "max_time", "target")


def _given(args, options):
    """The options given on the command line (the train parser leaves the others out of args)."""
    return {field: getattr(args, option) for option, field in options.items() if option in vars(args)}


def _recommended(args):
    """The preset's recommended settings (`Preset.recommended`) as defaults of the model and fit options: a MirasLM
    with a preset (not --spec)."""
    if args.spec or args.model != "miras_lm":
        return {}, {}
    recommended = named_preset(args.preset).recommended
    return ({"chunk_size": recommended.chunk_size, "eta_max": recommended.eta_max},
            {"lr": recommended.lr, "steps": recommended.steps})


def run_config(args):
    """The `RunConfig` the ``train`` options describe (a preset's recommended settings where none are given)."""
    task = _given(args, TASK_OPTIONS[args.task])
    if isinstance(task.get("num_kv_pairs"), list):
        task["num_kv_pairs"] = tuple(task["num_kv_pairs"])
    model, fit = _recommended(args)
    return RunConfig(
        task={"name": args.task, **task},
        model={"name": args.model, **model, **_given(args, MODEL_OPTIONS[args.model])},
        spec=dataclasses.asdict(parse_spec(args.spec)) if args.spec else args.preset,
        fit={**fit, **_given(args, {name: name for name in FIT_OPTIONS})},
        seed=args.seed, curriculum=parse_curriculum(args.curriculum) if args.curriculum else (),
        advance_below=args.advance_below, threads=args.threads)


# ------------------------------------------------------------------------------------ train


class _Interrupt(threading.Event):
    """Set by SIGINT / SIGTERM: fit stops after the running step and saves; a second signal stops at once. Once
    training has returned (``armed`` False), further signals are ignored: the run is saved and about to exit."""

    reason = None
    armed = True

    def handle(self, signum, frame):
        if not self.armed:
            return
        if self.is_set():
            raise KeyboardInterrupt
        self.reason = f"interrupted by {signal.Signals(signum).name}"
        print(f"\n{self.reason}: saving after this step (send it again to stop at once)", file=sys.stderr, flush=True)
        self.set()


RUN_FILES = ("checkpoint.pt", "metrics.parquet", "run.json")


def _claim(out, overwrite):
    """Refuse a run directory that holds another run's files, unless ``overwrite`` (then they are removed, so the
    new run's files never sit next to the old run's). Called while holding the directory's lock."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not overwrite:
        raise RunDirectoryError(f"out_dir={str(out)!r} already holds a run ({', '.join(found)}); choose another --out, "
                                "or pass --overwrite to replace it")
    for name in found:
        (out / name).unlink(missing_ok=True)


def _kept(out):
    """What the run directory holds after a stop: 'the checkpoint of step N' or 'no checkpoint'."""
    try:
        step = (checkpoint.load_checkpoint(out / "checkpoint.pt")["extra"] or {}).get("step")
    except ValueError:
        return "no readable checkpoint"
    return f"the checkpoint of step {step}"


def run_train(args):
    run = run_config(args)
    out = Path(args.out or f"runs/{args.task}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    interrupt = _Interrupt()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt.handle)
    callbacks = [] if args.quiet else [ProgressBar(run.fit.steps)]
    try:
        # the lock first: a second run into this directory is refused before it writes anything (run.json too)
        with RunLock(out):
            _claim(out, args.overwrite)
            print(f"# {out}: {json.dumps(run.to_dict())}", flush=True)
            _, metrics = run.train(out_dir=out, callbacks=callbacks, cancel=interrupt)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # RunDirectoryError, FileWriteError (disk full, read-only, ...), a missing file
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM: stopped at once, inside a step
        print(f"\nerror: {interrupt.reason or 'interrupted'}, then stopped at once by a second signal; {out} keeps "
              f"{_kept(out)} (the last one written)", file=sys.stderr)
        return 130
    finally:
        interrupt.armed = False
        for cb in callbacks:
            cb.close()
    stopped = interrupt.reason
    if stopped is None and metrics.height < run.fit.steps:
        stopped = "target reached" if run.fit.target is not None else "max_time reached"
    print(summarize(metrics, stopped))
    print(f"saved {out / 'checkpoint.pt'} and {out / 'metrics.parquet'}")
    return 130 if interrupt.reason else 0


# ------------------------------------------------------------------------------------ eval


def print_frame(frame, out=None):
    """A polars frame as a plain whitespace-aligned table (floats with 4 decimals)."""
    cells = [list(frame.columns)] + [[f"{x:.4f}" if isinstance(x, float) else str(x) for x in row]
                                     for row in frame.iter_rows()]
    widths = [max(len(r[i]) for r in cells) for i in range(len(frame.columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    print("\n".join(lines), file=out or sys.stdout, flush=True)


def _mqar_eval(model, task, pairs, examples, by_distance):
    from .tasks.mqar import MQAR, accuracy_by_distance, accuracy_by_pairs, predictions_at_labels

    trained = task.num_kv_pairs if isinstance(task.num_kv_pairs, tuple) else (task.num_kv_pairs,)
    pairs = sorted(set(pairs or [d for d in MQAR_EVAL_PAIRS if 4 * d <= task.seq_len] + list(trained)))
    probe = MQAR(task.vocab_size, task.seq_len, pairs, train_examples=len(pairs),
                 test_examples=examples or task.test_examples)
    inputs, labels = probe.test_set()
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


def _run_task(path, task_name):
    """The task section of the run.json next to a checkpoint (`RunConfig.to_dict`), or a default task of
    ``task_name`` when there is none (or the run trained another task)."""
    run_json = path.parent / "run.json"
    if run_json.exists():
        try:
            task = RunConfig.from_dict(json.loads(run_json.read_text(encoding="utf-8"))).task
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
            raise ValueError(f"run: {run_json} cannot be read ({type(error).__name__}: {error})") from None
        if task_name is None or task_name == task.name:
            return task
    if task_name is None:
        raise ValueError(f"run: {run_json} not found; give --task")
    return TASK_CONFIGS[task_name]


def run_eval(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    path = run / "checkpoint.pt" if run.is_dir() else run
    try:
        model, extra = checkpoint.load(path, return_extra=True)
    except checkpoint.CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    task = _run_task(path, args.task)
    print(f"# {path}: {type(model).__name__}, step {(extra or {}).get('step')}")
    tables = {}
    if task.name == "mqar":
        task = task.replace(**{k: getattr(args, k) for k in ("vocab_size", "seq_len") if getattr(args, k) is not None})
        tables = _mqar_eval(model, task, args.pairs, args.test_examples, args.by_distance)
    elif task.name == "babilong":
        from .tasks.babilong import babilong_accuracy

        built = task.build(0)
        tables["held-out accuracy"] = pl.DataFrame({
            "task": [task.task], "context_length": [task.context_length], "samples": [task.test_examples],
            "accuracy": [built.evaluate(model)["accuracy"]]})
        if args.lengths:
            if not hasattr(model, "stream"):
                raise ValueError("--lengths needs a model with .stream (ARMT)")
            tables["streamed accuracy vs context length"] = babilong_accuracy(
                model, task.task, args.lengths, num_samples=args.samples, segment_size=model.segment_size,
                filler=task.filler)
    elif task.name == "niah":
        from .tasks.niah import niah_accuracy

        tables["accuracy by context length and needle depth"] = niah_accuracy(
            model, task.build(0), args.lengths or [task.context_length], samples=args.samples)
    else:
        built = task.build(0)
        tables["held-out scores"] = pl.DataFrame([{**evaluate(model, *built.test_set()), **built.evaluate(model)}])
    for title, frame in tables.items():
        print(f"# {title}")
        print_frame(frame)
    if args.out:
        pl.concat([frame.with_columns(pl.lit(title).alias("table")) for title, frame in tables.items()],
                  how="diagonal_relaxed").write_parquet(args.out)
        print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------------ parser


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m miras_lite", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    p = sub.add_parser("train", help="train a MirasLM on a task", description="Train a MirasLM on a task "
                       "(fit: AdamW, warmup + cosine, clipping) and save checkpoint.pt, metrics.parquet, run.json.",
                       argument_default=argparse.SUPPRESS)  # options not given keep the run configuration's defaults
    p.add_argument("--task", choices=tuple(TASK_CONFIGS), default="mqar")
    p.add_argument("--model", choices=tuple(MODEL_CONFIGS), default="miras_lm")
    p.add_argument("--out", default=None, help="run directory (default runs/<task>-<model>-<time>); one that already "
                   "holds a run is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", default=False, help="replace the run already in --out (its "
                   "checkpoint.pt, metrics.parquet and run.json are removed before training starts)")
    miras, armt, mqar, babi, niah, lm, fit = (MirasLMConfig(), ARMTConfig(), MQARConfig(), BabiLongConfig(),
                                              NIAHConfig(), LMConfig(), FitConfig())
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="gated_deltanet", choices=sorted(PRESETS), help="memory preset (default "
                   "gated_deltanet); its recommended chunk size, eta_max, lr and steps are the defaults of those options")
    g.add_argument("--spec", default=None, help="a MemorySpec as field=value pairs, e.g. bias=lp,retention=lq "
                   "(overrides --preset)")
    g.add_argument("--mixer", choices=("miras", "attention", "sliding", "hybrid"), help=f"default {miras.mixer}")
    g.add_argument("--d-model", type=int, help=f"default {miras.d_model}")
    g.add_argument("--layers", type=int, help=f"default {miras.n_layers}")
    g.add_argument("--heads", type=int, help=f"default {miras.num_heads}")
    g.add_argument("--chunk-size", type=_chunk_size, help="MirasLayer chunk size, 'none' for the exact recurrence or "
                   "'auto' (default: exact where it is chunk-parallel, else 64)")
    g.add_argument("--eta-max", type=float, help="MirasLayer upper bound of the inner learning rate")
    g.add_argument("--memory", help=f"ARMT memory: 'dpfp' (the paper's, default), a preset name, or 'spec' (the "
                   "--spec / --preset memory)")
    g.add_argument("--segment-size", type=int, help=f"ARMT segment size (default {armt.segment_size})")
    g.add_argument("--mem-tokens", type=int, help=f"ARMT memory tokens per segment (default {armt.num_mem_tokens})")
    g.add_argument("--bptt-segments", type=int, help="ARMT: backpropagate through the last K segments of a training "
                   "input only; the earlier ones carry their memory forward without gradients (default: all)")
    g.add_argument("--write-l1", type=float, help="ARMT with --bptt-segments: on inputs longer than that, add this "
                   "times the mean write gate β of the DPFP memory to the training loss, so writes stay sparse "
                   "(default 0: none)")
    g.add_argument("--conv-size", type=int, help=f"short causal conv over K tokens: MirasLM, on q, k, v of every "
                   f"mixer, attention too (default {miras.conv_size}; 0: none); ARMT, before each attention (default "
                   f"{armt.conv_size}: none, the paper's blocks)")
    g = p.add_argument_group("task")
    g.add_argument("--vocab-size", type=int, help=f"MQAR vocabulary V (default {mqar.vocab_size})")
    g.add_argument("--seq-len", type=int, help=f"sequence length L (default MQAR {mqar.seq_len}, LM {lm.seq_len})")
    g.add_argument("--num-pairs", type=int, nargs="+", help=f"MQAR key-value pairs (several: a mixture; default "
                   f"{mqar.num_kv_pairs})")
    g.add_argument("--train-examples", type=int, help=f"MQAR training set size, cycled (default {mqar.train_examples})")
    g.add_argument("--test-examples", type=int, help=f"held-out examples (MQAR: per pair count, default "
                   f"{mqar.test_examples}; babilong: default {babi.test_examples}; niah: per depth, default "
                   f"{niah.test_examples})")
    g.add_argument("--text", help="LM task: a text file (default: the shipped corpus); babilong, niah: a filler "
                   "text file")
    g.add_argument("--babi-task", choices=("qa1", "qa2", "qa3"), help=f"babilong task (default {babi.task})")
    g.add_argument("--context-length", type=int, help=f"babilong / niah training context length (default "
                   f"{babi.context_length} / {niah.context_length})")
    g.add_argument("--questions", choices=("one", "all"), help="babilong training batches: one question (default) "
                   "or every answerable question of the story (more labels per sample)")
    g.add_argument("--haystack", choices=HAYSTACKS, help=f"niah: a number in repeated noise, a "
                   f"number or a word in essay filler (default {niah.haystack})")
    g.add_argument("--digits", type=int, help=f"niah: digits of the number (default {niah.digits})")
    g.add_argument("--level", choices=("char", "word"), help=f"LM task tokenisation (default {lm.level})")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, help=f"default {fit.steps}")
    g.add_argument("--batch-size", type=int, help=f"default {fit.batch_size}")
    g.add_argument("--lr", type=float, help=f"default {fit.lr}")
    g.add_argument("--weight-decay", type=float, help=f"default {fit.weight_decay}")
    g.add_argument("--warmup", type=int, help="warmup steps (default min(100, steps/10))")
    g.add_argument("--clip", type=float, help=f"gradient norm clip (0: none; default {fit.clip})")
    g.add_argument("--eval-every", type=int, help="steps between evaluations (default steps/10)")
    g.add_argument("--curriculum", default=None, help="babilong / niah context length by step, e.g. 0:128,300:256; "
                   "STEP:LENGTH:BATCH also sets that stage's batch size, e.g. 900:4096:16")
    g.add_argument("--advance-below", type=float, default=None, help="start each --curriculum stage earlier, once "
                   "the mean training loss of 20 steps is below this")
    g.add_argument("--target", type=float, help="stop once the held-out accuracy reaches this")
    g.add_argument("--max-time", type=float, help="stop after this many seconds")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    g.add_argument("--quiet", action="store_true", default=False, help="no progress bar")
    p.set_defaults(handler=run_train)

    p = sub.add_parser("eval", help="evaluate a trained run", description="Load RUN/checkpoint.pt and print "
                       "its held-out accuracy (MQAR: per number of key-value pairs).")
    p.add_argument("run", help="a run directory (from train --out) or a checkpoint file")
    p.add_argument("--task", choices=tuple(TASK_CONFIGS), default=None, help="default: the task the run was trained on")
    p.add_argument("--pairs", type=int, nargs="+", default=None, help=f"MQAR pair counts (default {MQAR_EVAL_PAIRS} that fit, + the trained ones)")
    p.add_argument("--test-examples", type=int, default=None, help="examples per pair count (default: the run's)")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--by-distance", action="store_true", help="MQAR: also accuracy per query distance")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="babilong + ARMT: streamed accuracy at these "
                   "context lengths; niah: accuracy by needle depth at these lengths (default: the run's)")
    p.add_argument("--samples", type=int, default=50, help="babilong --lengths: samples per length; niah: per length "
                   "and depth (default 50)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the tables to this parquet file (a column 'table' "
                   "says which)")
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
