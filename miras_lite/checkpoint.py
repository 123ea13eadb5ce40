"""Checkpoints: `save(path, model)` and `load(path) -> model`, rebuilt from its config.

A checkpoint is one `torch.save` file holding only plain data, so that it loads with
``torch.load(path, weights_only=True)`` (no pickled classes, no code runs at load time)::

    {"format": "miras_lite.checkpoint", "version": 2,
     "model": "MirasLM",                 # a name in MODELS (or one given to `register_model`)
     "config": {...},                    # model.config: the constructor's keyword arguments
     "state_dict": {...},                # tensors
     "extra": {...} or None,             # anything plain the caller adds (step, metrics, task config)
     "sha256": "..."}                    # checksum of everything above (`digest`)

Integrity: ``sha256`` is the SHA-256 of a canonical encoding of the other entries (every tensor's dtype, shape
and raw bytes, every key and plain value), computed by `save` and checked by `load_checkpoint`, so a flipped
byte anywhere in the weights or the config is refused instead of loaded. Checkpoints of version 1 (written
before the checksum existed) still load, unchecked. Every failure to load, whatever its cause (no such file,
a truncated or corrupt file, a pickle that `weights_only` refuses, a checksum mismatch, a config the model
rejects, weights of the wrong shape), raises one error type, `CheckpointError` (a ValueError), whose message
names the file and the cause.

`MemorySpec` values inside the config are stored as ``{"__MemorySpec__": dataclasses.asdict(spec)}``
and turned back into `MemorySpec` objects by `load`; a plain dict holding a spec's fields under the
keys "spec" or "memory" (the models' own `asdict` form) is converted as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
from pathlib import Path

import torch

from .files import atomic_write
from .spec import MemorySpec

FORMAT, VERSION = "miras_lite.checkpoint", 2
CHECKSUM_SINCE = 2  # versions from this one on must carry "sha256"


class CheckpointError(ValueError):
    """A checkpoint could not be loaded; ``path`` is the file and ``cause`` says why (the message has both)."""

    def __init__(self, path, cause):
        self.path, self.cause = str(path), cause
        super().__init__(f"checkpoint {self.path!r}: {cause}")

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


def _feed(hasher, value):
    """Update ``hasher`` with a canonical encoding of ``value`` (plain data and tensors)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        hasher.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            hasher.update(f"K{key!r}".encode())
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _feed(hasher, item)
    else:
        hasher.update(f"S{type(value).__name__}:{value!r}".encode())


def digest(payload):
    """SHA-256 (hex) of a checkpoint payload without its "sha256" entry."""
    hasher = hashlib.sha256()
    _feed(hasher, {k: v for k, v in payload.items() if k != "sha256"})
    return hasher.hexdigest()


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
    payload["sha256"] = digest(payload)
    buffer = io.BytesIO()  # serialised in memory, then written by Python: a failed write is an OSError with its errno
    torch.save(payload, buffer)  # (torch's own file writer reports a full disk as "unexpected pos 12672 vs 12560")
    data = buffer.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _cause(error):
    """The first line of an exception's message, with its type (shortened)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _read(path, map_location):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, not a checkpoint file") from None
    except PermissionError:
        raise CheckpointError(path, "cannot be read (permission denied)") from None
    except Exception as error:  # torch.load raises many types for a bad file: wrap them all
        text = str(error)
        if "weights only load failed" in text.lower():  # torch's unpickler refused something: say what
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            detail = next((line for line in lines if "global" in line.lower() or line.startswith("Unsupported")),
                          lines[-1] if lines else "")
            if "global" in detail.lower():
                raise CheckpointError(path, "holds objects that a weights_only load refuses (pickled code or classes: "
                                      f"{detail[:160]}); it was not written by miras_lite.save, and nothing in it was "
                                      "run") from None
            raise CheckpointError(path, f"is truncated, corrupt or not a torch file (UnpicklingError: {detail[:160]})") \
                from None
        raise CheckpointError(path, f"is truncated, corrupt or not a torch file ({_cause(error)})") from None


def _check_payload(path, payload):
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "is not a miras_lite checkpoint (written by miras_lite.save)")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(path, f"has an invalid version {version!r}")
    if version > VERSION:
        raise CheckpointError(path, f"has checkpoint version {version}; this code reads <= {VERSION} (a newer miras_lite "
                              "wrote it)")
    kinds = {"model": str, "config": dict, "state_dict": dict}
    for key, kind in kinds.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(path, f"entry {key!r} is missing or not a {kind.__name__} (a corrupt file)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["state_dict"].items()):
        raise CheckpointError(path, "entry 'state_dict' must map names to tensors (a corrupt file)")
    if "sha256" in payload or version >= CHECKSUM_SINCE:
        stored = payload.get("sha256")
        if not isinstance(stored, str):
            raise CheckpointError(path, f"version {version} checkpoints carry a sha256 checksum, and this one has none "
                                  "(a corrupt file)")
        if digest(payload) != stored:
            raise CheckpointError(path, "checksum mismatch: the contents changed after it was written (a corrupt or "
                                  "edited file); it was not loaded")


def load_checkpoint(path, map_location="cpu"):
    """The raw checkpoint dict (see the module docstring), read with ``weights_only=True``, checked against its
    checksum (version >= 2), specs decoded. Raises `CheckpointError` naming the file and the cause."""
    payload = _read(path, map_location)
    _check_payload(path, payload)
    try:
        payload["config"] = _decode(payload["config"])
        payload["extra"] = _decode(payload.get("extra"))
    except (TypeError, ValueError) as error:
        raise CheckpointError(path, f"holds an invalid model config ({_cause(error)})") from None
    return payload


def load(path, map_location="cpu", return_extra=False):
    """The model saved at ``path``: ``cls(**config)`` with its weights loaded, in eval mode.

    ``return_extra=True`` returns ``(model, extra)``. Raises `CheckpointError` (a ValueError naming the file
    and the cause) for every failure.
    """
    payload = load_checkpoint(path, map_location)
    try:
        cls = model_class(payload["model"])
    except ValueError as error:
        raise CheckpointError(path, str(error)) from None
    try:
        model = cls(**payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(path, f"its config does not build a {payload['model']} ({_cause(error)})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(path, f"its weights do not fit a {payload['model']} built from its config "
                              f"({_cause(error)})") from None
    model.eval()
    return (model, payload["extra"]) if return_extra else model


def all_finite(model) -> bool:
    """True when every parameter and buffer of ``model`` is finite (a checkpoint worth keeping)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


__all__ = ["MODELS", "CheckpointError", "all_finite", "digest", "load", "load_checkpoint", "model_class",
           "register_model", "save"]
