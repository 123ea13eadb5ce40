"""06 · Training playground

Pick a preset or the four axes, train a small model on associative recall, and look inside it: recall curves, gates and the memory itself.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite: training playground")

with app.setup(hide_code=True):
    import dataclasses
    import threading

    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import miras_lite as ml
    from miras_lite.config import FitConfig, LMConfig, MirasLMConfig, MQARConfig, RunConfig
    from miras_lite.presets import Recommended
    from miras_lite.runs import SHIPPED, find_runs, load_run
    from miras_lite.tasks.mqar import MQAR, accuracy_by_distance, accuracy_by_pairs
    from miras_lite.memory import branch_read, fittable_value
    from miras_lite.ui import (accuracy_axis, axis_dropdowns, block_average, chance_rule, chosen_spec, course_link,
                               held_out_metric, learning_curves, legend_pick, live_run_dir, quick_mode, report_mode,
                               runs_root, script_print, start_thread, train_live)

    TASKS = ("MQAR", "language model (characters)")


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # Training playground

    Pick a point of the design space (memory, attentional bias, retention, inner optimiser — or a named
    preset), a task and a model size, press **Train**, and watch a small `MirasLM` learn while the loss
    and the held-out accuracy are drawn. Every run is saved (under `runs/playground/`, also when you cancel
    it), so you can compare models side by side, now or after a reload.

    **What you will learn**

    - how fast (in steps and in seconds) different memories learn *multi-query associative recall* (MQAR),
      the task that separates models that can look things up in their context from those that cannot;
    - how recall depends on the **number of pairs** to remember and on the **distance** between a key and
      its query;
    - what the learned gates do on one sequence: the inner learning rate $\eta_t$ (how hard token $t$ is
      written) and the retention $\alpha_t$ (how much of the past survives it);
    - what the memory $W_t$ of a trained layer looks like as it fills up.
    """)
    return


@app.cell
def _():
    # Here, not in the setup cell: a script's run mode is only known inside a cell.
    QUICK = quick_mode()
    REPORT = report_mode()
    return QUICK, REPORT


@app.cell
def _():
    preset_choice = mo.ui.dropdown(
        options=[*ml.PRESETS, "custom"], value="gated_deltanet", label="preset"
    )
    task_choice = mo.ui.dropdown(options=list(TASKS), value="MQAR", label="task")
    vocab = mo.ui.slider(32, 256, step=32, value=64, label="vocabulary V", show_value=True)
    seq_len = mo.ui.slider(16, 128, step=16, value=32, label="length L", show_value=True)
    d_model = mo.ui.slider(32, 128, step=32, value=64, label="d_model", show_value=True)
    layers = mo.ui.slider(1, 4, step=1, value=2, label="layers", show_value=True)
    heads = mo.ui.dropdown(options=["1", "2", "4"], value="1", label="heads")
    batch = mo.ui.slider(4, 64, step=4, value=16, label="batch", show_value=True)
    train_button = mo.ui.run_button(label="Train", kind="success")
    # A run trains in a background thread, so the kernel is free to handle this click while it runs.
    stop_requested = threading.Event()
    cancel_button = mo.ui.button(label="Cancel", kind="danger", on_change=lambda _: stop_requested.set())
    return (
        batch, cancel_button, d_model, heads, layers, preset_choice, seq_len, stop_requested, task_choice,
        train_button, vocab,
    )


