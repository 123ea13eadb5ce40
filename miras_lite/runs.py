"""Run directories: what `RunConfig.train(out_dir=...)` and `python -m miras_lite train` leave behind, read back.

    run.json          the `RunConfig` (`RunConfig.to_dict`)
    checkpoint.pt     the model (`checkpoint.save`; its extra holds the step and why the run stopped)
    metrics.parquet   one row per step (`fit`)

`load_run(path)` returns all three as a `Run`; `find_runs(root)` lists the run directories below a folder
(the trained models shipped in data/models/, or the user's runs/).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from . import checkpoint
from .config import RunConfig

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "models"
FILES = ("run.json", "checkpoint.pt", "metrics.parquet")


@dataclass
class Run:
    """A trained run: its directory, configuration, model (in eval mode), per-step metrics, last step and why it
    stopped (None: it ran all its steps)."""

    path: Path
    config: RunConfig
    model: object
    metrics: pl.DataFrame
    step: int
    stopped: str | None


def load_run(path):
    """The `Run` in directory `path` (ValueError naming the directory when a file is missing)."""
    path = Path(path)
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"run={str(path)!r} is not a run directory: it has no {', '.join(missing)}")
    config = RunConfig.from_dict(json.loads((path / "run.json").read_text()))
    model, extra = checkpoint.load(path / "checkpoint.pt", return_extra=True)
    extra = extra or {}
    return Run(path, config, model, pl.read_parquet(path / "metrics.parquet"), extra.get("step"), extra.get("stopped"))


def find_runs(root):
    """The complete run directories below `root` (holding all three files; a run still writing its first
    checkpoint is left out), sorted by path."""
    root = Path(root)
    found = root.glob("**/run.json") if root.is_dir() else ()
    return sorted(p.parent for p in found if all((p.parent / name).is_file() for name in FILES))
