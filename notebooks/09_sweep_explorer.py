import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite: sweep explorer")

with app.setup(hide_code=True):
    import tempfile
    from pathlib import Path

    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import miras_lite as ml
    from miras_lite.sweeps import load_sweep, prepare, read_trials, run_sweep, work
    from miras_lite.sweeps.export import parameter_columns
    from miras_lite.ui import quick_mode

    QUICK = quick_mode()
    ROOT = Path(ml.__file__).resolve().parents[1]
    SMALL_SWEEP = ROOT / "sweeps" / "mqar_small.toml"


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # Exploring a sweep

    A **sweep** trains many small models on MQAR (multi-query associative recall), one per point of a
    grid or a random draw over the Miras axes — attentional bias, retention gate, memory, optimiser —
    their hyperparameters and seeds, and records each trial in an Optuna study:

    ```sh
    python -m miras_lite sweep sweeps/mqar_axes.toml --workers 2     # writes runs/sweeps/mqar_axes.parquet
    ```

    Every trial is scored by its **recall curve** $\mathrm{acc}(D)$, the held-out accuracy with $D$
    key-value pairs in the context, and by its mean over the evaluated pair counts $P$:

    $$\text{recall} = \frac{1}{|P|} \sum_{D \in P} \mathrm{acc}(D).$$

    **What you will learn:** how to read a sweep across several axes at once (facets), how to find the
    configurations that are both accurate and cheap (brushing), how the hyperparameters of the best
    trials line up (parallel coordinates), and how a sweep runs, resumes and records failures.
    """)
    return


@app.cell
def _():
    source = mo.ui.text(value="runs/sweeps/mqar_axes.parquet", label="trials (parquet file or storage URL)",
                        full_width=True)
    sweep_file = mo.ui.text(value="sweeps/mqar_axes.toml", label="sweep file (for a storage URL)", full_width=True)
    launch = mo.ui.run_button(label="Run the small sweep (4 trials, 2 workers)")
    return launch, source, sweep_file


@app.cell(hide_code=True)
def _(launch, source, sweep_file):
    mo.vstack([
        mo.md("## The trials\n\nOpen a sweep's parquet file or its study, or launch the small sweep "
              "(`sweeps/mqar_small.toml`) here."),
        source, sweep_file, launch,
    ])
    return


@app.cell
def _(launch):
    # The small sweep, once the button is pressed: 2 worker processes and a progress bar. As a script
    # (quick mode) the same trials run in this process: starting workers costs more than these trials.
    launched = None
    if launch.value or QUICK:
        small = load_sweep(SMALL_SWEEP)
        storage = f"sqlite:///{Path(tempfile.mkdtemp(prefix='sweep-explorer-')) / 'small.sqlite3'}"
        if QUICK:
            prepare(small, storage)
            work(small, storage)
            launched = read_trials(storage, small)
        else:
            with mo.status.progress_bar(total=small.n_trials, title="small sweep", subtitle="starting workers") as bar:
                def on_progress(done, total):
                    bar.update(increment=done - bar.current, subtitle=f"{done}/{total} trials finished")

                launched = run_sweep(small, storage, workers=2, on_progress=on_progress)
    return (launched,)


@app.function
def open_trials(text, sweep_path):
    """The trials frame of a parquet file or of a study (a storage URL; the sweep file names the study);
    None when the file does not exist yet."""
    text = text.strip()
    if text.startswith(("sqlite:", "postgresql")):
        return read_trials(text, load_sweep(ROOT / sweep_path))
    path = Path(text) if Path(text).is_absolute() else ROOT / text
    return pl.read_parquet(path) if path.exists() else None


@app.cell
def _(launched, source, sweep_file):
    trials = launched if launched is not None else open_trials(source.value, sweep_file.value)
    mo.stop(trials is None, mo.callout(mo.md(
        f"`{source.value}` does not exist yet: run `python -m miras_lite sweep sweeps/mqar_axes.toml --workers 2`, "
        "or press **Run the small sweep**."), kind="info"))
    complete = trials.filter(pl.col("status") == "complete")
    # the axes that vary in this sweep (the seed is averaged over, never an axis)
    axes = [c for c in dict.fromkeys(("memory", "bias", "retention", "optimizer", "preset", *parameter_columns(trials)))
            if c in trials.columns and c != "seed" and trials[c].n_unique() > 1]
    return axes, complete, trials


@app.cell(hide_code=True)
def _(trials):
    _counts = trials.group_by("status").len().sort("status")
    _failed = trials.filter(pl.col("status") != "complete").select("trial", "status", "reason")
    mo.vstack([
        mo.md(f"**{trials.height} trials**: " + ", ".join(f"{n} {s}" for s, n in _counts.iter_rows())
              + ". A diverged trial keeps the message of `ml.TrainingDiverged`; a trial whose worker was "
              "killed is marked failed and queued again, so a re-run finishes it."),
        mo.ui.table(_failed, selection=None, show_download=False) if _failed.height else mo.md(""),
    ])
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Recall against the number of pairs

    One panel per pair of axes, one line per value of a third; each point is $\mathrm{acc}(D)$ averaged
    over the seeds. The dashed line is chance, $1 / (V/2)$: a guess among the $V/2$ value tokens.
    """)
    return


