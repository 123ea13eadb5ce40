"""What the marimo notebooks share beyond the library itself: the quick mode, the spec controls, chart
idioms (legend highlighting, accuracy axes with a chance line, learning curves) and live training in a
background thread."""

import os
import sys


REPORT_MODES = ("shipped", "full")


def report_mode():
    """How the notebook runs for `python -m miras_lite report` (the MIRAS_LITE_REPORT variable): "shipped" (no
    training: the page shows the trained models the project ships and the runs saved under runs/), "full"
    (`report --train`: training cells train at the settings the page shows, and the page waits for them), or
    None (not a report)."""
    mode = os.environ.get("MIRAS_LITE_REPORT") or None
    if mode is not None and mode not in REPORT_MODES:
        raise ValueError(f"MIRAS_LITE_REPORT={mode!r} is not a report mode; allowed: {', '.join(REPORT_MODES)}")
    return mode


def quick_mode():
    """True when a notebook should run its expensive cells at once, at a small size: when it runs as a
    script (`python notebooks/NAME.py`) or with MIRAS_LITE_QUICK=1 (browser tests), never in a report
    (`report_mode`). Otherwise those cells wait for their `mo.ui.run_button`."""
    if report_mode() is not None:
        return False
    if os.environ.get("MIRAS_LITE_QUICK") == "1":
        return True
    return running_as_script()


def running_as_script():
    """True when the notebook runs as `python notebooks/NAME.py` (also in the setup cell, where marimo has not set
    its mode yet: a script's __main__ is the notebook). marimo says "test" instead of None when PYTEST_CURRENT_TEST
    is set, as in a script started by a test."""
    import marimo as mo

    mode = mo.app_meta().mode
    if mode in (None, "test"):
        return isinstance(getattr(sys.modules["__main__"], "app", None), mo.App)
    return mode == "script"


def script_print(*lines):
    """Print `lines` when the notebook runs as a script, so `python notebooks/NAME.py` says what it computed (the
    app and reports show the page instead)."""
    if running_as_script():
        print(*lines, sep="\n", flush=True)


def course_link(notebook):
    """The link to another course notebook: its page in a report, `?file=` in the app."""
    from pathlib import Path

    return f"{Path(notebook).stem}.html" if report_mode() else f"?file={notebook}"


def runs_root():
    """Where the notebooks save and look for runs: runs/ in the working directory, or MIRAS_LITE_RUNS."""
    from pathlib import Path

    return Path(os.environ.get("MIRAS_LITE_RUNS") or "runs")


AXES = ("memory", "bias", "retention", "optimizer", "grad_at")


def axis_dropdowns(preset_name):
    """The spec a preset dropdown names ("custom": `MemorySpec()`) and one dropdown per axis (and the
    gradient point), each set to that spec: (base, memory, bias, retention, optimizer, grad_at)."""
    import marimo as mo

    from .presets import preset
    from .spec import BIASES, GRAD_POINTS, MEMORIES, OPTIMIZERS, RETENTIONS, MemorySpec

    base = MemorySpec() if preset_name == "custom" else preset(preset_name)
    options = (MEMORIES, BIASES, RETENTIONS, OPTIMIZERS, GRAD_POINTS)
    return (base, *(mo.ui.dropdown(options=list(values), value=getattr(base, axis), label=axis)
                    for axis, values in zip(AXES, options)))


def chosen_spec(base, *dropdowns):
    """`base` (keeping the preset's p, q, δ, ...) with the axes the dropdowns show, in `AXES` order:
    (spec, None), or (None, the reason) for a combination `MemorySpec` refuses."""
    try:
        return base.replace(**{axis: dropdown.value for axis, dropdown in zip(AXES, dropdowns)}), None
    except ValueError as error:
        return None, str(error)


# ----------------------------------------------------------------------------------------------- charts


def legend_pick(field):
    """(selection, opacity): click a legend entry of `field` to pick out its marks, the others fade. Add the
    selection to one chart with `.add_params(selection)` and encode `opacity=opacity` where it applies."""
    import altair as alt

    pick = alt.selection_point(fields=[field], bind="legend")
    return pick, alt.condition(pick, alt.value(1.0), alt.value(0.12))


def accuracy_axis(title="held-out accuracy", field="accuracy"):
    """A y encoding of an accuracy column fixed to [0, 1], so chance never looks like learning."""
    import altair as alt

    return alt.Y(f"{field}:Q", title=title, scale=alt.Scale(domain=[0, 1]))


def chance_rule(chance, title="held-out accuracy"):
    """A dashed horizontal rule at the chance accuracy, on `accuracy_axis`."""
    import altair as alt
    import polars as pl

    return alt.Chart(pl.DataFrame({"accuracy": [chance]})).mark_rule(strokeDash=[4, 4], color="gray").encode(
        y=accuracy_axis(title), tooltip=[alt.Tooltip("accuracy:Q", title="chance", format=".3f")])


def block_average(matrix, cells):
    """A [rows, columns] tensor averaged over blocks down to at most `cells` × `cells`, as a frame (row, column,
    weight): a heat map that stays readable (and under Altair's row limit) for large weight matrices."""
    import polars as pl
    import torch

    rows, cols = matrix.shape
    pooled = torch.nn.functional.adaptive_avg_pool2d(matrix[None, None].float(), (min(rows, cells), min(cols, cells)))[0, 0]
    r, c = pooled.shape
    return pl.DataFrame({"row": [i for i in range(r) for _ in range(c)], "column": [j for _ in range(r) for j in range(c)],
                         "weight": pooled.flatten().tolist()})


