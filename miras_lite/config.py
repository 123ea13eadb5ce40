"""One run configuration for the CLI, the sweeps, the benchmarks and the notebooks (Zoology style).

    run = RunConfig(task=MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4),
                    model=MirasLMConfig(d_model=64, n_layers=2, num_heads=1),
                    spec="gated_deltanet", fit=FitConfig(steps=400, lr=1e-2))
    model, metrics = run.train(out_dir="runs/gdn")
    runs = [run.replace(spec=name) for name in ("deltanet", "titans")]      # a sweep is a list of configs

Every dataclass validates itself when it is built, raising a ValueError that names the field
(``task.seq_len=...``) and the allowed values, so a bad setting is refused before anything trains.
`RunConfig.to_dict` / `RunConfig.from_dict` give the plain-data form a run directory keeps in run.json.

A curriculum is a tuple of stages ``(start_step, {task field: value})`` over the run's task: each stage is
the task with those fields replaced, served from its start step (`train.TaskStages`), in batches of the
fit's size or of the stage's own ``"batch_size"`` entry; with
``advance_below`` a stage also starts as soon as the mean training loss of 20 steps is below that value.
Held-out scores always refer to the run's own task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from .checks import check_int
from .files import RunLock, atomic_write_text
from .presets import resolve


def _fail(section, name, value, allowed):
    raise ValueError(f"{section}.{name}={value!r} {allowed}")


def _number(section, name, value, low=None, high=None, low_open=False, allow_none=False, integer=False):
    """Check one numeric field; `integer` asks for an int (not a bool)."""
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool) or not math.isfinite(value):
        _fail(section, name, value, f"must be {'an integer' if integer else 'a finite number'}"
              + (" or None" if allow_none else ""))
    if low is not None and (value <= low if low_open else value < low):
        _fail(section, name, value, f"must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        _fail(section, name, value, f"must be <= {high}")


def _choice(section, name, value, allowed):
    if value not in allowed:
        _fail(section, name, value, f"is not supported; allowed values: {', '.join(map(repr, allowed))}")


class _Config:
    """replace / to_dict shared by the config dataclasses."""

    def replace(self, **changes):
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)} of {type(self).__name__}; allowed: "
                             f"{', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, _Config):
        return value.to_dict()
    return value


# ----------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class MQARConfig(_Config):
    """Multi-query associative recall (`tasks.MQAR`); ``eval_pairs``: pair counts of the recall curve; ``writes``,
    ``write_mode``: every key written that many times, with new values ("update") or one outlier ("outlier")."""

    vocab_size: int = 8192
    seq_len: int = 256
    num_kv_pairs: int | tuple = 16
    train_examples: int = 20_000
    test_examples: int = 1000
    power_a: float = 0.01
    eval_pairs: tuple | None = None
    writes: int = 1
    write_mode: str = "update"
    name: str = "mqar"

    def __post_init__(self):
        from .tasks.mqar import check_shape

        pairs = self.num_kv_pairs if isinstance(self.num_kv_pairs, (tuple, list)) else (self.num_kv_pairs,)
        object.__setattr__(self, "num_kv_pairs", tuple(pairs) if len(pairs) > 1 else pairs[0] if pairs else ())
        if self.eval_pairs is not None:
            if not isinstance(self.eval_pairs, (tuple, list)) or not self.eval_pairs:
                _fail("task", "eval_pairs", self.eval_pairs, "must be None or a non-empty list of pair counts")
            object.__setattr__(self, "eval_pairs", tuple(self.eval_pairs))
        for d in (*pairs, *(self.eval_pairs or ())):
            _task_error(check_shape, self.vocab_size, self.seq_len, d, self.writes, self.write_mode)
        if not pairs:
            _fail("task", "num_kv_pairs", self.num_kv_pairs, "must be an integer >= 1 or a non-empty list of them")
        _number("task", "train_examples", self.train_examples, len(pairs), integer=True)
        _number("task", "test_examples", self.test_examples, 1, integer=True)
        _number("task", "power_a", self.power_a, 0, low_open=True)

    def build(self, seed):
        from .tasks.mqar import MQAR

        return MQAR(self.vocab_size, self.seq_len, self.num_kv_pairs, power_a=self.power_a,
                    train_examples=self.train_examples, test_examples=self.test_examples, seed=seed,
                    writes=self.writes, write_mode=self.write_mode)


@dataclass(frozen=True)
class BabiLongConfig(_Config):
    """BABILong-style QA (`tasks.BabiLong`): a bAbI task hidden in `context_length` tokens of filler."""

    task: str = "qa1"
    context_length: int = 256
    filler: str | None = None
    test_examples: int = 200
    questions: str = "one"
    name: str = "babilong"

    def __post_init__(self):
        from .tasks.babilong import TASKS, check_task

        _choice("task", "task", self.task, tuple(TASKS))
        _task_error(check_task, self.task, self.context_length)
        _choice("task", "questions", self.questions, ("one", "all"))
        _number("task", "test_examples", self.test_examples, 1, integer=True)
        if self.filler is not None and not Path(self.filler).is_file():
            _fail("task", "filler", self.filler, "must be None (the shipped generator) or a readable text file")

    def build(self, seed):
        from .tasks.babilong import BabiLong

        return BabiLong(self.task, self.context_length, self.filler, test_examples=self.test_examples, seed=seed,
                        questions=self.questions)


@dataclass(frozen=True)
class NIAHConfig(_Config):
    """RULER-style needle in a haystack (`tasks.NeedleInHaystack`): a number ("passkey" in repeated noise,
    "number" in essay filler) or a "word" hidden at a random depth of `context_length` tokens."""

    haystack: str = "number"
    context_length: int = 1024
    digits: int = 4
    filler: str | None = None
    test_examples: int = 20
    name: str = "niah"

    def __post_init__(self):
        _task_error(self.build, 0)  # the task checks every field (a few ms: no sample is drawn)

    def build(self, seed):
        from .tasks.niah import NeedleInHaystack

        return NeedleInHaystack(self.haystack, self.context_length, self.digits, test_examples=self.test_examples,
                                filler=self.filler, seed=seed)


@dataclass(frozen=True)
class LMConfig(_Config):
    """Next-token prediction on a text (`tasks.LanguageModeling`; path None: the shipped corpus)."""

    path: str | None = None
    level: str = "char"
    seq_len: int = 128
    name: str = "lm"

    def __post_init__(self):
        from .tasks.lm import LEVELS

        _choice("task", "level", self.level, LEVELS)
        _number("task", "seq_len", self.seq_len, 1, integer=True)
        if self.path is not None and not Path(self.path).is_file():
            _fail("task", "path", self.path, "must be None (the shipped corpus) or a readable text file")

    def build(self, seed):
        from .tasks.lm import LanguageModeling

        return LanguageModeling(self.path, self.level, self.seq_len, seed=seed)


def _task_error(check, *args):
    """Run a task's own argument check, naming the section in its ValueError."""
    try:
        check(*args)
    except ValueError as error:
        raise ValueError(f"task.{error}") from None


