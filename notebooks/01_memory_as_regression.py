"""01 · Memory as regression

A memory is a matrix fitted online: linear attention against the delta rule, crosstalk between keys, and how many pairs fit.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite 01: memory as regression")

with app.setup(hide_code=True):
    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import miras_lite as ml
    from miras_lite.ui import course_link, legend_pick, script_print
    from miras_lite.tasks.probes import capacity_curve, kv_stream

    # The two memories of this notebook: the dot bias (linear attention) and the l2 bias (delta rule).
    BIAS_PRESETS = {"dot": "linear_attention", "l2": "deltanet"}
    BIAS_COLORS = alt.Scale(domain=list(BIAS_PRESETS), range=["#e45756", "#4c78a8"])
    # The probes call a pair recalled when its relative error is below this.
    RECALL_THRESHOLD = 0.5


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # Memory as regression

    A linear memory is a matrix $W \in \mathbb{R}^{D_k \times D_v}$ that answers a key $k$ (a row vector)
    with $k W$. *Writing* a pair $(k_t, v_t)$ means taking **one gradient step** on a regression loss
    $\ell(k_t W, v_t)$: the memory is a regression model, fitted online, one example at a time.

    **What you will learn**

    - how the two simplest losses, `dot` (linear attention) and `l2` (the delta rule), write into $W$;
    - what a *retrieval error* is and where it comes from (crosstalk between keys);
    - why a $D_k \times D_v$ matrix holds about $D_k$ pairs, and why the delta rule degrades gracefully
      past that point while linear attention collapses.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Two losses, two update rules

    At token $t$ the memory predicts $\hat v_t = k_t W_{t-1}$, the loss gradient with respect to that
    prediction is $g_t$, and gradient descent with step $\eta$ gives
    $W_t = W_{t-1} - \eta\, k_t^\top g_t$ (an outer product, $D_k \times D_v$):

    | bias | loss $\ell(\hat v, v)$ | $g_t$ | update | known as |
    |:--|:--|:--|:--|:--|
    | `dot` | $-\langle \hat v, v\rangle$ | $-v_t$ | $W_t = W_{t-1} + \eta\, k_t^\top v_t$ | linear attention (Hebbian) |
    | `l2` | $\tfrac12\lVert \hat v - v\rVert^2$ | $e_t = k_t W_{t-1} - v_t$ | $W_t = (I - \eta\, k_t^\top k_t)\, W_{t-1} + \eta\, k_t^\top v_t$ | delta rule (DeltaNet) |

    The `dot` step *adds* $v_t$ whatever the memory already answers for $k_t$. The `l2` step *corrects*
    the answer: reading $k_t$ right after the write gives
    $k_t W_t = (1 - \eta\lVert k_t\rVert^2)\, k_t W_{t-1} + \eta\lVert k_t\rVert^2 v_t$,
    so with unit keys and $\eta = 1$ the new pair is stored **exactly** — the step is the orthogonal
    projection of $W$ onto the memories that answer $v_t$ for $k_t$ (Kaczmarz's method).

    Below, $N$ pairs are written one token at a time (`ml.memory_scan`, exact recurrence, no forgetting)
    into both memories. Keys have unit norm; values have norm about 1 (`kv_stream`).
    """)
    return


@app.cell
def _():
    n_pairs = mo.ui.slider(2, 32, value=12, label="pairs N", show_value=True)
    key_dim = mo.ui.slider(4, 16, step=2, value=8, label="key dim Dk", show_value=True)
    value_dim = mo.ui.slider(2, 12, step=2, value=6, label="value dim Dv", show_value=True)
    key_mode = mo.ui.dropdown(
        options={"orthogonal while N ≤ Dk": "auto", "random unit vectors": "random"},
        value="orthogonal while N ≤ Dk", label="keys",
    )
    eta = mo.ui.slider(0.1, 1.5, step=0.05, value=1.0, label="η (step size)", show_value=True)
    mo.vstack(
        [
            mo.hstack([n_pairs, key_dim, value_dim], justify="start", wrap=True),
            mo.hstack([key_mode, eta], justify="start", wrap=True),
        ]
    )
    return eta, key_dim, key_mode, n_pairs, value_dim


@app.function
def write_history(stream, bias, eta):
    """Write `stream` into a fresh memory with the preset of `bias` and keep W after every token ->
    snapshots W_t [N, Dk, Dv] (t = 1..N) and the relative error ‖k_u W_t − v_u‖ / ‖v_u‖ of every pair u
    read from every snapshot, [N (t), U (u)]."""
    with torch.no_grad():
        _, state = ml.memory_scan(
            stream.keys, stream.keys, stream.values, eta=eta, spec=BIAS_PRESETS[bias], return_states=1
        )
        snapshots = state.snapshots[0, :, 0]
        reads = torch.einsum("ud,tdv->tuv", stream.target_keys[0, :, 0], snapshots)
        targets = stream.targets[0, :, 0]
        errors = (reads - targets).norm(dim=-1) / targets.norm(dim=-1)
    return snapshots, errors


