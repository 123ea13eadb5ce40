"""A sweep file (TOML) -> `Sweep`: the fixed settings, the search space and the trial plan; each planned
configuration is a `config.RunConfig`.

    name = "mqar_axes"              # the Optuna study name
    sampler = "grid"                # "grid": every combination of [space]; "random": n_trials draws
    n_trials = 24                   # random only
    seed = 0                        # the sampler's seed: the plan is the same on every run

    [task]    `config.MQARConfig` fields (vocab_size, seq_len, num_kv_pairs, ..., eval_pairs)
    [model]   `config.MirasLMConfig` fields (d_model, n_layers, num_heads, chunk_size, eta_max, ...)
    [spec]    preset = "name" and/or MemorySpec fields (bias, retention, memory, optimizer, p, q, ...)
    [fit]     `config.FitConfig` fields (steps, batch_size, lr, warmup, clip, ...; eval_every defaults to 0:
              a trial is scored once, at the end, on its recall curve)
    [optuna]  heartbeat_interval, grace_period (seconds), max_retry
    [space]   seed = [0, 1]  and sub-tables [space.task] / [space.model] / [space.spec] / [space.fit]:
              name = [v1, v2, ...] (a categorical axis) or, for sampler = "random" only,
              name = {low = 1e-3, high = 3e-2, log = true} (integers when low and high are).

A trial's parameters are named as in their section (`bias`, `lr`, `d_model`, ...; a name may appear
in one section only). A trial's seed (model initialisation, data, `fit`) is 0 unless [space] lists
seeds. The plan is drawn with Optuna's `GridSampler` / `RandomSampler` seeded with `seed`, so every
run of the same file plans the same configurations (what makes re-runs resumable). Every planned
configuration is built as a `RunConfig` when the file is parsed, so a bad value is refused at once with
a ValueError naming it, before any worker starts.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from math import prod
from pathlib import Path

import optuna

from ..config import FitConfig, MirasLMConfig, MQARConfig, RunConfig
from ..spec import MemorySpec

SAMPLERS = ("grid", "random")
OPTUNA_DEFAULTS = {"heartbeat_interval": 10, "grace_period": 30, "max_retry": 2}


def _fields(config):
    return {f.name for f in fields(config)} - {"name"}


# the keys each section accepts: the fields of the run configuration's section
SECTION_KEYS = {
    "task": _fields(MQARConfig),
    "model": _fields(MirasLMConfig),
    "spec": {f.name for f in fields(MemorySpec)} | {"preset"},
    "fit": _fields(FitConfig),
}


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file. ``fixed``: section -> {key: value}; ``space``: parameter -> list of values
    or {low, high, log}; ``section_of``: parameter -> the section it sets ("seed" for the seed)."""

    name: str
    sampler: str
    seed: int
    n_trials: int
    fixed: dict
    space: dict
    section_of: dict
    optuna: dict
    path: Path | None = None

    @cached_property
    def plan(self):
        """The trial plan: a tuple of parameter dicts, the same in every process."""
        return tuple(_draw_plan(self))

    def run_config(self, params):
        """The `RunConfig` of one planned configuration (raises ValueError naming a bad value)."""
        sections = {section: dict(values) for section, values in self.fixed.items()}
        sections["fit"].setdefault("eval_every", 0)
        seed = 0
        for name, value in params.items():
            if self.section_of[name] == "seed":
                seed = value
            else:
                sections[self.section_of[name]][name] = value
        return RunConfig(task=sections["task"], model=sections["model"], spec=sections["spec"], fit=sections["fit"],
                         seed=seed)

    def settings(self, params):
        """One trial's settings as plain data: `RunConfig.to_dict`, with the spec's every field (and "preset":
        the base preset's name or None), so a table of trials can show the memory's axes."""
        run = self.run_config(params)
        spec = run.memory_spec()
        fields_ = asdict(spec if isinstance(spec, MemorySpec) else spec.spec)
        base = run.spec.get("preset") if isinstance(run.spec, dict) else run.spec
        return {**run.to_dict(), "spec": {"preset": base, **fields_}}


def config_key(params):
    """The identity of a configuration in the study: its parameters as canonical JSON."""
    return json.dumps(params, sort_keys=True)


