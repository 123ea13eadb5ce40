"""05 · Deep memory

When a matrix is not enough: a small MLP memory against the best any linear memory can do, and how passes and width buy capacity.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite 05: deep memory")

with app.setup(hide_code=True):
    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import miras_lite as ml
    from miras_lite.tasks import KVStream, kv_stream, probe_recall
    from miras_lite.ui import course_link, legend_pick, quick_mode, report_mode, script_print

    QUICK = quick_mode()
    # a report runs the capacity sweep at the page's settings (seconds, not minutes)
    REPORT = report_mode() is not None
    DK = 8  # key = value dimension of every probe here: small, so that N > Dk stays cheap


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # Deep memory: when a matrix is not enough

    A linear memory $W \in \mathbb{R}^{D_k \times D_v}$ is a linear map: it can store at most $D_k$ pairs
    exactly (one per independent key direction). Past that, every key $k_u$ is a mix of the others and
    its answer $k_u W$ is blurred by their values — however well $W$ is chosen. A **deep memory**
    replaces the matrix by a small residual MLP (as in TTT-MLP, Titans, Moneta, Yaad, Memora):

    $$
    M(x) = x + \mathrm{LN}\big(\mathrm{GELU}(x W_\text{in})\, W_\text{out}\big),\qquad
    W_\text{in} \in \mathbb{R}^{D_k \times E D_k},\ W_\text{out} \in \mathbb{R}^{E D_k \times D_k},
    $$

    with $2 E D_k^2$ parameters (the expansion $E$ = `spec.expansion`) against the matrix's $D_k^2$.
    It is trained at test time exactly like the matrix: at every token one step of the inner optimiser on
    $\ell = \tfrac12\|M(k_t) - v_t\|^2$, the gradient now taken through GELU and LayerNorm,
    $W \leftarrow W - \eta\, \nabla_W \ell$.

    **What you will learn**

    - how the best *any* linear memory can do degrades once the number of pairs $N$ passes $D_k$;
    - why one small gradient step per pair is not enough for the MLP (it loses to the delta rule), and
      how **several passes** over the same pairs let it beat every linear memory past $D_k$ pairs;
    - how capacity grows with the expansion factor $E$.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## The probe

    $N$ pairs from `kv_stream` (unit keys in $\mathbb{R}^{D_k}$, here $D_k = 8$: orthonormal while
    $N \le D_k$, random directions beyond) are written into a fresh memory, all $N$ of them, **$P$ times
    in a row** ($P$ passes: $NP$ tokens, `memory_scan` with the exact recurrence), then every key is read
    from the final memory (`probe_recall`: error $\|M(k_u) - v_u\| / \|v_u\|$, recalled when below 0.5).

    One detail matters for the MLP: its non-residual branch ends in a LayerNorm without gain, whose output
    always has zero mean and norm $\sqrt{D_k}$. `kv_stream`'s values have norm ≈ 1, which that branch
    cannot produce, so here every value is **standardised** (zero mean, unit variance over its $D_k$
    coordinates) — the same values for both memories; a linear memory's relative error does not care.

    Three memories are compared:

    - **linear, delta rule** (`l2` bias, gd, η = 1: each write projects exactly onto its pair);
    - **linear, best possible**: the least-squares matrix $W^\star = \arg\min_W \sum_u \|k_u W - v_u\|^2$,
      the best any linear memory could hold, whatever its optimiser;
    - **MLP** (`l2` bias, gd, retention `none`, the η and $E$ you pick), from `mlp_initial_state`.
    """)
    return


@app.function
def standardised_passes(stream, passes):
    """`stream` with every value standardised (zero mean, unit variance per vector) and written `passes`
    times in a row: NP tokens; the targets are the standardised clean values, written_at the last pass."""

    def standardise(x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, correction=0, keepdim=True)

    return KVStream(
        keys=stream.keys.repeat(1, passes, 1, 1),
        values=standardise(stream.values).repeat(1, passes, 1, 1),
        pair=stream.pair.repeat(passes),
        kind=stream.kind.repeat(passes),
        target_keys=stream.target_keys,
        targets=standardise(stream.targets),
        written_at=stream.written_at + (passes - 1) * stream.num_tokens,
    )