@app.cell
def _(seq_len, vocab):
    # D pairs take 2D tokens and their D queries need room after them: L >= 4D (and D < V/2 distinct keys)
    _most = max(1, min(seq_len.value // 4, vocab.value // 2 - 1))
    pairs = mo.ui.slider(1, _most, step=1, value=min(4, _most), label=f"pairs D (MQAR, at most L/4 = {_most})",
                         show_value=True)
    return (pairs,)


@app.cell
def _(preset_choice):
    # Picking a preset resets the four axes to that model (change any axis to leave it) and the training
    # controls to the settings that train it (`Preset.recommended`).
    base, memory, bias, retention, optimizer, grad_at = axis_dropdowns(preset_choice.value)
    recommended = ml.named_preset(preset_choice.value).recommended if preset_choice.value in ml.PRESETS else Recommended()
    steps = mo.ui.slider(50, 2000, step=50, value=recommended.steps, label="steps", show_value=True)
    _rates = sorted({0.003, 0.01, 0.03, recommended.lr})
    lr = mo.ui.dropdown(options=[f"{r:g}" for r in _rates], value=f"{recommended.lr:g}", label="learning rate")
    return base, bias, grad_at, lr, memory, optimizer, recommended, retention, steps


@app.function
def inner_loop_note(recommended, spec_name, preset_name):
    """One line on the model the run will train and its inner loop (the preset's recommendation, or the layer's
    defaults)."""
    chunk = {"auto": "the layer's default", None: "none (the exact recurrence)"}.get(recommended.chunk_size,
                                                                                    recommended.chunk_size)
    eta = "the layer's default" if recommended.eta_max is None else f"{recommended.eta_max:g}"
    changed = (f" The axes no longer match `{preset_name}`: this trains a custom spec."
               if spec_name == "custom" and preset_name != "custom" else "")
    return f"_Model: {spec_name}, inner loop with chunk size {chunk}, η_max {eta}._{changed}"


@app.cell(hide_code=True)
def _(
    REPORT, batch, bias, cancel_button, d_model, grad_at, heads, layers, lr, memory, optimizer, pairs,
    preset_choice, recommended, retention, seq_len, spec_name, steps, task_choice, train_button, vocab,
):
    # a report that trains nothing shows no controls: their values would describe no run on the page
    mo.md(
        "_This page is a report: it shows the trained models the project ships and the runs saved under "
        "`runs/`, with the settings each was trained with in the table below. Open the notebook in the app "
        "(`make app`) to train your own._"
    ) if REPORT == "shipped" else mo.vstack(
        [
            mo.md("**Model**"),
            mo.hstack([preset_choice, memory, bias, retention, optimizer, grad_at], justify="start", wrap=True),
            mo.hstack([d_model, layers, heads], justify="start", wrap=True),
            mo.md("**Task**"),
            mo.hstack([task_choice, vocab, seq_len, pairs], justify="start", wrap=True),
            mo.md("**Training**"),
            mo.hstack([steps, batch, lr], justify="start", wrap=True),
            mo.md(inner_loop_note(recommended, spec_name, preset_choice.value)),
            mo.hstack([train_button, cancel_button], justify="start"),
        ]
    )
    return


@app.cell
def _(base, bias, grad_at, memory, optimizer, preset_choice, retention):
    # The preset's extra parameters (p, q, δ, ...) with the four axes you chose.
    spec, spec_error = chosen_spec(base, memory, bias, retention, optimizer, grad_at)
    # An unchanged preset goes to MirasLM by name: "retnet" then gets its constant per-head α.
    model_spec = preset_choice.value if spec is not None and spec == ml.PRESETS.get(preset_choice.value) else spec
    spec_name = model_spec if isinstance(model_spec, str) else "custom"
    return model_spec, spec, spec_error, spec_name


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Train

    **MQAR** (Zoology format): an example of length $L$ starts with $D$ key-value pairs
    $k_1 v_1 \dots k_D v_D$ over a vocabulary of $V$ tokens, followed by random filler in which every
    key comes back once; at a query the model must output its value. Values are drawn from $V/2$
    tokens, so guessing scores $2/V$. The **language model** task predicts the next character of a small
    generated corpus; its held-out score is in bits per character (lower is better).

    The model is `ml.MirasLM`: an embedding, `layers` pre-norm blocks whose token mixer is a
    `MirasLayer` with your spec, and a tied output head; each layer computes per token
    $q_t, k_t, v_t$ and the gates $\eta_t = \eta_{\max}\,\sigma(w_\eta^\top x_t)$ and
    $\alpha_t = \sigma(w_\alpha^\top x_t)$, then runs the memory. `ml.fit` trains it with AdamW (warmup,
    cosine schedule, gradient clipping) on the cross-entropy at the labelled positions.
    The run trains in a background thread: the chart below is redrawn while it learns, **Cancel**
    stops it after the current step. Changing a control or pressing **Train** again stops it too; the
    stopped run is kept (marked *interrupted*) with everything it learned so far.
    """)
    return


@app.function
def playground_run(config, spec, quick, recommended):
    """The `RunConfig` the controls describe: MQAR(V, L, D) or character-level language modelling with windows
    of L, a MirasLM with the recommended inner loop (chunk size, η_max), AdamW with a short warmup and 20
    evaluations."""
    if config["task"] == "MQAR":
        task = MQARConfig(vocab_size=config["V"], seq_len=config["L"], num_kv_pairs=config["D"], train_examples=4096,
                          test_examples=64 if quick else 256)
    else:
        task = LMConfig(level="char", seq_len=config["L"])
    steps = config["steps"]
    model = MirasLMConfig(d_model=config["d_model"], n_layers=config["layers"], num_heads=config["heads"],
                          chunk_size=recommended.chunk_size, eta_max=recommended.eta_max)
    return RunConfig(task=task, model=model,
                     spec=spec if isinstance(spec, str) else dataclasses.asdict(spec),
                     fit=FitConfig(steps=steps, batch_size=config["batch"], lr=config["lr"],
                                   warmup=min(50, steps // 10), eval_every=max(1, steps // 20)))


@app.function
def train_and_keep(run, out, config, name, stop, set_runs):
    """Train `run` live into the calling cell's output (in a thread), save it in `out`, and add it to the page's
    runs (also when a control change interrupted it: then a newer run owns the output and nothing is drawn)."""
    model, metrics, status, error = train_live(run, stop, out)
    if metrics is not None and metrics.height:
        set_runs(lambda runs: [*runs, dict(
            name=f"#{sum(r['status'] != 'shipped' for r in runs) + 1} {name}", model=model.eval(), config=config,
            run_config=run, metrics=metrics, status=status, path=out,
        )])
    if mo.current_thread().should_exit:
        return
    failure = [mo.callout(mo.md(f"**The run failed:** {error}"), kind="danger")] if error else []
    if metrics is None or metrics.height == 0:
        mo.output.replace(mo.vstack(failure))
        return
    steps = f"{metrics['step'][-1]} of {run.fit.steps} steps"
    curves = learning_curves(metrics, f"{name}: {status} after {steps}")
    note = mo.md(f"**{name}: {status} after {steps}**, saved in `{out}`")
    mo.output.replace(mo.vstack([note, curves, *failure]))
    column = held_out_metric(metrics)
    held_out = metrics[column].drop_nulls() if column in metrics.columns else []
    score = f": held-out {column.removeprefix('eval_')} {held_out[-1]:.3f}" if len(held_out) else ""
    script_print(f"trained {name} on {config['task']}, {status} after {steps}{score}", f"saved in {out}")


@app.cell
def _(
    QUICK, REPORT, batch, d_model, heads, layers, lr, model_spec, pairs, recommended, seq_len, set_runs, spec,
    spec_error, spec_name, steps, stop_requested, task_choice, train_button, vocab,
):
    mo.stop(spec is None, mo.callout(mo.md(f"**Not a valid model:** {spec_error}"), kind="danger"))
    mo.stop(REPORT == "shipped", None)
    mo.stop(not (train_button.value or QUICK or REPORT), mo.md("Press **Train** to start a run."))
    stop_requested.clear()
    _config = dict(
        task=task_choice.value, V=vocab.value, L=seq_len.value, D=pairs.value, d_model=d_model.value,
        layers=layers.value, heads=int(heads.value), steps=8 if QUICK else steps.value, batch=batch.value,
        lr=float(lr.value),
    )
    try:
        _run = playground_run(_config, model_spec, QUICK, recommended)
        # a quick run (a script's 8 steps) is kept apart, so that it is never picked as a result
        _out = live_run_dir(runs_root() / ("quick" if QUICK else "playground"), spec_name)
    except ValueError as _err:
        mo.stop(True, mo.callout(mo.md(f"**Cannot build this run:** {_err}"), kind="danger"))

    # a script or a report waits: the cells below show the run
    start_thread(train_and_keep, _run, _out, _config, spec_name, stop_requested, set_runs,
                 wait=QUICK or REPORT == "full")
    return


@app.function
def page_run(path, name):
    """The run directory `path` (a MirasLM trained on MQAR or characters) as a run of this page, or None for other
    runs (ARMT, BABILong)."""
    run = load_run(path)
    task, model, fit = run.config.task, run.config.model, run.config.fit
    if model.name != "miras_lm" or task.name not in ("mqar", "lm"):
        return None
    config = dict(task="MQAR" if task.name == "mqar" else TASKS[1], V=getattr(task, "vocab_size", None),
                  L=task.seq_len, D=getattr(task, "num_kv_pairs", None), d_model=model.d_model,
                  layers=model.n_layers, heads=model.num_heads, steps=fit.steps, batch=fit.batch_size, lr=fit.lr)
    status = "finished" if run.stopped is None else run.stopped.split(":")[0]
    return dict(name=name, model=run.model, config=config, run_config=run.config, metrics=run.metrics,
                status=status, path=path)


@app.function
def shipped_runs():
    """The trained models shipped in data/models/ (rebuilt by data/models/build.py), as runs of this page."""
    runs = [page_run(path, f"trained {path.name}") for path in find_runs(SHIPPED)]
    return [dict(r, status="shipped") for r in runs if r is not None]


@app.cell
def _():
    # the page starts with the trained models the project ships; every run you train joins them
    get_runs, set_runs = mo.state(shipped_runs())
    return get_runs, set_runs


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Saved runs

    Every run trained here is saved under `runs/playground/`, and so are runs of the command line
    (`python -m miras_lite train ... --out runs/NAME`) and of sweeps (`runs/sweeps/`); the 8-step runs of
    `python notebooks/06_playground.py` go to `runs/quick/`. Pick saved runs to
    compare them with this session's runs and the shipped models. The newest runs of this page are picked
    when it opens, so a reload loses nothing.
    """)
    return


@app.cell
def _():
    _root = runs_root()
    saved_paths = {str(p.relative_to(_root)): p for p in reversed(find_runs(_root))}  # newest names first
    _recent = [name for name in saved_paths if name.startswith("playground/")][:4]
    saved_choice = mo.ui.multiselect(options=list(saved_paths), value=_recent, label=f"saved runs in {_root}/")
    saved_choice if saved_paths else mo.md(f"_No saved runs in `{_root}/` yet._")
    return saved_choice, saved_paths


@app.cell
def _(get_runs, saved_choice, saved_paths):
    _live = {r["path"] for r in get_runs() if r.get("path") is not None}
    _saved = [page_run(saved_paths[name], name) for name in saved_choice.value if saved_paths[name] not in _live]
    runs = [*get_runs(), *(r for r in _saved if r is not None)]
    return (runs,)


@app.function
def run_curves(run):
    """One run's metrics as rows (run, task, step, time_s, loss, held_out) for the comparison charts."""
    metrics, column = run["metrics"], held_out_metric(run["metrics"])
    held_out = pl.col(column) if column in metrics.columns else pl.lit(None, dtype=pl.Float64)
    return metrics.select(pl.lit(run["name"]).alias("run"), pl.lit(run["config"]["task"]).alias("task"), "step",
                          "time_s", "loss", held_out.alias("held_out"))


@app.function
def comparison_panels(curves, task, pick, opacity):
    # `pick` (a legend selection) is added to this panel's loss chart; None when another panel holds it
    """Training loss against the step and the held-out score against seconds for the runs of one task: MQAR
    accuracy on a fixed [0, 1] axis with the chance line of its vocabulary, language modelling in bits per
    character (lower is better)."""
    base = alt.Chart(curves).encode(
        color=alt.Color("run:N"), opacity=opacity,
        tooltip=["run:N", "step:Q", alt.Tooltip("time_s:Q", format=".1f"), alt.Tooltip("loss:Q", format=".3f"),
                 alt.Tooltip("held_out:Q", format=".3f")],
    )
    loss = base.mark_line().encode(x=alt.X("step:Q"), y=alt.Y("loss:Q", title="training loss")).properties(
        width=300, height=220, title=f"{task}: training loss")
    if pick is not None:
        loss = loss.add_params(pick)
    held = base.transform_filter("datum.held_out != null").mark_line(point=True).properties(width=300, height=220)
    if task == "MQAR":
        held = held.encode(x=alt.X("time_s:Q", title="seconds"), y=accuracy_axis(field="held_out"))
        return alt.hconcat(loss, held.properties(title="MQAR: held-out accuracy"))
    held = held.encode(x=alt.X("time_s:Q", title="seconds"), y=alt.Y("held_out:Q", title="bits per character",
                                                                    scale=alt.Scale(zero=False)))
    return alt.hconcat(loss, held.properties(title="language model: held-out bits per character"))


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## All runs side by side

    This session's runs (finished, cancelled or interrupted), the saved runs you picked and the trained
    models the project ships. Runs of the two tasks get their own panels (their scores are different quantities);
    accuracy axes always run from 0 to 1, so chance never looks like learning. Click a name in the legend
    to pick out one run. Time is wall-clock on this machine, evaluations included.
    """)
    return


@app.cell(hide_code=True)
def _(runs):
    mo.stop(not runs, mo.md("_No finished run yet._"))
    _curves = pl.concat([run_curves(r) for r in runs])
    _pick, _opacity = legend_pick("run")
    alt.vconcat(*[comparison_panels(_curves.filter(pl.col("task") == _task), _task, _pick if _i == 0 else None,
                                    _opacity) for _i, _task in enumerate(_curves["task"].unique(maintain_order=True))])
    return


@app.cell(hide_code=True)
def _(runs):
    _rows = []
    for _r in runs:
        _m, _c = _r["metrics"], _r["config"]
        _col = held_out_metric(_m)
        _scores = _m[_col].drop_nulls() if _col in _m.columns else pl.Series([], dtype=pl.Float64)
        _rows.append(dict(
            run=_r["name"], status=_r["status"], task=_c["task"],
            size=f"d={_c['d_model']} × {_c['layers']} layers × {_c['heads']} heads",
            data=f"V={_c['V']} L={_c['L']} D={_c['D']}" if _c["task"] == "MQAR" else f"L={_c['L']}",
            steps=f"{int(_m['step'][-1])} of {_c['steps']}", batch=_c["batch"], lr=f"{_c['lr']:g}",
            seconds=round(float(_m["time_s"][-1]), 1),
            final_loss=round(float(_m["loss"].tail(10).mean()), 3),
            held_out=round(float(_scores[-1]), 3) if len(_scores) else None,
        ))
    mo.ui.table(pl.DataFrame(_rows), selection=None, show_download=False)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Recall: more pairs, longer distances

    Pick MQAR runs to compare. For each, a fresh held-out set is drawn with several numbers of pairs (at
    that run's $V$ and $L$), so you see whether a model **generalises to more pairs than it was trained
    on**, and how accuracy depends on the **distance** from a key's place in the context to its query.
    """)
    return


