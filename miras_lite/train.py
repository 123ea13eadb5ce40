"""Training loop: `fit(model, task, ...)` -> a polars frame of per-step metrics.

The loop, one optimiser step s = 1, 2, ..., steps:

    inputs, labels = task.batch(batch_size, s - 1)
    loss = model(inputs, labels=labels)["loss"]             # guard: the loss is finite
    loss.backward();  g = ‖∇θ‖₂ (clipped to `clip`)          # guard: the gradients are finite
    AdamW step at lr(s)                                      # guard: the weights are still finite
        lr(s) = lr · s / warmup                                          for s ≤ warmup
        lr(s) = min_lr + ½ (lr − min_lr) (1 + cos(π (s − warmup) / (steps − warmup)))   after
    every `eval_every` steps (and at the end): task.evaluate(model) -> {name: float}, stored as eval_<name>

Weight decay applies to matrices (≥ 2-D parameters: projections, embeddings) only, not to biases,
norm gains or per-head gate parameters (nanoGPT's rule).

The task protocol: ``task.batch(batch_size, step) -> (inputs, labels)`` (deterministic in step) and, optionally, ``task.evaluate(model) -> dict of floats``; a task without ``evaluate`` but
with ``test_set() -> (inputs, labels)`` is scored by `evaluate` here (loss and accuracy at the
labelled positions). The model protocol: ``model(inputs, labels=labels)`` returns a dict with
"loss" (and "logits", for `evaluate`).

Control: ``callbacks`` are called after every step with the step's metrics (a dict); one returning
True stops the run (see `early_stop`, `ProgressBar`). ``cancel`` (a ``threading.Event`` or a
callable returning bool) is checked before every step, so a notebook can stop a run from another
thread. ``max_time`` stops after that many seconds of wall-clock time. A curriculum is a task too:
`TaskStages` serves easier tasks first and switches at given steps or, with `advance_when`, once the
loss says the current stage is learnt.

Outputs in ``out_dir`` (when given): ``checkpoint.pt`` (`miras_lite.checkpoint.save`, the extra
holds the step, the fit arguments, why the run stopped, e.g. "interrupted by SIGINT", and "complete":
whether it ran all its steps) and ``metrics.parquet``, both rewritten at every checkpoint and at the end,
each written then renamed (`files.atomic_write`: a SIGKILL at any moment leaves the previous file whole),
while the run holds the directory's lock (`files.RunLock`: a second run into the directory is refused).
If the loss, a gradient or a weight stops being finite, `fit` raises `TrainingDiverged` (step, quantity,
a suggestion) after writing the metrics so far; the checkpoint on disk is then the last one this run
wrote with finite weights, and the message says which step it holds, or that this run wrote none (and,
when the directory held an earlier run's checkpoint.pt, that the file there is that one). A write that
fails (disk full or read-only) raises `files.FileWriteError` naming the file, the step and what the
directory keeps. `fit` replaces the metrics.parquet it finds and keeps an earlier checkpoint.pt until it
writes its own (continuing a model into its own directory keeps its last good state); the CLI refuses a
directory holding another run unless --overwrite.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from pathlib import Path

import polars as pl
import torch

from . import checkpoint
from .checks import check_int
from .config import FitConfig
from .files import FileWriteError, RunLock, atomic_write
from .labels import IGNORE_INDEX



class TrainingDiverged(RuntimeError):
    """The loss, a gradient or a weight was not finite at ``step``; ``quantity`` says which (e.g. "loss",
    "gradient of blocks.0.mixer.qkv_proj.weight"). ``out_dir`` (when fit was given one) holds the metrics
    up to the failing step and, when ``kept_step`` is not None, the checkpoint of that step."""

    def __init__(self, step, quantity, suggestion, out_dir=None, kept_step=None, earlier=None):
        self.step, self.quantity, self.suggestion, self.out_dir = step, quantity, suggestion, out_dir
        self.kept_step, self.earlier = kept_step, earlier
        kept = ""
        if out_dir is not None and kept_step is not None:
            kept = (f"; {out_dir} holds metrics.parquet and the checkpoint of step {kept_step}, the last with finite "
                    "weights")
        elif out_dir is not None:
            kept = f"; {out_dir} holds this run's metrics.parquet, and this run wrote no checkpoint with finite weights"
            if earlier:
                kept += f" (its checkpoint.pt is {earlier}, written before this run started)"
        super().__init__(f"training diverged at step {step}: the {quantity} is not finite (NaN or inf). "
                         f"{suggestion}{kept}")


# ----------------------------------------------------------------------------------- schedule


def lr_at(step, steps, lr, warmup, min_lr):
    """Learning rate of optimiser step ``step`` (1-based): linear warmup, then cosine to min_lr."""
    if step <= warmup:
        return lr * step / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(steps - warmup, 1))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model, lr, weight_decay, betas=(0.9, 0.95)):
    """AdamW; weight decay only on parameters with ≥ 2 dimensions."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