@app.function
def best_linear_recall(stream):
    """Per-key relative error of the least-squares matrix W* = argmin Σ_u ‖k_u W − v_u‖² (no optimiser)."""
    keys, targets = stream.target_keys[0, :, 0], stream.targets[0, :, 0]
    best = torch.linalg.lstsq(keys.double(), targets.double()).solution.float()
    return ((keys @ best - targets).norm(dim=-1) / targets.norm(dim=-1)).double().numpy()


@app.function
def mlp_spec(expansion):
    """A residual-MLP memory with the l2 bias, plain gd and no retention."""
    return ml.MemorySpec(memory="mlp", bias="l2", retention="none", optimizer="gd", expansion=expansion)


@app.function
def compare_memories(num_pairs, passes, eta, expansion, seed=0):
    """Per-key recall of the three memories on one probe -> polars DataFrame(memory, pair, error, correct)."""
    stream = standardised_passes(kv_stream(num_pairs, DK, DK, seed=seed), passes)
    frames = {
        "linear, delta rule (η = 1)": probe_recall("deltanet", stream, eta=1.0),
        f"MLP, E = {expansion} (η = {eta:g})": probe_recall(mlp_spec(expansion), stream, eta=eta),
    }
    best = best_linear_recall(stream)
    frames["linear, best possible (W*)"] = pl.DataFrame({"pair": range(stream.num_keys), "error": best,
                                                         "correct": best < 0.5})
    return pl.concat(
        [f.select(pl.lit(name).alias("memory"), "pair", "error", "correct") for name, f in frames.items()],
        how="vertical_relaxed",
    )


@app.cell
def _():
    n_pairs = mo.ui.slider(4, 32, step=4, value=16, label="pairs N", show_value=True)
    passes = mo.ui.slider(1, 16, step=1, value=8, label="passes P", show_value=True)
    eta = mo.ui.slider(steps=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0], value=0.1, label="MLP η", show_value=True)
    expansion = mo.ui.dropdown(options={"1": 1, "2": 2, "4": 4, "8": 8}, value="4", label="expansion E")
    mo.hstack([n_pairs, passes, eta, expansion], justify="start", wrap=True)
    return eta, expansion, n_pairs, passes


@app.cell
def _(eta, expansion, n_pairs, passes):
    recall = compare_memories(n_pairs.value, passes.value, eta.value, expansion.value)
    _recalled = recall.group_by("memory", maintain_order=True).agg(pl.col("correct").mean())
    script_print(
        f"probe: N = {n_pairs.value} pairs, Dk = {DK}, {passes.value} passes; share of keys recalled:",
        *(f"  {row['memory']}: {row['correct']:.0%}" for row in _recalled.iter_rows(named=True)),
    )
    return (recall,)