TASK_CONFIGS = {c.name: c for c in (MQARConfig(), BabiLongConfig(), NIAHConfig(), LMConfig())}


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class MirasLMConfig(_Config):
    """`MirasLM` without its vocabulary (the task's) and spec (the run's); ``chunk_rule`` and ``eta_max`` go to
    every `MirasLayer` (None for eta_max: the layer's default), ``conv_size`` (the short causal convolution on
    q, k, v) to every mixer, `MirasLayer` and `AttentionLayer` alike, so that attention and the memories are
    compared in the same block (0: none, e.g. Zoology's plain attention)."""

    d_model: int = 64
    n_layers: int = 2
    num_heads: int = 2
    mixer: str = "miras"
    chunk_size: int | str | None = "auto"
    chunk_rule: str = "boundary"
    window: int = 64
    eta_max: float | None = None
    conv_size: int = 4
    name: str = "miras_lm"

    def build(self, vocab_size, spec):
        from .models import MirasLM

        layer = {"conv_size": self.conv_size, "chunk_rule": self.chunk_rule}
        if self.eta_max is not None:
            layer["eta_max"] = self.eta_max
        attention = {"conv_size": self.conv_size} if self.mixer != "miras" else None
        return MirasLM(vocab_size, self.d_model, self.n_layers, self.num_heads, mixer=self.mixer, spec=spec,
                       chunk_size=self.chunk_size, window=self.window, miras_kwargs=layer, attention_kwargs=attention)