@app.cell
def _(eta, key_dim, key_mode, n_pairs, value_dim):
    stream = kv_stream(n_pairs.value, key_dim.value, value_dim.value, keys=key_mode.value)
    history = {bias: write_history(stream, bias, eta.value) for bias in BIAS_PRESETS}
    # One colour scale for every snapshot of both memories, so the slider below never rescales it.
    w_max = max(snapshots.abs().max().item() for snapshots, _ in history.values())
    script_print(
        f"writing N = {n_pairs.value} pairs (Dk = {key_dim.value}, Dv = {value_dim.value}, η = {eta.value:g}); "
        "mean relative error of every pair read from the final memory:",
        *(f"  {bias} ({BIAS_PRESETS[bias]}): {errors[-1].mean().item():.3g}" for bias, (_, errors) in history.items()),
    )
    return history, stream, w_max


@app.cell
def _(n_pairs):
    time_step = mo.ui.slider(
        1, n_pairs.value, value=n_pairs.value, label="t (pairs written so far)", show_value=True
    )
    return (time_step,)


@app.cell(hide_code=True)
def _(time_step):
    mo.vstack(
        [
            mo.md(r"""
    ## Watching $W$ fill up

    Each snapshot is $W_t$ after the first $t$ writes. Pair $t$ adds the outer product $k_t^\top(\cdot)$:
    a rank-one pattern whose rows follow the key and whose columns follow the value. Drag $t$.
    """),
            time_step,
        ]
    )
    return


@app.cell(hide_code=True)
def _(history, time_step, w_max):
    _t = time_step.value
    _frames = []
    for _bias, (_snapshots, _) in history.items():
        _W = _snapshots[_t - 1]
        _rows, _cols = _W.shape
        _frames.append(
            pl.DataFrame(
                {
                    "bias": _bias,
                    "key coordinate i": [i for i in range(_rows) for _ in range(_cols)],
                    "value coordinate j": [j for _ in range(_rows) for j in range(_cols)],
                    "W_ij": _W.flatten().tolist(),
                }
            )
        )
    alt.Chart(pl.concat(_frames)).mark_rect().encode(
        x=alt.X("value coordinate j:O"),
        y=alt.Y("key coordinate i:O"),
        color=alt.Color(
            "W_ij:Q", scale=alt.Scale(scheme="redblue", domain=[-w_max, w_max], reverse=True),
            title="W_ij",
        ),
        tooltip=["bias:N", "key coordinate i:O", "value coordinate j:O", alt.Tooltip("W_ij:Q", format=".3f")],
    ).properties(width=220, height=220).facet(
        column=alt.Column("bias:N", title=f"W after t = {_t} writes")
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Retrieval error, pair by pair

    Reading pair $u$ back from $W_t$ gives $\hat v_u = k_u W_t$; its relative error is
    $\lVert k_u W_t - v_u \rVert / \lVert v_u \rVert$ (0 is perfect; a memory that answers 0 scores 1).
    For the `dot` memory with unit keys the answer is
    $$
    k_u W_t = \eta\, v_u + \eta \sum_{i \le t,\, i \ne u} (k_u \cdot k_i)\, v_i ,
    $$
    the wanted value plus **crosstalk** from every other pair, weighted by how much the keys overlap.
    With orthogonal keys the crosstalk is zero and both memories are exact (at $\eta = 1$); with
    overlapping keys `dot` is off for every pair, old and new alike, and gets worse with every write. The
    `l2` step removes the overlap of the newest key first, so the newest pair is exact and only older
    pairs drift. The dashed line is the probes' recall threshold (error < 0.5).
    """)
    return


@app.cell(hide_code=True)
def _(history, time_step):
    _t = time_step.value
    _errors = pl.concat(
        [
            pl.DataFrame({"bias": _bias, "pair": list(range(_t)), "error": _err[_t - 1, :_t].tolist()})
            for _bias, (_, _err) in history.items()
        ]
    )
    _pick, _opacity = legend_pick("bias")
    _bars = (
        alt.Chart(_errors)
        .mark_bar()
        .encode(
            x=alt.X("pair:O", title="pair u (written at token u + 1)"),
            xOffset="bias:N",
            y=alt.Y("error:Q", title="relative error from W_t"),
            color=alt.Color("bias:N", scale=BIAS_COLORS, title="bias (click)"),
            opacity=_opacity,
            tooltip=["bias:N", "pair:O", alt.Tooltip("error:Q", format=".4f")],
        )
        .add_params(_pick)
    )
    _threshold = (
        alt.Chart(pl.DataFrame({"threshold": [RECALL_THRESHOLD]}))
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(y="threshold:Q")
    )
    (_bars + _threshold).properties(width=640, height=240, title=f"Every pair written so far, read from W_{_t}")
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    The whole history at once: row $u$ is pair $u$, column $t$ the snapshot it is read from (blank
    before the pair is written). A perfect memory is white on and above the diagonal. The black rule
    marks the $t$ of the slider.
    """)
    return