@app.cell
def _(runs):
    _mqar = [r["name"] for r in runs if r["config"]["task"] == "MQAR"]
    recall_choice = mo.ui.multiselect(options=_mqar, value=_mqar[-2:], label="runs")
    recall_choice
    return (recall_choice,)


@app.function
def pair_counts(trained, seq_len, vocab_size):
    """Numbers of pairs to test: around the trained one, as far as L ≥ 4D and D < V/2 allow."""
    limit = min(seq_len // 4, vocab_size // 2 - 1)
    return sorted({d for d in (1, trained // 2, trained, 2 * trained, 3 * trained) if 1 <= d <= limit})


@app.function
@torch.no_grad()
def recall_tables(run, examples):
    """Held-out MQAR accuracy of `run`'s model per number of pairs and per key-query distance (`examples` per
    number of pairs), each with a `run` column."""
    config = run["config"]
    counts = pair_counts(config["D"], config["L"], config["V"])
    probe = MQAR(vocab_size=config["V"], seq_len=config["L"], num_kv_pairs=counts, train_examples=None,
                 test_examples=examples, seed=1)
    inputs, labels = probe.test_set()
    logits = run["model"](inputs, labels=labels)["logits"]
    name = pl.lit(run["name"]).alias("run")
    return (accuracy_by_pairs(logits, inputs, labels).with_columns(name),
            accuracy_by_distance(logits, inputs, labels).with_columns(name))


@app.cell(hide_code=True)
def _(QUICK, recall_choice, runs):
    mo.stop(not recall_choice.value, mo.md("_Pick one or more MQAR runs._"))
    _picked = [r for r in runs if r["name"] in recall_choice.value]
    _tables = [recall_tables(r, 32 if QUICK else 128) for r in _picked]
    _by_pairs = pl.concat([t[0] for t in _tables])
    _bins = pl.concat([t[1] for t in _tables]).with_columns(
        pl.format("{}-{}", "distance_lo", pl.col("distance_hi") - 1).alias("distance"))
    script_print(*(f"{r['name']}: accuracy by pairs " + ", ".join(f"D={d} {a:.2f}" for d, a in t[0].select(
        "num_kv_pairs", "accuracy").iter_rows()) for r, t in zip(_picked, _tables)))
    _accuracy = accuracy_axis()
    _chance = chance_rule(max(2 / r["config"]["V"] for r in _picked))
    _tooltip = ["run:N", alt.Tooltip("accuracy:Q", format=".3f"), "correct:Q", "total:Q"]
    _pairs = alt.Chart(_by_pairs).mark_line(point=True).encode(
        x=alt.X("num_kv_pairs:Q", title="pairs D", axis=alt.Axis(tickMinStep=1)), y=_accuracy,
        color=alt.Color("run:N"), tooltip=["num_kv_pairs:Q", *_tooltip],
    ).properties(width=280, height=220, title="accuracy per number of pairs (dashed: chance)")
    _order = _bins.sort("distance_lo")["distance"].unique(maintain_order=True).to_list()
    _distance = alt.Chart(_bins).mark_line(point=True).encode(
        x=alt.X("distance:O", sort=_order, title="key → query distance (tokens)"), y=_accuracy,
        color=alt.Color("run:N"), tooltip=["distance:N", *_tooltip],
    ).properties(width=300, height=220, title="recall vs distance (all pair counts)")
    alt.hconcat(_pairs + _chance, _distance + _chance)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Inside one trained model

    Pick one run to look inside: its gates on one held-out sequence, and its memory as it fills up.
    """)
    return


@app.cell
def _(runs):
    run_choice = mo.ui.dropdown(options=[r["name"] for r in runs], value=runs[-1]["name"], label="run")
    run_choice
    return (run_choice,)


@app.cell
def _(run_choice, runs):
    run = next(r for r in runs if r["name"] == run_choice.value)
    is_mqar = run["config"]["task"] == "MQAR"
    return is_mqar, run


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## The gates on one sequence

    Each `MirasLayer` computes per token and head the inner learning rate $\eta_t$ and the retention
    $\alpha_t$, and updates its memory, e.g. for Gated DeltaNet
    $W_t = \alpha_t\,(I - \eta_t k_t^\top k_t)\,W_{t-1} + \eta_t\,k_t^\top v_t$.
    A large $\eta_t$ writes token $t$ hard; $\alpha_t < 1$ forgets. On MQAR look at the context (shaded):
    does the model learn to write keys and values and to spare the memory at filler tokens?
    (Retention `none` fixes $\alpha_t = 1$.)
    """)
    return


@app.function
@torch.no_grad()
def gate_traces(model, tokens):
    """η_t and α_t of every MirasLayer of `model` on one sequence `tokens` [1, T] -> long polars frame
    (layer, head, position, gate, value), plus the mixer inputs per layer (to replay its memory)."""
    mixer_inputs = {}
    hooks = [
        block.mixer.register_forward_pre_hook(lambda _m, args, i=i: mixer_inputs.__setitem__(i, args[0]))
        for i, block in enumerate(model.blocks)
    ]
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    frames = []
    for i, x in mixer_inputs.items():
        eta, alpha, _ = model.blocks[i].mixer.rates(x)
        for gate, values in (("η (learning rate)", eta), ("α (retention)", torch.as_tensor(alpha).expand_as(eta))):
            T, H = values.shape[1:]
            frames.append(pl.DataFrame({
                "layer": [i] * (T * H), "head": [h for _ in range(T) for h in range(H)],
                "position": [t for t in range(T) for _ in range(H)], "gate": [gate] * (T * H),
                "value": values[0].flatten().tolist(),
            }))
    return pl.concat(frames), mixer_inputs


@app.cell
def _(run):
    sample_tokens, sample_labels = (t[:1] for t in run["run_config"].task.build(0).test_set())
    gates, mixer_inputs = gate_traces(run["model"], sample_tokens)
    return gates, mixer_inputs, sample_labels


@app.cell(hide_code=True)
def _(gates, is_mqar, run, sample_labels):
    _queries = pl.DataFrame({"position": (sample_labels[0] != -100).nonzero().flatten().tolist()})
    _context = pl.DataFrame({"start": [0], "end": [2 * run["config"]["D"] - 1]})

    def _panel(gate, layer):
        # one layer per panel, one line per head: readable however many heads and layers the model has
        lines = alt.Chart(gates.filter((pl.col("gate") == gate) & (pl.col("layer") == layer))).mark_line(
            point=alt.OverlayMarkDef(size=12)).encode(
            x=alt.X("position:Q", title="position t"),
            y=alt.Y("value:Q", title=gate, scale=alt.Scale(zero=False)),
            color=alt.Color("head:N", title="head"),
            tooltip=["head:N", "position:Q", alt.Tooltip("value:Q", format=".3f")],
        ).properties(width=300, height=120, title=f"layer {layer}: {gate}")
        if not is_mqar:
            return lines
        shade = alt.Chart(_context).mark_rect(opacity=0.12, color="gray").encode(x="start:Q", x2="end:Q")
        rules = alt.Chart(_queries).mark_rule(strokeDash=[2, 2], color="gray").encode(
            x="position:Q", tooltip=[alt.Tooltip("position:Q", title="query at")])
        return shade + rules + lines

    _gate_names = gates["gate"].unique(maintain_order=True).to_list()
    alt.vconcat(*[alt.hconcat(*[_panel(_g, _layer) for _g in _gate_names])
                  for _layer in sorted(gates["layer"].unique().to_list())]).properties(
        title="gates on one held-out sequence" + (" (shaded: context, dashed: queries)" if is_mqar else ""))
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## The memory filling up

    Replaying one layer on the first $t$ tokens of the sequence gives its memory after $t$ writes (one
    head). **What it recalls:** for every token written so far, the cosine between what the memory
    returns for that token's key and the value the token wrote, $\cos(M_t(k_i), v_i)$ (for an MLP memory,
    its branch $M(k) - k$ against the standardised value it wrote): near 1 where the memory still holds the
    pair, near 0 where nothing of it is left. A memory that learns with a small step $\eta$ keeps a
    shrunken copy of each value; the cosine counts that as recalled, as the layer's read-out does.
    **What it holds:** its weights as a heat map, rows the input coordinates, columns the output ones
    ($W$ for a linear memory, the first matrix $W_\text{in}$ for an MLP, averaged over blocks when large).
    With the delta rule each write moves $W$ only along the key just seen.
    """)
    return


@app.cell
def _(mixer_inputs, run):
    _options = [str(i) for i in sorted(mixer_inputs)]
    snapshot_layer = mo.ui.dropdown(options=_options, value=_options[0], label="layer")
    snapshot_head = mo.ui.dropdown(options=[str(h) for h in range(run["config"]["heads"])], value="0", label="head")
    mo.hstack([snapshot_layer, snapshot_head], justify="start")
    return snapshot_head, snapshot_layer


@app.function
@torch.no_grad()
def memory_after(layer, x, head, t):
    """(recall, weights) of `layer`'s memory after the first t tokens of its input x [1, T, d], one head: a frame
    (t, position, recall) over the tokens written so far (the cosine between read-back and written value), and
    a frame (t, row, column, weight) of its first weight matrix, averaged over blocks down to at most 32 × 32
    cells."""
    _, state = layer(x[:, :t], return_state=True)
    q, k, v, _ = layer.qkv(x[:, :t])
    spec = layer.spec
    target = fittable_value(spec.memory, k, v)[0, :, head]  # [t, D]: what each token wrote
    W = tuple(w[:1, head:head + 1] for w in (state.W if isinstance(state.W, tuple) else (state.W,)))
    keys = k[:, :, head:head + 1]
    read = ml.read_memory(spec, W if spec.memory == "mlp" else W[0], keys)[0, :, 0]  # [t, D]
    branch, wanted = branch_read(spec.memory, keys[0, :, 0], read), branch_read(spec.memory, keys[0, :, 0], target)
    recall = torch.nn.functional.cosine_similarity(branch, wanted, dim=-1)
    recalls = pl.DataFrame({"t": f"t = {t}", "position": list(range(t)), "recall": recall.tolist()})
    return recalls, block_average(W[0][0, 0], 32).with_columns(pl.lit(f"t = {t}").alias("t"))


@app.cell(hide_code=True)
def _(is_mqar, mixer_inputs, run, snapshot_head, snapshot_layer):
    _i = int(snapshot_layer.value)
    _x = mixer_inputs[_i]
    _T = _x.shape[1]
    _end_of_context = 2 * run["config"]["D"] if is_mqar else _T // 4
    _cuts = sorted({max(1, _end_of_context // 2), _end_of_context, _T})
    try:
        _parts = [memory_after(run["model"].blocks[_i].mixer, _x, int(snapshot_head.value), _t) for _t in _cuts]
    except Exception as _error:  # shown in the page: marimo's app mode would hide a raised error
        mo.stop(True, mo.callout(mo.md(f"**Could not replay the memory:** `{_error!r}`"), kind="danger"))
    _order = [f"t = {t}" for t in _cuts]
    _recalls = pl.concat([p[0] for p in _parts])
    _weights = pl.concat([p[1] for p in _parts])
    _recall = alt.Chart(_recalls).mark_line(point=True).encode(
        x=alt.X("position:Q", title="position i of the written token"),
        y=alt.Y("recall:Q", title="recall (cosine with the written value)", scale=alt.Scale(domain=[-1, 1])),
        color=alt.Color("t:N", sort=_order, title="memory after"),
        tooltip=["t:N", "position:Q", alt.Tooltip("recall:Q", format=".3f")],
    ).properties(width=560, height=180, title="what the memory recalls of each token written so far")
    # a few large entries would wash out the rest: the colour scale ends at the 98th percentile of |W|
    _limit = max(float(_weights["weight"].abs().quantile(0.98)), 1e-6)
    _held = alt.Chart(_weights).mark_rect().encode(
        x=alt.X("column:O", axis=None), y=alt.Y("row:O", axis=None),
        color=alt.Color("weight:Q", scale=alt.Scale(scheme="redblue", domain=[-_limit, _limit], reverse=True,
                                                    clamp=True)),
        tooltip=["t:N", "row:O", "column:O", alt.Tooltip("weight:Q", format=".3f")],
    ).properties(width=180, height=180).facet(column=alt.Column("t:N", sort=_order, title=None))
    alt.vconcat(_recall, _held).properties(
        title=f"layer {_i}: the memory after the first t tokens" + (" (2D ends the context)" if is_mqar else ""))
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Try this

    - **Delta rule vs Hebbian.** Train `gated_deltanet`, then `linear_attention` with the same settings.
      Which one reaches high accuracy first, and which collapses when you test it on more pairs?
    - **Capacity.** Raise the pairs $D$ to 8 (keep $L \ge 4D$) with `d_model` 32, then 64: a head of width
      $D_k$ stores about $D_k$ pairs.
    - **Forgetting.** With `retnet` (one constant $\alpha$ per head) look at the recall-vs-distance curve:
      how far back can a fixed decay reach compared with the data-dependent $\alpha_t$ of `mamba2`?
    - **Deep memories.** `titans` and `moneta` use an MLP memory trained in chunks: slower per step here,
      and the inner learning rate $\eta_t$ stays small. How do their gates differ from `gated_deltanet`'s?
    - **Cancel.** Start a long run (2000 steps) and press **Cancel** half way: the run is kept, marked
      *cancelled*, and can be inspected like a finished one.
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("07_armt_babilong.py")
    mo.md(f"**Next:** [07 · ARMT on BABILong]({_next}): a transformer that carries an associative memory from segment to segment, on stories up to a million tokens long.")
    return


if __name__ == "__main__":
    app.run()