@dataclass(frozen=True)
class ARMTConfig(_Config):
    """`ARMT` without its vocabulary; ``memory``: "dpfp" (the paper's), a preset name, or "spec" (the run's spec);
    ``dpfp_gamma``: the γ correction of the DPFP memory's normaliser (False: its ablation); ``bptt_segments``:
    backpropagate through the last K segments of a training input only (None: all); ``write_l1``: the weight of
    the DPFP write-gate penalty added to the training loss of inputs longer than bptt_segments (0: none)."""

    d_model: int = 64
    n_layers: int = 2
    num_heads: int = 2
    segment_size: int = 64
    num_mem_tokens: int = 8
    memory: str = "dpfp"
    conv_size: int = 0
    dpfp_gamma: bool = True
    bptt_segments: int | None = None
    write_l1: float = 0.0
    name: str = "armt"

    def build(self, vocab_size, spec):
        from .models import ARMT

        memory = spec if self.memory == "spec" else self.memory
        if not self.dpfp_gamma and memory != "dpfp":
            raise ValueError(f"dpfp_gamma=False switches off the γ correction of the DPFP memory; it needs "
                             f"memory='dpfp', not {self.memory!r}")
        dpfp = {"dpfp_gamma": self.dpfp_gamma} if memory == "dpfp" else {}
        return ARMT(vocab_size, self.d_model, self.n_layers, self.num_heads, self.segment_size, self.num_mem_tokens,
                    memory=memory, conv_size=self.conv_size, bptt_segments=self.bptt_segments, write_l1=self.write_l1,
                    **dpfp)


MODEL_CONFIGS = {c.name: c for c in (MirasLMConfig(), ARMTConfig())}


# ------------------------------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class FitConfig(_Config):
    """The arguments of `fit` that a run fixes (see `fit` for each); ``target``: stop once the held-out accuracy
    reaches it."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int | None = None
    min_lr: float | None = None
    clip: float | None = 1.0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    max_time: float | None = None
    target: float | None = None

    def __post_init__(self):
        _number("fit", "steps", self.steps, 1, integer=True)
        _number("fit", "batch_size", self.batch_size, 1, integer=True)
        _number("fit", "lr", self.lr, 0, low_open=True)
        _number("fit", "weight_decay", self.weight_decay, 0)
        _number("fit", "warmup", self.warmup, 0, allow_none=True, integer=True)
        _number("fit", "min_lr", self.min_lr, 0, self.lr, allow_none=True)
        _number("fit", "clip", self.clip, 0, allow_none=True)
        _number("fit", "eval_every", self.eval_every, 0, allow_none=True, integer=True)
        _number("fit", "checkpoint_every", self.checkpoint_every, 1, allow_none=True, integer=True)
        _number("fit", "max_time", self.max_time, 0, low_open=True, allow_none=True)
        _number("fit", "target", self.target, 0, 1, allow_none=True)
        from .train import check_optimizer_range

        check_optimizer_range(self.lr, self.weight_decay, name="fit.lr")

    def fit_kwargs(self):
        """The keyword arguments of `fit` (``target`` becomes an early-stop callback of `RunConfig.train`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "target"}


# ------------------------------------------------------------------------------------------------- run


def _section(kinds, section, value, default):
    """A config dataclass from itself, a dict with a "name" (or the default's), or None (the default)."""
    if value is None:
        return default
    if isinstance(value, _Config):
        return value
    if not isinstance(value, dict):
        _fail("run", section, value, "must be a config object or a dict of its fields")
    value = dict(value)
    name = value.pop("name", default.name)
    _choice(section, "name", name, tuple(kinds))
    allowed = {f.name for f in fields(kinds[name])} - {"name"}
    if unknown := set(value) - allowed:
        raise ValueError(f"{section}: unknown key(s) {sorted(unknown)} for {name!r}; allowed: {', '.join(sorted(allowed))}")
    return kinds[name].replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def _task_fields(stage):
    """A curriculum stage's task fields (all its entries but "batch_size")."""
    return {name: value for name, value in stage.items() if name != "batch_size"}


