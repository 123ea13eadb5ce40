"""09 · Sweep explorer

Many small models trained on associative recall, one per point of the design space: which axes matter, and do two seeds agree?
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite: sweep explorer")

with app.setup(hide_code=True):
    import json
    import sys
    from pathlib import Path

    import altair as alt
    import marimo as mo
    import polars as pl

    import miras_lite as ml
    from miras_lite.sweeps import load_sweep, prepare, read_trials, run_sweep
    from miras_lite.sweeps.export import seed_agreement, swept_axes
    from miras_lite.sweeps.storage import redact_url
    from miras_lite.ui import course_link, report_mode, runs_root, script_print

    REPORT = report_mode()
    ROOT = Path(ml.__file__).resolve().parents[1]
    SWEEP_FILES = {p.name: p for p in sorted((ROOT / "sweeps").glob("*.toml"))}
    SMALL_SWEEP = "mqar_small.toml"  # what the button offers first, and what a full report runs
    SHIPPED = ROOT / "data" / "sweeps"  # results shipped with the project (data/sweeps/README.md: how to rebuild)
    WORKERS = 2


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


@app.function
def sweep_outputs(name):
    """Where a sweep run from this page keeps its study and its results, as the sweep command does (under runs/,
    or MIRAS_LITE_RUNS): (storage URL, parquet path)."""
    folder = runs_root() / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / name}.sqlite3", folder / f"{name}.parquet"


@app.function
def run_here(path):
    """Run the sweep file `path` as `python -m miras_lite sweep PATH --workers 2` does (same study, same parquet,
    so a second run resumes), with a progress bar -> dict(out: the parquet path, storage, queued: the trials that
    ran now, planned: the configurations of the file)."""
    sweep = load_sweep(path)
    storage, out = sweep_outputs(sweep.name)
    _, queued = prepare(sweep, storage)
    with mo.status.progress_bar(total=sweep.n_trials, title=f"sweep {sweep.name}", subtitle="starting workers") as bar:
        def on_progress(done, total):
            bar.update(increment=done - bar.current, subtitle=f"{done}/{total} trials finished")
            if REPORT == "full":
                print(f"[09 sweep] {sweep.name}: {done}/{total} trials finished", file=sys.__stderr__, flush=True)

        run_sweep(sweep, storage, workers=WORKERS, out=out, on_progress=on_progress)
    return dict(out=out, storage=storage, queued=queued, planned=sweep.n_trials)


@app.cell
def _():
    # the sweep file the button runs (it also names the study of a storage URL below)
    sweep_file = mo.ui.dropdown(options=list(SWEEP_FILES), value=SMALL_SWEEP, label="sweep file")
    return (sweep_file,)


@app.cell
def _(sweep_file):
    _planned = load_sweep(SWEEP_FILES[sweep_file.value]).n_trials
    launch = mo.ui.run_button(label=f"Run sweeps/{sweep_file.value} ({_planned} trials, {WORKERS} workers)")
    # only controls that describe what the page shows are shown
    if REPORT == "shipped":
        _controls = mo.md("_This page is a report: no sweep ran for it; it shows the results chosen below. Open "
                          "the notebook in the app (`make app`) to run a sweep._")
    elif REPORT == "full":
        _controls = mo.md(f"_This report ran `sweeps/{sweep_file.value}` ({_planned} trials, {WORKERS} workers) "
                          "and shows its results._")
    else:
        _controls = mo.vstack([
            mo.md(f"Run a sweep file here, as `python -m miras_lite sweep sweeps/{sweep_file.value} --workers "
                  f"{WORKERS}` would: its results go to `{runs_root()}/sweeps/`, and a second run resumes (it skips "
                  "the finished configurations). `mqar_small.toml` takes a minute or two on two cores."),
            mo.hstack([sweep_file, launch], justify="start"),
        ])
    mo.vstack([mo.md("## The trials"), _controls])
    return (launch,)


@app.cell
def _(launch, sweep_file):
    # a sweep runs only when the button is pressed (or in a full report, which waits for it)
    launched = None
    if launch.value or REPORT == "full":
        launched = run_here(SWEEP_FILES[sweep_file.value])
    return (launched,)


@app.function
def result_files():
    """The results this page can show, by label: the parquet files of earlier sweeps (newest first), then the
    results shipped with the project."""
    folder = runs_root() / "sweeps"
    saved = sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    shipped = sorted(SHIPPED.glob("*.parquet"))
    return {**{str(p): p for p in saved}, **{f"data/sweeps/{p.name} (shipped)": p for p in shipped}}


@app.cell
def _(launched):
    result_paths = result_files()
    _ran = next((label for label, p in result_paths.items() if launched and p == launched["out"]), None)
    results = mo.ui.dropdown(options=list(result_paths), value=_ran or next(iter(result_paths), None),
                             label="results")
    study_url = mo.ui.text(placeholder="postgresql://user@host/db", full_width=True,
                           label="or a running study: its storage URL (the sweep file above names the study)")
    if launched is None:
        _note = mo.md("")
    elif launched["queued"]:
        _note = mo.md(f"**The sweep finished:** {launched['queued']} of its {launched['planned']} configurations "
                      f"ran now; its results: `{launched['out']}`.")
    else:
        _note = mo.md(f"**Nothing ran:** each of the {launched['planned']} configurations already had a finished "
                      f"trial in `{launched['storage']}` (delete it and `{launched['out']}` to start over).")
    mo.vstack([_note, results] if REPORT else [_note, results, study_url])
    return result_paths, results, study_url


@app.cell
def _(result_paths, results, study_url, sweep_file):
    _url = study_url.value.strip()
    if _url:
        _sweep = load_sweep(SWEEP_FILES[sweep_file.value])
        trials, shown = read_trials(_url, _sweep), f"the study `{_sweep.name}` in `{redact_url(_url)}`"
    else:
        mo.stop(results.value is None, mo.callout(mo.md(
            "No results yet: press **Run** above, or run `python -m miras_lite sweep sweeps/mqar_axes.toml "
            "--workers 2`."), kind="info"))
        trials, shown = pl.read_parquet(result_paths[results.value]), f"`{results.value}`"
    mo.stop(trials.height == 0, mo.callout(mo.md(f"{shown} holds no trials yet."), kind="info"))
    complete = trials.filter(pl.col("status") == "complete")
    axes = swept_axes(trials)  # the axes that vary in this sweep (the seed is averaged over, never an axis)
    return axes, complete, shown, trials


@app.cell(hide_code=True)
def _(axes, complete, shown, trials):
    _counts = ", ".join(f"{n} {s}" for s, n in trials.group_by("status").len().sort("status").iter_rows())
    _failed = trials.filter(pl.col("status") != "complete").select("trial", "status", "reason")
    _table, _rho = seed_agreement(trials)
    _best, _recall = (_table, "mean") if _rho else (complete.sort("recall", descending=True), "recall")
    _seeds = [c for c in _table.columns if c.startswith("recall seed=")] if _rho else []
    script_print(f"sweep results: {shown.replace('`', '')}, {trials.height} trials ({_counts})",
                 f"best configurations (recall{', mean over ' + str(len(_seeds)) + ' seeds' if _rho else ''}):",
                 *(" ".join(f"{a}={row[a]}" for a in axes) + f": {row[_recall]:.3f}"
                   + (" (" + ", ".join(f"{c.removeprefix('recall ')} {row[c]:.3f}" for c in _seeds) + ")" if _rho else "")
                   for row in _best.head(5).iter_rows(named=True)),
                 *([f"Spearman rank correlation between seeds: {r:.2f}" for r in _rho.values()]))
    _agreement = [
        mo.md("**Do the seeds agree?** Each configuration's recall per seed; where two seeds of one configuration "
              "disagree, its budget ends near the step where the model starts to learn, and the ranking is luck. "
              "Spearman's rank correlation between the seeds' columns: "
              + ", ".join(f"seeds {a} and {b}: **{r:.2f}**" for (a, b), r in _rho.items()) + " (1: the same order)."),
        mo.ui.table(_table.with_columns(pl.selectors.float().round(3)), selection=None, show_download=False,
                    page_size=12),
    ] if _rho else []
    mo.vstack([
        mo.md(f"Shown: {shown}. **{trials.height} trials**: {_counts}. A diverged trial keeps the message of "
              "`ml.TrainingDiverged`; a trial whose worker was killed is marked failed and queued again, so a "
              "re-run finishes it."),
        mo.ui.table(_failed, selection=None, show_download=False) if _failed.height else mo.md(""),
        *_agreement,
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
        y=alt.Y("accuracy:Q", title="acc(D)", scale=alt.Scale(domain=[0, 1])),
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
    _tips = [c for c in _points.columns if c not in ("retry_of", "status", "train_s", "run_dir")]
    _color = alt.Color(f"{color_by.value}:N") if color_by.value else alt.value("steelblue")
    scatter = mo.ui.altair_chart(
        alt.Chart(_points).mark_circle(size=70).encode(
            x=alt.X("duration_s:Q", title="trial duration (s)", scale=alt.Scale(zero=False)),
            y=alt.Y("recall:Q", title="recall (mean acc over D)", scale=alt.Scale(domain=[0, 1])),
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
    _columns = ["trial", *axes, *[c for c in ("seed",) if c in best.columns], "recall", "final_loss", "duration_s",
                *[c for c in ("run_dir",) if c in best.columns]]
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
      `runs/sweeps/mqar_small.sqlite3`. Then pick `runs/sweeps/mqar_small.parquet` above.
    - **Load a trial's model.** Every trial trains into its own run directory (the `run_dir` column of the
      table above, e.g. `runs/sweeps/mqar_small/trial-0`). The playground (`06_playground.py`) lists it among
      its saved runs, next to the runs you train there.
    - **Shared study.** Start `python -m miras_lite sweep SWEEP.toml --storage postgresql://...` on one
      machine and `... --worker --storage postgresql://...` on others: all of them take trials from one queue.
    - **Kill a worker** (`kill -9`) in the middle of a trial and run the sweep again after `grace_period`
      seconds: the lost trial is marked failed, queued again with the same parameters, and finished.
    - **Where do the axes matter?** Switch the panels to `optimizer` × `retention`: does momentum help
      at more pairs $D$? Brush the top of the scatter: which bias is left in the table?
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("10_claims.py")
    mo.md(f"**Next:** [10 · Do the papers' claims hold here?]({_next}): claims of the Titans and Miras papers "
          "retested with small models, three seeds each, and a verdict per claim.")
    return


if __name__ == "__main__":
    app.run()
