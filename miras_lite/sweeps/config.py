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

The name must match `NAME_PATTERN` (letters, digits, "_", "-" and "."; it names files under runs/sweeps/, so
no "/" or ".."). The fixed settings ([task], [model], [spec], [fit]) are hashed (`Sweep.fixed_hash`) into
every trial's identity: editing them starts new trials instead of mixing old and new results.

A trial's parameters are named as in their section (`bias`, `lr`, `d_model`, ...; a name may appear
in one section only). A trial's seed (model initialisation, data, `fit`) is 0 unless [space] lists
seeds. The plan is drawn with Optuna's `GridSampler` / `RandomSampler` seeded with `seed`, so every
run of the same file plans the same configurations (what makes re-runs resumable). Every planned
configuration is built as a `RunConfig` when the file is parsed, so a bad value is refused at once with
a ValueError naming it, before any worker starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from math import prod
from pathlib import Path

import optuna

from ..config import FitConfig, MirasLMConfig, MQARConfig, RunConfig
from ..spec import MemorySpec
from ..train import check_optimizer_range

SAMPLERS = ("grid", "random")
OPTUNA_DEFAULTS = {"heartbeat_interval": 10, "grace_period": 30, "max_retry": 2}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


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
    def fixed_hash(self):
        """A short hash of the fixed settings (canonical JSON of [task], [model], [spec], [fit]): part of every
        trial's identity in the study."""
        text = json.dumps(self.fixed, sort_keys=True, separators=(",", ":"), default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

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


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_space(name, values, sampler):
    if isinstance(values, list):
        if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise ValueError(f"space.{name}={values!r} must be a non-empty list of strings or numbers")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ValueError(f"space.{name}={values!r} lists a value twice")
        return
    if sampler == "grid":
        raise ValueError(f"space.{name}={values!r}: sampler='grid' needs a list of values")
    if not (isinstance(values, dict) and {"low", "high"} <= set(values) <= {"low", "high", "log"}
            and _is_number(values["low"]) and _is_number(values["high"]) and values["low"] < values["high"]
            and isinstance(values.get("log", False), bool)):
        raise ValueError(f"space.{name}={values!r} must be a list of values or {{low, high, log}} with numbers "
                         "low < high and log true or false")
    if values.get("log") and values["low"] <= 0:
        raise ValueError(f"space.{name}={values!r}: log = true needs low > 0")


def _split_space(table, sampler):
    """[space] -> (parameter -> values, parameter -> section)."""
    space, section_of = {}, {}
    if not isinstance(table, dict):
        raise ValueError(f"[space] must be a table (e.g. [space.spec] bias = ['l2', 'lp']), not {table!r}")
    for key, value in table.items():
        entries = {key: value} if key == "seed" else value
        if key not in SECTION_KEYS and key != "seed":
            raise ValueError(f"space.{key}: unknown; allowed: seed, " + ", ".join(f"[space.{s}]" for s in SECTION_KEYS))
        if not isinstance(entries, dict):
            raise ValueError(f"space.{key}={value!r} must be a table of parameter = [values]")
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
        if not isinstance(values, dict):
            raise ValueError(f"[{section}] must be a table of settings, not {values!r}")
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"[{section}]: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
        fixed[section] = dict(values)
    return fixed


def parse_sweep(data, path=None):
    """A `Sweep` from the parsed TOML ``data`` (a dict); raises ValueError naming the bad entry."""
    if not isinstance(data, dict):
        raise ValueError(f"sweep: {type(data).__name__} must be a dict (a parsed TOML file)")
    allowed = {"name", "sampler", "seed", "n_trials", "space", "optuna", *SECTION_KEYS}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ValueError("name: give the sweep a name (the Optuna study name), e.g. name = \"mqar_axes\"")
    if not NAME_PATTERN.fullmatch(data["name"]) or ".." in data["name"]:
        raise ValueError(f"name={data['name']!r} must be 1-100 letters, digits, '_', '-' or '.' starting with a letter "
                         "or digit, without '..' (it names the files runs/sweeps/NAME.*)")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**32) (the sampler's seed)")
    sampler = data.get("sampler", "grid")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not supported; allowed values: {', '.join(SAMPLERS)}")
    space, section_of = _split_space(data.get("space", {}), sampler)
    if sampler == "grid":
        n_trials = prod(len(v) for v in space.values())
    else:
        n_trials = data.get("n_trials")
        if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
            raise ValueError(f"n_trials={n_trials!r}: sampler='random' needs an integer n_trials >= 1")
    optuna_settings = _check_optuna(data.get("optuna", {}))
    sweep = Sweep(data["name"], sampler, seed, n_trials, _check_fixed(data), space, section_of, optuna_settings, path)
    for params in sweep.plan:
        try:
            run = sweep.run_config(params)  # every planned configuration is valid, or this names what is not
            check_optimizer_range(run.fit.lr, run.fit.weight_decay, name="fit.lr")  # what fit checks beyond FitConfig
        except TypeError as error:  # a value of the wrong kind that a config does not check itself
            raise ValueError(f"the configuration {params} has a value of the wrong type ({error}); check the types "
                             "in [task], [model], [spec], [fit] and [space]") from None
    return sweep


def _check_optuna(table):
    if not isinstance(table, dict):
        raise ValueError(f"[optuna] must be a table, not {table!r}")
    settings = {**OPTUNA_DEFAULTS, **table}
    if set(settings) != set(OPTUNA_DEFAULTS):
        raise ValueError(f"[optuna]: unknown key(s) {sorted(set(settings) - set(OPTUNA_DEFAULTS))}; allowed keys are "
                         f"{', '.join(OPTUNA_DEFAULTS)}")
    for key, low in (("heartbeat_interval", 1), ("grace_period", 1), ("max_retry", 0)):
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"optuna.{key}={value!r} must be an integer >= {low}")
    if settings["grace_period"] <= settings["heartbeat_interval"]:
        raise ValueError(f"optuna.grace_period={settings['grace_period']} must exceed optuna.heartbeat_interval="
                         f"{settings['heartbeat_interval']} (a live worker's heartbeat is at most that old)")
    return settings


def load_sweep(path):
    """Read a sweep TOML file -> `Sweep` (a missing or unreadable file, or bad TOML, is a ValueError naming it)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ValueError(f"sweep: {str(path)!r} cannot be read ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"sweep: {str(path)!r} is not valid TOML ({error})") from None
    return parse_sweep(data, path.resolve())