def held_out_metric(metrics):
    """The held-out column of a run's metrics: accuracy (MQAR) or bits per token (language model)."""
    return "eval_accuracy" if "eval_accuracy" in metrics.columns else "eval_bits_per_token"


def learning_curves(metrics, title):
    """Training loss (every step) and the held-out score (every evaluation) against the step."""
    import altair as alt
    import polars as pl

    loss = alt.Chart(metrics.select("step", "loss", "time_s")).mark_line(color="#4c78a8").encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("loss:Q", title="training loss (cross-entropy)"),
        tooltip=["step:Q", alt.Tooltip("loss:Q", format=".3f"), alt.Tooltip("time_s:Q", format=".1f")],
    ).properties(width=300, height=220, title="training loss")
    column = held_out_metric(metrics)
    if column not in metrics.columns:
        return loss.properties(title=title)
    name = column.removeprefix("eval_").replace("_", " ")
    evals = metrics.filter(pl.col(column).is_not_null()).select("step", "time_s", pl.col(column).alias("score"))
    score = alt.Chart(evals).mark_line(point=True, color="#e45756").encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("score:Q", title=name,
                scale=alt.Scale(domain=[0, 1]) if column == "eval_accuracy" else alt.Scale(zero=False)),
        tooltip=["step:Q", alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("time_s:Q", format=".1f")],
    ).properties(width=300, height=220, title="held-out " + name)
    return alt.hconcat(loss, score).properties(title=title)


# ------------------------------------------------------------------------------------------ live runs


class LiveStop:
    """The `cancel` of a live run: true once Cancel was pressed (`stop`, a threading.Event) or the run's cell ran
    again because a control changed; `reason` then says which (`fit` records it in the checkpoint)."""

    def __init__(self, stop, thread):
        self.stop, self.thread, self.reason = stop, thread, None

    def __call__(self):
        if self.stop.is_set():
            self.reason = "cancelled"
        elif self.thread.should_exit:
            self.reason = "interrupted: a control changed"
        return self.reason is not None


def train_live(run, stop, out_dir, output_index=1):
    """Train the `RunConfig` `run` in the calling marimo thread, with a progress line (`progress_line`) and
    learning curves drawn into the cell's output (at `output_index`), redrawn at every evaluation and at most
    twice a second. The run is saved in `out_dir` (run.json, checkpoint.pt, metrics.parquet), also when it is
    cancelled or interrupted.

    `stop` (a threading.Event) cancels after the running step, and so does the cell running again (then
    nothing more is drawn: a newer run owns the output; marimo's progress bar is not used because it redraws
    its thread's output when it closes, over the newer run's). In a full report (`report_mode`) progress goes to the
    terminal. Returns (model, metrics, status, error message): status "finished", "cancelled", "interrupted"
    or "failed".
    """
    import marimo as mo
    import polars as pl

    from .train import TrainingDiverged

    thread = mo.current_thread()
    rows, last_draw = [], [0.0]
    cancel = LiveStop(stop, thread)
    to_terminal = report_mode() == "full"
    mo.output.replace(mo.md(progress_line(0, run.fit.steps)))

    def draw(row):
        rows.append(row)
        if to_terminal and "eval_s" in row:
            print(f"[train] step {row['step']}/{run.fit.steps} loss {row['loss']:.3f}", file=sys.__stderr__, flush=True)
        if thread.should_exit or ("eval_s" not in row and row["time_s"] - last_draw[0] < 0.5):
            return False
        last_draw[0] = row["time_s"]
        mo.output.replace_at_index(mo.md(progress_line(row["step"], run.fit.steps, row["loss"])), 0)
        mo.output.replace_at_index(learning_curves(pl.from_dicts(rows), "learning live"), output_index)
        return False

    model, error = None, None
    try:
        model, metrics = run.train(out_dir=out_dir, callbacks=[draw], cancel=cancel)
    except (ValueError, TrainingDiverged) as err:
        metrics, error = (pl.from_dicts(rows) if rows else None), str(err)
    status = "failed" if error else "finished" if cancel.reason is None else cancel.reason.split(":")[0]
    return model, metrics, status, error


def progress_line(step, steps, loss=None, width=30):
    """A live run's progress as one markdown line: a bar, "step 120/600" and the last training loss."""
    done = round(width * step / steps)
    loss = "" if loss is None else f" · loss {loss:.3f}"
    return f"`{'█' * done}{'░' * (width - done)}` training: step {step}/{steps}{loss}"


def live_run_dir(root, name):
    """A new directory, created here, under `root` for a live run of `name`: root/YYYYmmdd-HHMMSS-name (-2, -3, ...
    when another run took it first)."""
    import time
    from pathlib import Path

    stem = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ValueError(f"root={str(root)!r}: no free run directory for {name!r} this second")


def start_thread(target, *args, wait):
    """Run `target(*args)` in a marimo thread (the kernel stays free for clicks, e.g. Cancel); `wait`: join it, as
    a script or a static report must, so the cells below see its result. Pass what the thread needs as `args`: a
    cell's private names (_x) are gone once the cell runs again."""
    import marimo as mo

    thread = mo.Thread(target=target, args=args, daemon=True)
    thread.start()
    if wait:
        thread.join()
    return thread