@app.cell(hide_code=True)
def _(history, stream, time_step):
    _n = stream.num_tokens
    _frames = []
    for _bias, (_, _err) in history.items():
        _written = [(t, u) for t in range(_n) for u in range(stream.num_keys) if u <= t]
        _frames.append(
            pl.DataFrame(
                {
                    "bias": _bias,
                    "t": [t + 1 for t, _ in _written],
                    "pair": [u for _, u in _written],
                    "error": [_err[t, u].item() for t, u in _written],
                }
            )
        )
    _now = (
        alt.Chart(pl.DataFrame({"t": [time_step.value]}))
        .mark_rule(color="black", strokeWidth=2)
        .encode(x="t:O")
    )
    _panels = []
    for _frame in _frames:
        _grid = (
            alt.Chart(_frame)
            .mark_rect()
            .encode(
                x=alt.X("t:O", title="t (snapshot)"),
                y=alt.Y("pair:O", title="pair u"),
                color=alt.Color("error:Q", scale=alt.Scale(scheme="greys", domain=[0, 1], clamp=True),
                                title="error (clamped at 1)"),
                tooltip=["bias:N", "t:O", "pair:O", alt.Tooltip("error:Q", format=".4f")],
            )
        )
        _panels.append((_grid + _now).properties(width=280, height=220, title=f"{_frame['bias'][0]}: error of pair u read from W_t"))
    alt.hconcat(*_panels)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:**

    - Set $N \le D_k$ with orthogonal keys: both memories are exact at $\eta = 1$ — for orthonormal keys
      `l2` and `dot` take *the same* step, because $k_t W_{t-1} = 0$ for a new key, so $g_t = e_t = -v_t$.
    - Raise $N$ to $D_k + 1$: $D_k + 1$ keys cannot be orthogonal in $D_k$ dimensions, so the probe switches
      to random keys. Watch the `dot` column of the history darken everywhere while `l2` keeps a white
      band along the diagonal: the most recent pairs.
    - Pick random keys with $N < D_k$: `dot` already interferes; `l2` interferes less, because each write
      cancels the overlap of the new key with what is stored.
    - Try $\eta = 0.5$ and $\eta = 1.5$: `l2` under- or overshoots ($k_t W_t$ lands at
      $(1-\eta)\,k_t W_{t-1} + \eta\, v_t$), `dot` just scales every answer by $\eta$.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Capacity: how many pairs fit?

    A sweep writes $N$ pairs into fresh memories of several sizes and counts the pairs recalled
    (error < 0.5) in the final memory (`capacity_curve`, 2 seeds, $D_v = D_k$). $N$ runs from
    $D_k/4$ to $4 D_k$, so the $x$ axis of the left chart is the *load* $N / D_k$.
    """)
    return


@app.cell
def _():
    sweep_keys = mo.ui.dropdown(
        options={"orthogonal while N ≤ Dk": "auto", "random unit vectors": "random"},
        value="orthogonal while N ≤ Dk", label="keys",
    )
    sweep_keys
    return (sweep_keys,)


@app.function
@mo.cache
def capacity_for(bias, key_dim, keys, seeds):
    """capacity_curve of the `bias` preset at loads N / Dk from 1/4 to 4 (Dv = Dk), averaged over seeds
    -> DataFrame(bias, Dk, N, load, recalled fraction, pairs recalled, mean error)."""
    loads = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
    sizes = [round(load * key_dim) for load in loads]
    curve = capacity_curve(
        BIAS_PRESETS[bias], sizes, key_dim=key_dim, value_dim=key_dim, seeds=seeds, keys=keys,
        threshold=RECALL_THRESHOLD,
    )
    return (
        curve.group_by("num_pairs")
        .agg(pl.col("accuracy").mean().alias("recalled fraction"), pl.col("mean_error").mean().alias("mean error"))
        .sort("num_pairs")
        .select(
            pl.lit(bias).alias("bias"),
            pl.lit(key_dim).alias("Dk"),
            pl.col("num_pairs").alias("N"),
            (pl.col("num_pairs") / key_dim).alias("load"),
            "recalled fraction",
            (pl.col("recalled fraction") * pl.col("num_pairs")).alias("pairs recalled"),
            "mean error",
        )
    )


@app.cell
def _(sweep_keys):
    # 54 small scans: about 0.3 s of one core, cached per (bias, Dk, keys)
    _jobs = [(bias, dim) for dim in (8, 16, 32) for bias in BIAS_PRESETS]
    capacity = pl.concat(
        [
            capacity_for(_bias, _dim, sweep_keys.value, seeds=(0, 1))
            for _bias, _dim in mo.status.progress_bar(_jobs, title="capacity sweep", remove_on_exit=True)
        ]
    )
    capacity_summary = (
        capacity.group_by("bias", "Dk")
        .agg(
            pl.col("N").filter(pl.col("recalled fraction") >= 0.9).max().alias("largest N with ≥ 90% recalled"),
            pl.col("pairs recalled").filter(pl.col("load") == pl.col("load").max()).first().round(1)
            .alias("pairs recalled at N = 4·Dk"),
        )
        .sort("bias", "Dk")
    )
    script_print(
        f"capacity sweep (keys: {sweep_keys.selected_key}; 2 seeds):",
        *(f"  {row['bias']}, Dk = {row['Dk']}: "
          + (f"at least 90% recalled up to N = {row['largest N with ≥ 90% recalled']}"
             if row["largest N with ≥ 90% recalled"] is not None else "never 90% recalled")
          + f"; {row['pairs recalled at N = 4·Dk']:g} pairs recalled at N = {4 * row['Dk']}"
          for row in capacity_summary.iter_rows(named=True)),
    )
    return capacity, capacity_summary


@app.cell(hide_code=True)
def _(capacity):
    _pick, _opacity = legend_pick("bias")
    _base = alt.Chart(capacity).encode(
        color=alt.Color("bias:N", scale=BIAS_COLORS, title="bias (click)"),
        strokeDash=alt.StrokeDash("Dk:O", title="Dk"),
        opacity=_opacity,
        tooltip=[
            "bias:N", "Dk:O", "N:Q", alt.Tooltip("load:Q", format=".2f"),
            alt.Tooltip("recalled fraction:Q", format=".2f"), alt.Tooltip("pairs recalled:Q", format=".1f"),
            alt.Tooltip("mean error:Q", format=".3f"),
        ],
    )
    _fraction = _base.mark_line(point=True).encode(
        x=alt.X("load:Q", title="load N / Dk"),
        y=alt.Y("recalled fraction:Q", title="fraction of pairs recalled", scale=alt.Scale(domain=[0, 1])),
    ).add_params(_pick).properties(width=300, height=260, title="Recall vs load")
    _count = _base.mark_line(point=True).encode(
        x=alt.X("N:Q", title="pairs written N"),
        y=alt.Y("pairs recalled:Q", title="pairs recalled"),
    ).properties(width=300, height=260, title="Pairs recalled vs N")
    _fraction | _count
    return


@app.cell(hide_code=True)
def _(capacity_summary):
    mo.ui.table(capacity_summary, selection=None, show_download=False)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Why the curves look like this

    - **Up to $N = D_k$ with orthogonal keys** both memories recall everything: there is no crosstalk, and
      on a new orthogonal key the two steps coincide. $D_k$ is a hard ceiling: a $D_k$-dimensional key space
      holds at most $D_k$ mutually orthogonal keys.
    - **Past $D_k$**, keys must overlap. Linear attention keeps *summing*: every pair's answer carries the
      crosstalk of all $N - 1$ others, whose size grows like $\sqrt{N / D_k}$, so the recalled fraction
      drops to zero and so does the count on the right.
    - The delta rule keeps *re-fitting*: each step makes the newest pair exact and nudges older answers
      only along the new key. It behaves like a regression on a sliding window of recent pairs: past
      $D_k$ the count on the right falls to a plateau of the most recent pairs (about $D_k/5$ here) and
      stays there instead of collapsing — it forgets the old to keep the new.
    - With **random keys from the start**, keys overlap even below $D_k$: both memories lose pairs early,
      `dot` much faster.

    **Try this:** switch the sweep to random keys. Two random unit keys overlap by about $1/\sqrt{D_k}$, so
    the `dot` crosstalk is about $\sqrt{N / D_k}$: the same at a fixed *load* whatever $D_k$ is. A bigger
    memory helps at a fixed $N$ (right), not at a fixed load (left). Where along the load axis is the
    delta rule's lead over `dot` largest?
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("02_attentional_bias.py")
    mo.md(
        f"**Next:** [02 · The attentional bias]({_next}): losses other than `dot` and `l2`, and what they do "
        "with noisy values and outliers."
    )
    return


if __name__ == "__main__":
    app.run()