@app.cell
def _(axes):
    def pick(preferred, taken):
        free = [a for a in axes if a not in taken]
        return next((a for a in preferred if a in free), free[0] if free else None)

    _row = pick(["bias"], [])
    _column = pick(["retention"], [_row])
    _color = pick(["memory", "optimizer"], [_row, _column])
    facet_row = mo.ui.dropdown(options=axes, value=_row, label="rows")
    facet_column = mo.ui.dropdown(options=axes, value=_column, label="columns")
    color_by = mo.ui.dropdown(options=axes, value=_color, label="lines")
    mo.hstack([facet_row, facet_column, color_by], justify="start")
    return color_by, facet_column, facet_row


@app.cell(hide_code=True)
def _(color_by, complete, facet_column, facet_row, trials):
    _by = [a.value for a in (facet_row, facet_column, color_by) if a.value is not None]
    _curves = (complete.select("trial", *_by, "accuracy_by_pairs").explode("accuracy_by_pairs")
               .unnest("accuracy_by_pairs")
               .group_by(*_by, "num_kv_pairs").agg(pl.col("accuracy").mean(), pl.len().alias("seeds"))
               .sort("num_kv_pairs"))
    _chance = 2 / json_setting(trials, "task", "vocab_size")
    _lines = alt.Chart().mark_line(point=True).encode(
        x=alt.X("num_kv_pairs:Q", title="key-value pairs D"),
        y=alt.Y("accuracy:Q", title="acc(D)", scale=alt.Scale(domainMin=0)),
        color=alt.Color(f"{color_by.value}:N") if color_by.value else alt.value("steelblue"),
        tooltip=[*_by, "num_kv_pairs:Q", alt.Tooltip("accuracy:Q", format=".3f"), "seeds:Q"],
    )
    _rule = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(_chance))
    _facets = {k: alt.Facet(f"{a.value}:N") for k, a in (("row", facet_row), ("column", facet_column)) if a.value}
    alt.layer(_lines, _rule, data=_curves).properties(width=180, height=130).facet(**_facets)
    return


@app.function
def json_setting(frame, section, key):
    """A setting of the sweep's first trial (from the `settings` JSON column)."""
    import json

    return json.loads(frame.filter(pl.col("settings").is_not_null())["settings"][0])[section][key]