# ----------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, inputs, labels, batch_size=256):
    """Mean cross-entropy and next-token accuracy at the labelled positions (labels != -100).

    Works with models that return logits only at the labelled positions (``[N_labelled, V]``, in
    row-major order of ``labels != -100``) or at every position (``[B, T, V]``).
    Returns ``{"loss": float, "accuracy": float}``.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for start in range(0, inputs.shape[0], batch_size):
            x, y = inputs[start:start + batch_size], labels[start:start + batch_size]
            out = model(x, labels=y)
            mask = y != IGNORE_INDEX
            n = int(mask.sum())
            if n == 0:
                continue
            logits = out["logits"]
            if logits.dim() == 3:
                logits = logits[mask]
            if logits.shape[0] != n:
                raise ValueError(f"model returned logits of shape {tuple(out['logits'].shape)}; expected "
                                 f"[{n}, V] (labelled positions only) or [B, T, V]")
            target = y[mask]
            total_loss += float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            count += n
    finally:
        model.train(was_training)
    return {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}


def _evaluator(task, eval_batch_size):
    """A function model -> dict of floats, or None when the task cannot be evaluated."""
    if hasattr(task, "evaluate"):
        return task.evaluate
    if hasattr(task, "test_set"):
        cache = {}

        def run(model):
            if "data" not in cache:
                cache["data"] = task.test_set()
            return evaluate(model, *cache["data"], batch_size=eval_batch_size)

        return run
    return None


# ----------------------------------------------------------------------------------- callbacks


def early_stop(metric="eval_accuracy", threshold=0.99, mode="max"):
    """A callback stopping the run once ``metric`` reaches ``threshold`` (``mode="max"``: ≥;
    ``"min"``: ≤). Rows without the metric (steps without an evaluation) are ignored."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode={mode!r} is not supported; allowed values: 'max', 'min'")

    def callback(row):
        value = row.get(metric)
        if value is None:
            return False
        return value >= threshold if mode == "max" else value <= threshold

    return callback