@app.cell(hide_code=True)
def _(expansion, n_pairs, passes, recall):
    _pick, _opacity = legend_pick("memory")
    _chart = (
        alt.Chart(recall)
        .mark_line(point=True)
        .encode(
            x=alt.X("pair:O", title="key u (in writing order)"),
            y=alt.Y("error:Q", title="relative error ‖M(k_u) − v_u‖/‖v_u‖", scale=alt.Scale(domainMin=0)),
            color=alt.Color("memory:N", title="memory (click)"),
            opacity=_opacity,
            tooltip=["memory:N", "pair:Q", alt.Tooltip("error:Q", format=".3f"), "correct:N"],
        )
        .add_params(_pick)
        .properties(
            width=620, height=260,
            title=f"N = {n_pairs.value} pairs in Dk = {DK} dimensions, {passes.value} passes, MLP expansion {expansion.value}",
        )
    )
    _rule = alt.Chart(pl.DataFrame({"y": [0.5]})).mark_rule(strokeDash=[4, 4], color="gray").encode(y="y:Q")
    _params = {"linear, delta rule (η = 1)": DK * DK, "linear, best possible (W*)": DK * DK}
    _table = (
        recall.group_by("memory", maintain_order=True)
        .agg(pl.col("error").mean().round(3).alias("mean error"), pl.col("correct").mean().round(3).alias("recalled"))
        .with_columns(
            pl.col("memory").replace_strict(_params, default=2 * expansion.value * DK * DK, return_dtype=pl.Int64)
            .alias("parameters")
        )
    )
    mo.vstack([_chart + _rule, mo.ui.table(_table, selection=None, show_download=False)])
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **What you see** (defaults: $N = 16 = 2D_k$, 8 passes, η = 0.1, $E = 4$): the best linear matrix
    $W^\star$ already misses most keys — $16$ random directions in $\mathbb{R}^8$ cannot all be
    separated by a linear map — and the delta rule does little better: it recalls only the newest keys
    exactly (each write projects the memory onto the newest pair, disturbing the older ones). The MLP,
    trained on the same pairs, recalls about three quarters of them (nearly all with 16 passes): it is a
    nonlinear function with 8× the parameters, and 8 passes give its small steps time to get there.

    **Try this:**

    - **One pass.** Set $P = 1$. Now the MLP is the *worst* of the three: a single small gradient step
      per pair moves it only part of the way from its random start, and there is no closed-form "jump"
      like the delta rule's η = 1 (a linear least-squares step that lands exactly on the pair). Raising η
      does not fix it: beyond η ≈ 0.2 the steps through LayerNorm overshoot and the error grows again.
    - **Under capacity.** Set $N \le 8$: keys are orthonormal and the delta rule is exact in one pass;
      the MLP needs several passes to get close, and never reaches exactly 0 (its read-out $k + \mathrm{LN}(\cdot)$
      carries the key itself along).
    - **Expansion.** At $N = 32$, 16 passes, compare $E = 1$ (the same $2D_k^2$ parameters as two
      matrices) with $E = 8$.
    - Where does the *one-pass* MLP stand? That is how TTT-MLP and Titans read a sequence: their
      memories are useful because η, α, θ and the key/value projections are *learned* end to end (and
      Titans-style models take several inner steps per chunk, `chunk_size`), not because a random MLP
      with hand-set η memorises a stream in one go.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Capacity curves and the expansion factor

    The same probe over a range of $N$ and several expansions $E$, each averaged over 2 seeds. This sweep
    writes thousands of MLP tokens, so it waits for the button; the chart's title states the settings it
    ran with.
    """)
    return


@app.cell
def _():
    sweep_passes = mo.ui.slider(1, 32, step=1, value=16, label="passes P", show_value=True)
    sweep_eta = mo.ui.slider(steps=[0.02, 0.05, 0.1, 0.2, 0.3], value=0.1, label="MLP η", show_value=True)
    run_sweep = mo.ui.run_button(label="Run the capacity sweep")
    mo.hstack([sweep_passes, sweep_eta, run_sweep], justify="start")
    return run_sweep, sweep_eta, sweep_passes


@app.function
@mo.cache
def capacity_sweep(num_pairs_list, expansions, passes, eta, seeds=(0, 1)):
    """Share recalled and mean error vs N for the three memories (MLP at every expansion) ->
    polars DataFrame(memory, expansion, num_pairs, seed, accuracy, mean_error)."""
    rows = []
    with mo.status.progress_bar(total=len(num_pairs_list) * len(seeds), title="capacity sweep") as bar:
        for n in num_pairs_list:
            for seed in seeds:
                stream = standardised_passes(kv_stream(n, DK, DK, seed=seed), passes)
                frames = [("linear, delta rule", None, probe_recall("deltanet", stream, eta=1.0)["error"].to_numpy())]
                frames.append(("linear, best possible", None, best_linear_recall(stream)))
                frames += [("MLP", e, probe_recall(mlp_spec(e), stream, eta=eta)["error"].to_numpy())
                           for e in expansions]
                rows += [{"memory": name if e is None else f"MLP, E = {e}", "expansion": e, "num_pairs": n,
                          "seed": seed, "accuracy": float((errors < 0.5).mean()), "mean_error": float(errors.mean())}
                         for name, e, errors in frames]
                bar.update()
    return pl.DataFrame(rows)


@app.cell
def _(run_sweep, sweep_eta, sweep_passes):
    mo.stop(
        not (run_sweep.value or QUICK or REPORT), mo.md("Press **Run the capacity sweep** (about 10–20 s here).")
    )
    if QUICK:  # a script or a browser test: a small sweep, whatever the controls show
        _settings = dict(num_pairs_list=(8, 16, 24), expansions=(1, 4), passes=8, eta=0.1, seeds=(0,))
    else:
        _settings = dict(num_pairs_list=(4, 8, 12, 16, 24, 32, 48, 64), expansions=(1, 2, 4, 8),
                         passes=sweep_passes.value, eta=sweep_eta.value, seeds=(0, 1))
    sweep = capacity_sweep(**_settings)
    sweep_used = (
        f"P = {_settings['passes']} passes, η = {_settings['eta']:g}, "
        f"N up to {max(_settings['num_pairs_list'])}, "
        + ("1 seed, a quick run" if QUICK else f"{len(_settings['seeds'])} seeds")
    )
    capacity = sweep.group_by("memory", "expansion", "num_pairs").agg(
        pl.col("accuracy").mean(), pl.col("mean_error").mean()
    ).sort("memory", "num_pairs")
    _widest = capacity.filter(pl.col("num_pairs") == pl.col("num_pairs").max())
    script_print(
        f"capacity sweep ({sweep_used}); share recalled at N = {_widest['num_pairs'][0]}:",
        *(f"  {row['memory']}: {row['accuracy']:.0%}" for row in _widest.iter_rows(named=True)),
    )
    return capacity, sweep_used


@app.cell(hide_code=True)
def _(capacity, sweep_used):
    _pick, _opacity = legend_pick("memory")
    _base = alt.Chart(capacity).encode(
        x=alt.X("num_pairs:Q", title="pairs N (Dk = 8)"),
        color=alt.Color("memory:N", title="memory (click)"),
        opacity=_opacity,
        tooltip=["memory:N", "num_pairs:Q", alt.Tooltip("accuracy:Q", format=".0%"),
                 alt.Tooltip("mean_error:Q", format=".3f")],
    )
    _recalled = _base.mark_line(point=True).encode(y=alt.Y("accuracy:Q", title="share of keys recalled"))
    _error = _base.mark_line(point=True).encode(y=alt.Y("mean_error:Q", title="mean relative error"))
    _dk = alt.Chart(pl.DataFrame({"x": [DK]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q")
    alt.hconcat(
        (_recalled.add_params(_pick) + _dk).properties(width=300, height=260, title="Capacity (dashed: N = Dk)"),
        (_error + _dk).properties(width=300, height=260, title="Mean error"),
    ).properties(title=f"Capacity sweep: {sweep_used}")
    return


@app.cell(hide_code=True)
def _(capacity):
    _mlp = capacity.filter(pl.col("expansion").is_not_null())
    mo.vstack(
        [
            mo.md("**Share recalled by expansion** (rows: N; the linear memories for comparison):"),
            mo.ui.table(
                capacity.with_columns(pl.col("accuracy").round(3))
                .pivot(on="memory", index="num_pairs", values="accuracy")
                .sort("num_pairs"),
                selection=None, show_download=False,
            ),
            mo.md(
                f"The MLP's parameters: $2 E D_k^2$ = "
                + ", ".join(f"{2 * e * DK * DK} (E = {e})" for e in sorted(_mlp["expansion"].unique().to_list()))
                + f"; a matrix has {DK * DK}."
            ),
        ]
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:**

    - Set $P = 1$ and rerun: every MLP curve drops below the delta rule — the capacity is there, a single
      pass of small steps does not reach it.
    - Compare the expansions at $N = 4D_k$ and beyond: how much does going from $E = 1$ to $E = 8$
      (8× the parameters) buy, and how much do 32 passes instead of 16? Capacity here is bought with
      parameters *and* with inner optimisation steps.
    - Raise η to 0.3: with many passes, larger steps get further in the same number of writes (with
      $P = 1$ they did not, see above). Even so, no MLP here recalls everything past about $2 D_k$
      pairs: a few hundred parameters trained by plain gd on a stream are not a lookup table.
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("06_playground.py")
    mo.md(
        f"**Next:** [06 · Training playground]({_next}): pick a point of the design space, train a small "
        "language model on associative recall and watch it learn."
    )
    return


if __name__ == "__main__":
    app.run()