@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Accurate and cheap: brush to pick

    Each point is a finished trial: its wall-clock duration against its recall. **Drag a rectangle** over
    the points you care about; the table below lists the best configurations among them (all trials
    when nothing is selected), and the parallel coordinates further down highlight them.
    """)
    return


@app.cell
def _(color_by, complete, trials):
    _brush = alt.selection_interval(encodings=["x", "y"])
    _points = complete.drop("accuracy_by_pairs", "loss_curve", "settings", "reason")
    _tips = [c for c in _points.columns if c not in ("retry_of", "status", "train_s")]
    _color = alt.Color(f"{color_by.value}:N") if color_by.value else alt.value("steelblue")
    scatter = mo.ui.altair_chart(
        alt.Chart(_points).mark_circle(size=70).encode(
            x=alt.X("duration_s:Q", title="trial duration (s)", scale=alt.Scale(zero=False)),
            y=alt.Y("recall:Q", title="recall (mean acc over D)"),
            color=alt.condition(_brush, _color, alt.value("lightgray")),
            tooltip=_tips,
        ).add_params(_brush).properties(width=560, height=260,
                                        title=f"{complete.height} of {trials.height} trials finished")
    )
    scatter
    return (scatter,)


@app.cell
def _(axes, complete, scatter):
    _picked = scatter.value if len(scatter.value) else complete
    best = pl.DataFrame(_picked).sort("recall", descending=True)
    _columns = ["trial", *axes, *[c for c in ("seed",) if c in best.columns], "recall", "final_loss", "duration_s"]
    mo.vstack([
        mo.md(f"**Best configurations** ({best.height} {'selected' if len(scatter.value) else ''} trials, by recall)"),
        mo.ui.table(best.select(_columns).with_columns(pl.col("recall", "final_loss", "duration_s").round(3)),
                    selection=None, show_download=False, page_size=8),
    ])
    return (best,)


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Parallel coordinates

    One line per finished trial across the swept axes and the outcomes. Categories are spread evenly
    on their axis, numbers are scaled from their minimum (bottom) to their maximum (top); hover a line
    for its values. Coloured lines are the brushed trials, by recall.
    """)
    return


@app.function
def parallel_coordinates(frame, dimensions):
    """Long form for a parallel-coordinates chart: one row per (trial, dimension) with ``position`` in
    [0, 1] (categories evenly spaced in sorted order; numbers min-max scaled) and the raw ``value``."""
    parts = []
    for order, name in enumerate(dimensions):
        column = frame[name]
        if column.dtype.is_numeric():
            low, high = column.min(), column.max()
            position = (column - low) / (high - low) if high > low else column * 0 + 0.5
        else:
            levels = sorted(column.cast(pl.String).unique().to_list())
            rank = column.cast(pl.String).replace_strict({v: i for i, v in enumerate(levels)}, return_dtype=pl.Float64)
            position = rank / max(len(levels) - 1, 1)
        parts.append(pl.DataFrame({"trial": frame["trial"], "dimension": name, "order": order,
                                   "position": position.cast(pl.Float64), "value": column.cast(pl.String),
                                   "recall": frame["recall"]}))
    return pl.concat(parts)


@app.cell(hide_code=True)
def _(axes, best, complete):
    _dims = [*axes, "recall", "final_loss", "duration_s"]
    _long = parallel_coordinates(complete, _dims).with_columns(
        pl.col("trial").is_in(best["trial"].implode()).alias("picked"))
    _base = alt.Chart(_long).encode(
        x=alt.X("dimension:N", sort=_dims, title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("position:Q", axis=None),
        detail="trial:N",
        tooltip=["trial:Q", "dimension:N", "value:N", alt.Tooltip("recall:Q", format=".3f")],
    )
    _lines = _base.mark_line(strokeWidth=1.5).encode(
        color=alt.condition("datum.picked", alt.Color("recall:Q", scale=alt.Scale(scheme="viridis")),
                            alt.value("#dddddd")),
        opacity=alt.condition("datum.picked", alt.value(0.9), alt.value(0.4)),
    )
    _labels = alt.Chart(_long.unique(["dimension", "value"]).filter(pl.col("dimension").is_in(axes))).mark_text(
        align="left", dx=4, fontSize=10).encode(x=alt.X("dimension:N", sort=_dims), y="position:Q", text="value:N")
    alt.layer(_lines, _base.mark_circle(size=14, color="gray"), _labels).properties(width=620, height=260)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Try this

    - **Resume.** Run `python -m miras_lite sweep sweeps/mqar_small.toml` twice: the second run queues
      nothing, because every planned configuration already has a finished trial in
      `runs/sweeps/mqar_small.sqlite3`. Then open `runs/sweeps/mqar_small.parquet` above.
    - **Shared study.** Start `python -m miras_lite sweep SWEEP.toml --storage postgresql://...` on one
      machine and `... --worker --storage postgresql://...` on others: all of them take trials from one queue.
    - **Kill a worker** (`kill -9`) in the middle of a trial and run the sweep again after `grace_period`
      seconds: the lost trial is marked failed, queued again with the same parameters, and finished.
    - **Where do the axes matter?** Switch the panels to `optimizer` × `retention`: does momentum help
      at more pairs $D$? Brush the top of the scatter: which bias is left in the table?
    """)
    return


if __name__ == "__main__":
    app.run()