def _format_duration(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressBar:
    """A text progress bar callback: ``step 120/1000 [===>      ] loss 2.31 acc 0.532 ... ETA 1m02s``.

    On a terminal it redraws one line (carriage return); otherwise (a pipe, a log file) it prints
    a line roughly every 10% of the run and at every evaluation.
    """

    def __init__(self, total, stream=None, width=24):
        self.total, self.stream, self.width = total, stream or sys.stderr, width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_acc, self.next_line = None, 0.0

    def line(self, row):
        step, frac = row["step"], row["step"] / max(self.total, 1)
        filled = int(frac * self.width)
        bar = "=" * filled + (">" if filled < self.width else "") + " " * (self.width - filled - 1)
        for key, label in (("eval_accuracy", "acc"), ("eval_loss", "eval loss")):
            if row.get(key) is not None:
                self.last_acc = (label, row[key])
                break
        acc = f" {self.last_acc[0]} {self.last_acc[1]:.3f}" if self.last_acc is not None else ""
        rate = step / max(row["time_s"], 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        return (f"step {step}/{self.total} [{bar}] loss {row['loss']:.4f}{acc} lr {row['lr']:.2e} "
                f"{rate:.1f} it/s {row['tokens_per_s'] / 1e3:.1f}k tok/s {_format_duration(row['time_s'])} "
                f"ETA {_format_duration(eta)}")

    def __call__(self, row):
        if self.tty:
            self.stream.write("\r" + self.line(row) + "\x1b[K")
            if row["step"] >= self.total:
                self.stream.write("\n")
        elif row["step"] / max(self.total, 1) >= self.next_line or row.get("eval_s") is not None:
            self.stream.write(self.line(row) + "\n")
            self.next_line = row["step"] / max(self.total, 1) + 0.1
        self.stream.flush()
        return False

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def summarize(metrics, stopped=None):
    """A few human-readable lines about a finished run (the CLI prints them)."""
    if metrics.height == 0:
        return "no steps were run"
    last = metrics.row(-1, named=True)
    lines = [f"steps {last['step']}  wall {last['time_s']:.1f}s  final loss {last['loss']:.4f}  "
             f"mean {metrics['tokens_per_s'].mean() / 1e3:.1f}k tokens/s"]
    evals = metrics.filter(pl.col("eval_s").is_not_null()) if "eval_s" in metrics.columns else None
    if evals is not None and evals.height:
        final = evals.row(-1, named=True)
        names = [c for c in evals.columns if c.startswith("eval_") and c != "eval_s" and final[c] is not None]
        lines.append(f"held-out at step {final['step']}: " + ", ".join(f"{c[5:]} {final[c]:.4f}" for c in names))
        if "eval_accuracy" in names:
            best = evals.sort("eval_accuracy", descending=True, nulls_last=True).row(0, named=True)
            lines.append(f"eval accuracy: final {final['eval_accuracy']:.4f}, best {best['eval_accuracy']:.4f} "
                         f"at step {best['step']} ({best['time_s']:.1f}s)")
    if stopped:
        lines.append(f"stopped: {stopped}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- stages


class TaskStages:
    """A task that switches tasks at given steps: a curriculum over whole tasks.

    ``TaskStages([(0, easy), (800, target)])`` serves ``easy.batch(B, s)`` for steps 0..799 and then
    ``target.batch(B, s - 800)``; a stage ``(start, task, batch_size)`` serves batches of its own size
    instead of fit's B (longer contexts, smaller batches). `evaluate` / `test_set` / `vocab_size` are the last
    stage's (or ``eval_task``'s), so held-out numbers always refer to the target task. A stage can also start
    earlier, when the previous one is learnt: `advance` (see `advance_when`).

    ``eval_early=False``: `evaluate` returns ``{}`` (fit records no metric) until a batch of the last
    stage has been served, so no time goes into scoring the target task while training is on an
    easier one.
    """

    def __init__(self, stages, eval_task=None, eval_early=True):
        stages = sorted(stages, key=lambda st: st[0])
        if not stages or stages[0][0] != 0 or any(len(st) not in (2, 3) for st in stages):
            raise ValueError(f"stages={stages!r} must be a non-empty list of (start_step, task) or (start_step, task, "
                             "batch_size) starting at step 0")
        for start, task, *batch_size in stages:
            if not hasattr(task, "batch"):
                raise ValueError(f"stages: {type(task).__name__} (from step {start}) has no batch(batch_size, step)")
            if batch_size and batch_size[0] is not None:
                check_int("stages: batch_size", batch_size[0])
        self.stages = [[start, task] for start, task, *_ in stages]
        self.batch_sizes = [(batch_size or [None])[0] for _, _, *batch_size in stages]
        self.eval_task = eval_task if eval_task is not None else stages[-1][1]
        self.eval_early, self.current = eval_early, 0
        if hasattr(self.eval_task, "test_set"):
            self.test_set = self.eval_task.test_set

    @property
    def vocab_size(self):
        return self.eval_task.vocab_size

    def stage_index(self, step):
        """Index of the stage that serves 0-based ``step``."""
        return max(i for i, (start, _) in enumerate(self.stages) if start <= step)

    def batch(self, batch_size, step):
        self.current = self.stage_index(step)
        start, task = self.stages[self.current]
        return task.batch(self.batch_sizes[self.current] or batch_size, step - start)

    def advance(self, step):
        """Start the stage after the current one at 0-based ``step`` (if it was due later)."""
        nxt = self.current + 1
        if nxt < len(self.stages) and self.stages[nxt][0] > step:
            self.stages[nxt][0] = max(step, self.stages[self.current][0] + 1)

    def evaluate(self, model):
        if not self.eval_early and self.current < len(self.stages) - 1:
            return {}
        if hasattr(self.eval_task, "evaluate"):
            return self.eval_task.evaluate(model)
        return evaluate(model, *self.eval_task.test_set())


def advance_when(stages, below, metric="loss", window=20):
    """A fit callback: once the mean of ``metric`` over the last ``window`` steps of the current stage of
    ``stages`` (a `TaskStages`) is below ``below``, the next stage starts with the next step."""
    history = {"stage": None, "values": []}

    def callback(row):
        if history["stage"] != stages.current:
            history["stage"], history["values"] = stages.current, []
        if row.get(metric) is not None:
            history["values"].append(row[metric])
        recent = history["values"][-window:]
        if len(recent) == window and sum(recent) / window < below:
            stages.advance(row["step"])  # row "step" s used batch s - 1; the next batch is s
        return False

    return callback


# ----------------------------------------------------------------------------------- fit


def _is_cancelled(cancel):
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return cancel.is_set()
    return bool(cancel())


_NONFINITE_RATE = re.compile(r"\b(eta|alpha|theta|delta): contains NaN or inf|\beta: the memory overflowed")


def _nonfinite_forward(model, error):
    """What was not finite when the forward pass raised ``error``, or None if it was something else.

    NaN/inf weights or activations make `memory_scan` refuse the rates the layers compute from them (a
    ValueError "eta: contains NaN or inf ...").
    """
    if name := _first_nonfinite(model.named_parameters(), lambda p: p):
        return f"parameter {name}"
    if isinstance(error, ValueError) and _NONFINITE_RATE.search(str(error)):
        return f"activations of the forward pass (memory_scan refused them: {error})"
    return None


def _first_nonfinite(named, tensor_of):
    """The name of the first (name, p) whose tensor_of(p) holds a NaN or inf, else None."""
    for name, p in named:
        t = tensor_of(p)
        if t is not None and not torch.isfinite(t).all():
            return name
    return None


def _suggestion(lr, clip):
    clip_hint = "set clip (e.g. 1.0)" if not clip else f"keep clip={clip}"
    return (f"Try a lower lr (now {lr:g}; e.g. {lr / 3:.1g}), {clip_hint}, a longer warmup, or a more stable memory: "
            "a smaller inner learning rate (MirasLayer eta_max), a smaller chunk_size, retention α closer to 1 "
            "for MLP memories.")


class _Diverged(Exception):
    """Raised inside a step: ``quantity`` was not finite."""

    def __init__(self, quantity):
        super().__init__(quantity)
        self.quantity = quantity


def _train_step(model, optimizer, params, inputs, labels, lr, clip, row):
    """One optimiser step at learning rate ``lr``; fills row["loss"], row["grad_norm"]. Raises `_Diverged`
    (the weights then are still those before the step) when the loss or a gradient is not finite, and after
    the step when a weight is not."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    try:
        loss = model(inputs, labels=labels)["loss"]
    except (ValueError, RuntimeError) as error:
        if (quantity := _nonfinite_forward(model, error)) is None:
            raise
        row["loss"] = float("nan")
        raise _Diverged(quantity) from None
    row["loss"] = float(loss.detach())
    if not math.isfinite(row["loss"]):  # a weight that is not finite is the cause to name, if there is one
        name = _first_nonfinite(model.named_parameters(), lambda p: p)
        raise _Diverged(f"parameter {name}" if name else "loss")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf")))
    if not math.isfinite(row["grad_norm"]):
        name = _first_nonfinite(model.named_parameters(), lambda p: p.grad)
        optimizer.zero_grad(set_to_none=True)
        raise _Diverged(f"gradient of {name or '?'}")
    optimizer.step()
    if name := _first_nonfinite(model.named_parameters(), lambda p: p):
        raise _Diverged(f"parameter {name} after the optimiser step")


def _evaluate_into(row, evaluator, model, start, cpu_start):
    t0 = time.perf_counter()
    result = evaluator(model)
    row.update({k if k.startswith("eval_") else f"eval_{k}": float(v) for k, v in result.items()})
    row["eval_s"] = time.perf_counter() - t0
    row["time_s"] = time.perf_counter() - start
    row["cpu_s"] = time.process_time() - cpu_start


class _Outputs:
    """What a run writes to ``out_dir``: metrics.parquet and checkpoint.pt, each atomically; remembers the
    step of the last checkpoint it wrote. A write that fails (disk full, read-only, ...) raises
    `files.FileWriteError` naming the file, the step the run stopped at and what the directory still holds."""

    def __init__(self, out_dir, model, task, fit_args):
        self.out_dir, self.model, self.task, self.fit_args = out_dir, model, task, fit_args
        self.kept_step = None
        self.had_checkpoint = out_dir is not None and (out_dir / "checkpoint.pt").exists()

    def earlier(self):
        """What the checkpoint.pt found at the start is (when this run has not replaced it), or None."""
        if not self.had_checkpoint or self.kept_step is not None:
            return None
        try:
            step = (checkpoint.load_checkpoint(self.out_dir / "checkpoint.pt")["extra"] or {}).get("step")
        except ValueError as error:
            return f"unreadable ({error})"
        return f"the checkpoint of step {step} of an earlier run"

    def write(self, rows, step, reason=None):
        if self.out_dir is None:
            return
        try:
            atomic_write(self.out_dir / "metrics.parquet", _frame(rows).write_parquet)
            if checkpoint.all_finite(self.model):  # else keep the previous (last good) checkpoint
                checkpoint.save(self.out_dir / "checkpoint.pt", self.model,
                                extra={"step": step, "fit": self.fit_args, "stopped": reason, "task": _plain(self.task),
                                       "complete": reason is None and step == self.fit_args["steps"]})
                self.kept_step = step
        except FileWriteError as error:
            kept = (f"the checkpoint of step {self.kept_step}" if self.kept_step is not None
                    else "no checkpoint of this run")
            raise FileWriteError(f"{error}; the run stopped at step {step} and {self.out_dir} keeps {kept}",
                                 error.errno) from None


def _remove_leftovers(out_dir):
    """Temporary files of writes a killed run never finished (only a dead run leaves them: we hold the lock)."""
    for name in ("metrics.parquet", "checkpoint.pt"):
        for leftover in out_dir.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


# AdamW's first step moves a weight by up to lr / (1 − β1) and decays it by lr · weight_decay, in float32
_FLOAT32_STEP = 1e37


def check_optimizer_range(lr, weight_decay, betas=(0.9, 0.95), name="lr"):
    """ValueError naming ``name`` when AdamW's float32 step overflows: lr / (1 − β1) (the first step's size) or
    lr · weight_decay (its decay) beyond 1e37 (lr = 1e300 is a finite Python float but not a float32 step)."""
    if lr / (1 - betas[0]) > _FLOAT32_STEP or lr * weight_decay > _FLOAT32_STEP:
        raise ValueError(f"{name}={lr!r} (with weight_decay={weight_decay!r}, betas={tuple(betas)!r}) overflows float32 "
                         f"in AdamW's step: lr / (1 - β1) and lr · weight_decay must stay below {_FLOAT32_STEP:g}")


def _check_fit_extras(model, seed, betas, eval_batch_size, callbacks, out_dir, lr, weight_decay):
    """The arguments of `fit` that `FitConfig` does not hold, and the float32 range of the optimiser's step."""
    if not (callable(model) and all(hasattr(model, name) for name in ("parameters", "named_parameters", "train"))):
        raise ValueError(f"model: {type(model).__name__} is not a torch.nn.Module (model(inputs, labels=labels) -> "
                         "{'loss': ...}, with parameters)")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed!r} must be an integer >= 0")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"betas={betas!r} must be a pair of numbers in [0, 1) (AdamW's β1, β2)")
    check_optimizer_range(lr, weight_decay, betas)
    if not isinstance(eval_batch_size, int) or isinstance(eval_batch_size, bool) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size={eval_batch_size!r} must be an integer >= 1")
    try:
        items = None if isinstance(callbacks, (str, bytes)) else list(callbacks)
    except TypeError:
        items = None
    if items is None or not all(callable(cb) for cb in items):
        raise ValueError(f"callbacks={callbacks!r} must be a list of callables f(row) -> bool")
    if out_dir is not None and not isinstance(out_dir, (str, Path)):
        raise ValueError(f"out_dir={out_dir!r} must be None or a directory path")


def fit(model, task, steps=1000, batch_size=32, lr=3e-3, weight_decay=0.1, warmup=None, min_lr=None, clip=1.0,
        eval_every=None, callbacks=(), cancel=None, out_dir=None, checkpoint_every=None, seed=0, max_time=None,
        betas=(0.9, 0.95), eval_batch_size=256, verbose=False):
    """Train ``model`` on ``task`` with AdamW, warmup + cosine and gradient clipping (module docstring).

    Args:
        steps, batch_size: optimiser steps and examples per step.
        lr, weight_decay, betas: AdamW; ``min_lr`` is the end of the cosine (default lr / 10).
        warmup: linear warmup steps (default min(100, steps // 10)).
        clip: max global gradient norm (None or 0: no clipping; the norm is still logged).
        eval_every: evaluate every that many steps (default steps // 10; 0: only at the end).
        callbacks: callables ``f(row: dict)``; returning True stops the run.
        cancel: ``threading.Event`` or callable returning bool, checked before every step (an Event with a
            ``reason`` attribute: that reason is recorded as why the run stopped).
        out_dir: where checkpoint.pt and metrics.parquet go (None: nothing is written).
        checkpoint_every: steps between checkpoints (default: at every evaluation; always at the end).
        seed: ``torch.manual_seed`` at the start (dropout, sampling in the model).
        max_time: stop after this many seconds (wall clock, evaluations included).
        verbose: print a progress bar to stderr.

    Every setting is checked first (`config.FitConfig`): a ValueError names a bad one.

    Returns a polars DataFrame, one row per step: step, loss, lr, grad_norm, tokens_per_s, time_s
    (wall clock since the start), cpu_s (CPU time of this process since the start, all threads: less
    sensitive than time_s to other processes on the machine), eval_<name> / eval_s (seconds the evaluation
    took) on evaluation steps (null elsewhere). The model is left in eval mode.

    Raises `TrainingDiverged` when the loss, a gradient or a weight is not finite.
    """
    settings = FitConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                         min_lr=min_lr, clip=clip, eval_every=eval_every, checkpoint_every=checkpoint_every,
                         max_time=max_time)
    if not hasattr(task, "batch"):
        raise ValueError(f"task: {type(task).__name__} has no batch(batch_size, step) method")
    _check_fit_extras(model, seed, betas, eval_batch_size, callbacks, out_dir, lr, weight_decay)
    warmup = min(100, steps // 10) if warmup is None else warmup
    min_lr = lr / 10 if min_lr is None else min_lr
    evaluator = _evaluator(task, eval_batch_size)
    eval_every = 0 if evaluator is None else max(1, steps // 10) if eval_every is None else eval_every
    checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
    callbacks = list(callbacks)
    bar = ProgressBar(steps) if verbose else None
    if bar is not None:
        callbacks.append(bar)
    out_dir = None if out_dir is None else Path(out_dir)
    fit_args = dict(settings.fit_kwargs(), warmup=warmup, min_lr=min_lr, eval_every=eval_every, seed=seed)
    try:
        with RunLock(out_dir) if out_dir is not None else contextlib.nullcontext():
            if out_dir is not None:
                _remove_leftovers(out_dir)
            torch.manual_seed(seed)
            model.train()
            rows, stopped = _loop(model, task, settings, warmup, min_lr, eval_every, checkpoint_every, evaluator,
                                  callbacks, cancel, betas, _Outputs(out_dir, model, task, fit_args), lr, clip)
    finally:
        if bar is not None:
            bar.close()
    if verbose:
        print(summarize(_frame(rows), stopped), file=sys.stderr, flush=True)
    model.eval()
    return _frame(rows)


def _loop(model, task, settings, warmup, min_lr, eval_every, checkpoint_every, evaluator, callbacks, cancel, betas,
          outputs, lr, clip):
    """The steps of `fit` -> (rows, why it stopped early or None)."""
    steps = settings.steps
    optimizer = make_optimizer(model, lr, settings.weight_decay, betas)
    params = [p for p in model.parameters() if p.requires_grad]
    rows, start, cpu_start, step, stopped = [], time.perf_counter(), time.process_time(), 0, None
    for step in range(1, steps + 1):
        if _is_cancelled(cancel):
            stopped, step = getattr(cancel, "reason", None) or "cancelled", step - 1
            break
        t0 = time.perf_counter()
        inputs, labels = task.batch(settings.batch_size, step - 1)
        row = {"step": step, "lr": lr_at(step, steps, lr, warmup, min_lr)}
        try:
            _train_step(model, optimizer, params, inputs, labels, row["lr"], clip, row)
        except _Diverged as diverged:
            row.update(tokens_per_s=float("nan"), time_s=time.perf_counter() - start)
            rows.append(row)
            outputs.write(rows, step - 1, reason=f"diverged at step {step}")
            raise TrainingDiverged(step, diverged.quantity, _suggestion(lr, clip), outputs.out_dir,
                                   outputs.kept_step, outputs.earlier()) from None
        row["tokens_per_s"] = inputs.numel() / max(time.perf_counter() - t0, 1e-9)
        row["time_s"] = time.perf_counter() - start
        row["cpu_s"] = time.process_time() - cpu_start
        if eval_every and (step % eval_every == 0 or step == steps):
            _evaluate_into(row, evaluator, model, start, cpu_start)
        rows.append(row)
        if any([cb(row) is True for cb in callbacks]):  # a list: every callback sees every row
            stopped = f"a callback stopped the run at step {step}"
        elif settings.max_time is not None and row["time_s"] >= settings.max_time:
            stopped = f"max_time={settings.max_time}s reached at step {step}"
        if stopped:
            break
        if checkpoint_every and step % checkpoint_every == 0 and step != steps:
            outputs.write(rows, step)
    if rows and evaluator is not None and stopped and "eval_s" not in rows[-1] and not _is_cancelled(cancel):
        _evaluate_into(rows[-1], evaluator, model, start, cpu_start)
    outputs.write(rows, step, reason=stopped)
    return rows, stopped


def _plain(task):
    """``task.config`` when the task has a plain-data config dict, else None (stored in checkpoints)."""
    config = getattr(task, "config", None)
    if not isinstance(config, dict):
        return None
    try:
        checkpoint._encode(config, "task.config")
    except ValueError:
        return None
    return config


def _frame(rows):
    """The metrics rows as a polars DataFrame (missing values are null)."""
    if not rows:
        return pl.DataFrame(schema={"step": pl.Int64, "loss": pl.Float64, "lr": pl.Float64,
                                    "grad_norm": pl.Float64, "tokens_per_s": pl.Float64, "time_s": pl.Float64})
    return pl.from_dicts(rows, infer_schema_length=None)


__all__ = ["ProgressBar", "TaskStages", "advance_when", "TrainingDiverged", "early_stop", "evaluate", "fit", "lr_at",
           "make_optimizer", "summarize"]
