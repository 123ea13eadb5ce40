"""What every claim is made of: the expectations (`Beats`, `Reaches`) and their verdicts, the `Claim`, and the
runs most claims share (`preset_run` on `RECALL_TASK`, and `reduced`, their tiny version)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import miras_lite as ml
from miras_lite.config import ARMTConfig, FitConfig, MirasLMConfig, MQARConfig, NIAHConfig, RunConfig
from miras_lite.sweeps.objective import train_trial

MARGIN = 0.02  # recall differences within this are "no difference"
SEEDS = (0, 1, 2)


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

    @property
    def models(self):
        return (self.better, self.worse)

    def __str__(self):
        return f"{self.better} > {self.worse}"


@dataclass(frozen=True)
class Reaches:
    """The paper finds `model` at `level` or above."""

    model: str
    level: float

    def judge(self, recall):
        """(verdict, why): reproduced when every seed reaches the level, not reproduced when none does (a level
        is the paper's own threshold, so no margin applies), inconclusive otherwise."""
        values = [recall[self.model][s] for s in sorted(recall[self.model])]
        why = f"{self.model} per seed: {', '.join(f'{v:.3f}' for v in values)} (level {self.level})"
        if not values:
            return "inconclusive", "no seed measured"
        if all(v >= self.level for v in values):
            return "reproduced", why
        if all(v < self.level for v in values):
            return "not reproduced", why
        return "inconclusive", why

    @property
    def models(self):
        return (self.model,)

    def __str__(self):
        return f"{self.model} >= {self.level}"


def _verdict(gaps, why):
    if not gaps:
        return "inconclusive", "no seed measured"
    if all(g > MARGIN for g in gaps):
        return "reproduced", why
    if all(g < -MARGIN for g in gaps):
        return "not reproduced", why
    return "inconclusive", why


# the example sweep's task (sweeps/mqar_axes.toml): the playground's MQAR, trained on 1-4 pairs, recall over 1-8
RECALL_TASK = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=(1, 2, 3, 4), train_examples=4096,
                         test_examples=256, eval_pairs=(1, 2, 4, 6, 8))
TINY_TASK = MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2, train_examples=64, test_examples=16,
                       eval_pairs=(1, 2))


def mqar_recall(run):
    """Train `run` (an MQAR task) and score it: the recall over its eval_pairs (`sweeps.objective.train_trial`)."""
    return train_trial(run)


def tiny_task(task):
    """The suite's MQAR (V=16, L=16, 2 pairs), its keys written as often as in `task`."""
    return TINY_TASK.replace(seq_len=max(TINY_TASK.seq_len, 4 * task.writes + 4), writes=task.writes,
                             write_mode=task.write_mode)


def tiny_fit(fit):
    return fit.replace(steps=4, batch_size=4, warmup=1)


def reduced(run):
    """A tiny version of an MQAR run (`tiny_task`, d_model 8, 4 steps): the suite's smoke test of the command."""
    return run.replace(task=tiny_task(run.task), model=run.model.replace(d_model=8, chunk_size=4),
                       fit=tiny_fit(run.fit))


@dataclass(frozen=True)
class Claim:
    """What a paper found (`source`, `says`) and the runs that test it at toy scale (`runs`: model -> RunConfig,
    seed 0; every seed replaces it). `score(run)` trains a run and returns its metrics, "recall" among them;
    `shrink(run)` is its tiny version (``--reduced``); `metric` names the score on the page."""

    name: str
    source: str
    says: str
    runs: dict
    expect: tuple
    paper: dict = field(default_factory=dict)  # model -> the paper's figure for it, where it gives one
    score: Callable = mqar_recall
    shrink: Callable = reduced
    metric: str = "recall (mean accuracy over 1, 2, 4, 6, 8 pairs)"
    chance: float | None = None  # the score of a model that guesses (None: an MQAR guess, 2/V)

    def reduced(self):
        """This claim with every run replaced by its tiny version."""
        return replace(self, runs={model: self.shrink(run) for model, run in self.runs.items()})

    def chance_level(self):
        if self.chance is not None:
            return self.chance
        return 2 / next(iter(self.runs.values())).task.vocab_size  # values are drawn from [V/2, V)

    def budget(self):
        """The claim's training budget, tasks and models in words (each distinct setting once)."""
        runs = self.runs.values()
        fits = dict.fromkeys(f"{run.fit.steps} steps of batch {run.fit.batch_size}" for run in runs)
        tasks = dict.fromkeys(describe_task(run.task) + (f" (after {run.curriculum[-1][0]} steps on an easier "
                                                         "version)" if run.curriculum else "") for run in runs)
        models = dict.fromkeys(describe_model(run.model) for run in runs)
        return "; ".join(" or ".join(parts) for parts in (fits, tasks, models))


def describe_task(task):
    if isinstance(task, MQARConfig):
        pairs = task.num_kv_pairs if isinstance(task.num_kv_pairs, tuple) else (task.num_kv_pairs,)
        trained = f"{pairs[0]}–{pairs[-1]}" if len(pairs) > 1 else str(pairs[0])
        text = f"MQAR V={task.vocab_size}, L={task.seq_len}, {trained} pairs"
        writes = getattr(task, "writes", 1)
        return text + (f", each key written {writes} times ({task.write_mode})" if writes > 1 else "")
    if isinstance(task, NIAHConfig):
        return f"needle in a haystack ({task.haystack}), {task.context_length} tokens"
    return task.name


def describe_model(model):
    if isinstance(model, ARMTConfig):
        return f"ARMT, width {model.d_model}, segments of {model.segment_size} tokens"
    mixer = "attention" if model.mixer == "attention" else "memory"
    return f"{model.n_layers} layers of {mixer}, width {model.d_model}"


def preset_run(preset, spec=None, steps=None, d_model=64, task=RECALL_TASK):
    """MirasLM (2 layers, 1 head) on `task` at `preset`'s recommended chunk size, η_max and learning rate;
    `spec` replaces fields of the preset's spec; `steps`: the budget (default: the preset's recommended)."""
    recommended = ml.named_preset(preset).recommended
    steps = steps or recommended.steps
    return RunConfig(task=task, spec={"preset": preset, **(spec or {})},
                     model=MirasLMConfig(d_model=d_model, n_layers=2, num_heads=1, chunk_size=recommended.chunk_size,
                                         eta_max=recommended.eta_max),
                     fit=FitConfig(steps=steps, batch_size=16, lr=recommended.lr, warmup=min(50, steps // 10)),
                     threads=1)