@dataclass(frozen=True)
class RunConfig(_Config):
    """Everything one training run needs: task, model, memory spec, fit settings, seed and curriculum.

    spec: a preset name or a dict of MemorySpec fields, optionally with "preset" naming the base preset
    whose fields the others replace (``{"preset": "moneta", "q": 3.0}``). seed: data, initialisation and
    `fit`. threads: torch threads while training (None: leave torch's setting).
    """

    task: MQARConfig | BabiLongConfig | NIAHConfig | LMConfig = field(default_factory=MQARConfig)
    model: MirasLMConfig | ARMTConfig = field(default_factory=MirasLMConfig)
    spec: str | dict = "gated_deltanet"
    fit: FitConfig = field(default_factory=FitConfig)
    seed: int = 0
    curriculum: tuple = ()
    advance_below: float | None = None
    threads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "task", _section(TASK_CONFIGS, "task", self.task, MQARConfig()))
        object.__setattr__(self, "model", _section(MODEL_CONFIGS, "model", self.model, MirasLMConfig()))
        if isinstance(self.fit, dict):
            object.__setattr__(self, "fit", FitConfig().replace(**self.fit))
        if not isinstance(self.fit, FitConfig):
            _fail("run", "fit", self.fit, "must be a FitConfig or a dict of its fields")
        self.memory_spec()  # raises for an unknown preset or a bad field
        _number("run", "seed", self.seed, 0, integer=True)
        _number("run", "advance_below", self.advance_below, 0, low_open=True, allow_none=True)
        if self.threads is not None:
            check_int("threads", self.threads)
        object.__setattr__(self, "curriculum", tuple((start, dict(stage)) for start, stage in self.curriculum))
        for start, stage in self.curriculum:
            _number("curriculum", "start", start, 0, integer=True)
            _number("curriculum", "batch_size", stage.get("batch_size"), 1, allow_none=True, integer=True)
            self.task.replace(**_task_fields(stage))
        if self.advance_below is not None and not self.curriculum:
            _fail("run", "advance_below", self.advance_below, "needs a curriculum (stages to advance through)")
        self._check_model()

    def memory_spec(self):
        """The `MemorySpec` (or, for a preset name, the `Preset`) the model's memory is built from."""
        if isinstance(self.spec, dict):
            fields_ = dict(self.spec)
            base = fields_.pop("preset", None)
            spec = resolve(base)[0].replace(**fields_) if base else resolve(fields_)[0]
            return spec if not base or spec != resolve(base)[0] else resolve(base)[1]
        _, named = resolve(self.spec)
        return named

    def _check_model(self):
        """Build the model once (CPU, a few ms for the sizes here): its constructor refuses bad settings."""
        try:
            self.model.build(4096, self.memory_spec())
        except ValueError as error:
            raise ValueError(f"model: {error}") from None

    def build_task(self):
        """The task, or a `TaskStages` over the curriculum's stages (evaluated on the run's task)."""
        task = self.task.build(self.seed)
        if not self.curriculum:
            return task
        from .train import TaskStages

        stages = [(start, self.task.replace(**_task_fields(stage)).build(self.seed), stage.get("batch_size"))
                  for start, stage in self.curriculum]
        return TaskStages(stages, eval_task=task, eval_early=self.advance_below is None)

    def build_model(self, vocab_size):
        import torch

        torch.manual_seed(self.seed)
        return self.model.build(vocab_size, self.memory_spec())

    @classmethod
    def from_dict(cls, data):
        """A RunConfig from `to_dict`'s plain data (e.g. run.json)."""
        if not isinstance(data, dict):
            raise ValueError(f"run: {data!r} must be a dict with task, model, spec, fit, ... entries")
        allowed = {f.name for f in fields(cls)}
        if unknown := set(data) - allowed:
            raise ValueError(f"run: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
        data = dict(data)
        data["curriculum"] = tuple(tuple(stage) for stage in data.get("curriculum", ()))
        return cls(**data)

    def write(self, path):
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    def train(self, out_dir=None, callbacks=(), cancel=None, verbose=False):
        """Build the task and the model, train with `fit`, return (model, metrics). With `out_dir`, run.json
        (this config) is written there first, and fit keeps checkpoint.pt and metrics.parquet next to it."""
        import torch

        from .train import advance_when, early_stop, fit

        task = self.build_task()
        model = self.build_model(task.vocab_size)
        callbacks = list(callbacks)
        if self.advance_below is not None:
            callbacks.append(advance_when(task, self.advance_below))
        if self.fit.target is not None:
            callbacks.append(early_stop("eval_accuracy", self.fit.target))
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with RunLock(out_dir) if out_dir is not None else contextlib.nullcontext():
                if out_dir is not None:  # under the lock: a run in use is refused before anything is written
                    self.write(Path(out_dir) / "run.json")
                metrics = fit(model, task, seed=self.seed, callbacks=callbacks, cancel=cancel, out_dir=out_dir,
                              verbose=verbose, **self.fit.fit_kwargs())
        finally:
            torch.set_num_threads(threads)
        return model, metrics
