"""Checkpoints: `save(path, model)` and `load(path) -> model`, rebuilt from its config.

A checkpoint is one `torch.save` file holding only plain data, so that it loads with
``torch.load(path, weights_only=True)`` (no pickled classes, no code runs at load time)::

    {"format": "miras_lite.checkpoint", "version": 1,
     "model": "MirasLM",                 # a name in MODELS (or one given to `register_model`)
     "config": {...},                    # model.config: the constructor's keyword arguments
     "state_dict": {...},                # tensors
     "extra": {...} or None}             # anything plain the caller adds (step, metrics, task config)

`MemorySpec` values inside the config are stored as ``{"__MemorySpec__": dataclasses.asdict(spec)}``
and turned back into `MemorySpec` objects by `load`; a plain dict holding a spec's fields under the
keys "spec" or "memory" (the models' own `asdict` form) is converted as well.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch

from .files import atomic_write
from .spec import MemorySpec

FORMAT, VERSION = "miras_lite.checkpoint", 1

# name -> "module:attribute", imported lazily so that this file works before (or without) the models
MODELS = {
    "MirasLM": "miras_lite.models:MirasLM",
    "ARMT": "miras_lite.models:ARMT",
}
_SPEC_TAG = "__MemorySpec__"
_SPEC_FIELDS = {f.name for f in dataclasses.fields(MemorySpec)}


def register_model(cls, name: str | None = None):
    """Make `load` able to rebuild ``cls`` (a module class built as ``cls(**config)``). Returns cls,
    so it works as a class decorator."""
    MODELS[name or cls.__name__] = cls
    return cls


def model_class(name: str):
    """The class registered under ``name`` (imported on first use)."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not a known model; allowed values: {', '.join(map(repr, MODELS))} "
                         "(add others with miras_lite.checkpoint.register_model)")
    entry = MODELS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def _encode(value, where):
    """``value`` as plain data (dict/list/str/number/bool/None/tensor); MemorySpec -> tagged dict."""
    if isinstance(value, MemorySpec):
        return {_SPEC_TAG: dataclasses.asdict(value)}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"{where}: key {k!r} must be a str or int to be stored in a checkpoint")
            out[k] = _encode(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v, f"{where}[{i}]") for i, v in enumerate(value))
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        return value.item()
    raise ValueError(f"{where}: {type(value).__name__} cannot be stored in a weights_only checkpoint; "
                     "allowed: dict, list, tuple, str, int, float, bool, None, torch.Tensor, MemorySpec")


def _decode(value, key=None):
    if isinstance(value, dict):
        if set(value) == {_SPEC_TAG}:
            return MemorySpec(**value[_SPEC_TAG])
        if key in ("spec", "memory") and value and set(value) <= _SPEC_FIELDS:
            return MemorySpec(**value)
        return {k: _decode(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value


def save(path, model, extra=None):
    """Write ``model`` (its class name, ``model.config`` and ``state_dict``) and ``extra`` to ``path``.

    ``model.config`` must be a dict of the constructor's keyword arguments. The file is written to a
    temporary name first and then renamed (`files.atomic_write`), so an interrupted save never leaves a torn
    checkpoint.
    Returns the path.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"model: {type(model).__name__} has no .config dict (the constructor's keyword "
                         "arguments), so it could not be rebuilt by load()")
    name = type(model).__name__
    if name not in MODELS:
        register_model(type(model))
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "config": _encode(config, "model.config"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": _encode(extra, "extra"),
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path, map_location="cpu"):
    """The raw checkpoint dict (see the module docstring), read with ``weights_only=True``; specs decoded."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"path: {str(path)!r} is not a miras_lite checkpoint (written by miras_lite.save)")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"path: {str(path)!r} has checkpoint version {payload['version']}; this code reads <= {VERSION}")
    payload["config"] = _decode(payload["config"])
    payload["extra"] = _decode(payload["extra"])
    return payload


def load(path, map_location="cpu", return_extra=False):
    """The model saved at ``path``: ``cls(**config)`` with its weights loaded, in eval mode.

    ``return_extra=True`` returns ``(model, extra)``.
    """
    payload = load_checkpoint(path, map_location)
    model = model_class(payload["model"])(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return (model, payload["extra"]) if return_extra else model


def all_finite(model) -> bool:
    """True when every parameter and buffer of ``model`` is finite (a checkpoint worth keeping)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


__all__ = ["MODELS", "all_finite", "load", "load_checkpoint", "model_class", "register_model", "save"]