def suggest(trial, space):
    """Ask ``trial`` for every parameter of ``space`` (a queued trial returns its fixed values)."""
    params = {}
    for name, values in space.items():
        if isinstance(values, list):
            params[name] = trial.suggest_categorical(name, values)
        elif isinstance(values["low"], int) and isinstance(values["high"], int):
            params[name] = trial.suggest_int(name, values["low"], values["high"], log=values.get("log", False))
        else:
            params[name] = trial.suggest_float(name, values["low"], values["high"], log=values.get("log", False))
    return params


def _draw_plan(sweep):
    if sweep.sampler == "grid":
        sampler = optuna.samplers.GridSampler(sweep.space, seed=sweep.seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=sweep.seed)
    study = optuna.create_study(sampler=sampler)  # in memory: only a source of configurations
    return [suggest(study.ask(), sweep.space) for _ in range(sweep.n_trials)]


# ------------------------------------------------------------------------------------ parsing


def _check_space(name, values, sampler):
    if isinstance(values, list):
        if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise ValueError(f"space.{name}={values!r} must be a non-empty list of strings or numbers")
        return
    if sampler == "grid":
        raise ValueError(f"space.{name}={values!r}: sampler='grid' needs a list of values")
    if not (isinstance(values, dict) and {"low", "high"} <= set(values) <= {"low", "high", "log"}
            and values["low"] < values["high"]):
        raise ValueError(f"space.{name}={values!r} must be a list of values or {{low, high, log}} with low < high")


def _split_space(table, sampler):
    """[space] -> (parameter -> values, parameter -> section)."""
    space, section_of = {}, {}
    for key, value in table.items():
        entries = {key: value} if key == "seed" else value
        if key not in SECTION_KEYS and key != "seed":
            raise ValueError(f"space.{key}: unknown; allowed: seed, " + ", ".join(f"[space.{s}]" for s in SECTION_KEYS))
        for name, values in entries.items():
            if key != "seed" and name not in SECTION_KEYS[key]:
                raise ValueError(f"space.{key}.{name}: unknown; allowed: {', '.join(sorted(SECTION_KEYS[key]))}")
            if name in space:
                raise ValueError(f"space: parameter {name!r} appears in two sections")
            _check_space(name, values, sampler)
            space[name], section_of[name] = values, key
    if not space:
        raise ValueError("[space] is empty: give at least one axis, e.g. [space.spec] bias = ['l2', 'lp']")
    return space, section_of


def _check_fixed(data):
    fixed = {}
    for section, allowed in SECTION_KEYS.items():
        values = data.get(section, {})
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"[{section}]: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
        fixed[section] = dict(values)
    return fixed


def parse_sweep(data, path=None):
    """A `Sweep` from the parsed TOML ``data`` (a dict); raises ValueError naming the bad entry."""
    allowed = {"name", "sampler", "seed", "n_trials", "space", "optuna", *SECTION_KEYS}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ValueError("name: give the sweep a name (the Optuna study name), e.g. name = \"mqar_axes\"")
    sampler = data.get("sampler", "grid")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not supported; allowed values: {', '.join(SAMPLERS)}")
    space, section_of = _split_space(data.get("space", {}), sampler)
    if sampler == "grid":
        n_trials = prod(len(v) for v in space.values())
    else:
        n_trials = data.get("n_trials")
        if not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"n_trials={n_trials!r}: sampler='random' needs an integer n_trials >= 1")
    optuna_settings = {**OPTUNA_DEFAULTS, **data.get("optuna", {})}
    if set(optuna_settings) != set(OPTUNA_DEFAULTS):
        raise ValueError(f"[optuna]: allowed keys are {', '.join(OPTUNA_DEFAULTS)}")
    sweep = Sweep(data["name"], sampler, data.get("seed", 0), n_trials, _check_fixed(data), space, section_of,
                  optuna_settings, path)
    for params in sweep.plan:
        sweep.run_config(params)  # every planned configuration is valid, or this names what is not
    return sweep


def load_sweep(path):
    """Read a sweep TOML file -> `Sweep`."""
    path = Path(path)
    with path.open("rb") as handle:
        return parse_sweep(tomllib.load(handle), path.resolve())
