"""04 · Inner optimisers

gd, momentum and the implicit step: when a memory's updates blow up, which step size is best, and what each keeps when a fact is rewritten.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite 04: inner optimisers")

with app.setup(hide_code=True):
    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import miras_lite as ml
    from miras_lite.ui import course_link, legend_pick, script_print
    from miras_lite.tasks import kv_stream

    # A mean recall error 10× that of a memory answering 0: the memory has blown up.
    BLOWN_UP = 10.0


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # The inner optimiser: gd, momentum, implicit

    A test-time memory *learns while it reads*: at every token it takes one step of an inner optimiser on
    the loss $\ell(M(k_t), v_t)$. Here the memory is a matrix $W \in \mathbb{R}^{D_k \times D_v}$ with the
    `l2` bias, $\ell = \tfrac12 \|k_t W - v_t\|^2$, so the gradient is $G_t = k_t^\top e_t$ with the error
    $e_t = k_t W_{t-1} - v_t$, and no retention ($\alpha = 1$). Only the step $U_t$ changes:

    $$
    \begin{aligned}
    \textbf{gd:}\quad & U_t = -\eta\, k_t^\top e_t && \text{(TTT-linear, DeltaNet)} \\
    \textbf{momentum:}\quad & S_t = \theta S_{t-1} - \eta\, k_t^\top e_t,\quad U_t = S_t && \text{(Titans' optimiser, here on a matrix)} \\
    \textbf{implicit:}\quad & U_t = -\frac{\eta}{1 + \eta \|k_t\|^2}\, k_t^\top e_t && \text{(Longhorn)} \\
    \textbf{then:}\quad & W_t = W_{t-1} + U_t
    \end{aligned}
    $$

    The implicit step is the *closed-form* solution of
    $\min_W \tfrac12\|k_t W - v_t\|^2 + \tfrac{1}{2\eta}\|W - W_{t-1}\|_F^2$: it evaluates the gradient at
    the point it lands on instead of the point it leaves.

    **What you will learn**

    - why explicit gd on the `l2` bias **diverges when $\eta\|k\|^2 > 2$**, and why the implicit step is
      **stable for every η**;
    - how momentum with weight θ changes both the best η and the edge of stability;
    - what each optimiser does with a **rewrite** (a key written again with a new value): does the memory
      hold the latest value, the old one, or a blend?

    Everything here is a memory probe (`ml.memory_scan` on random keys and values, no training): every
    chart updates as you move a slider.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 1. One pair, written again and again

    Write the same unit key $k$ with the same value $v$ at every token and read it back after each
    write (`memory_scan` reads after writing, $o_t = k W_t$). Multiply the gd update by $k$ and the error
    obeys a one-dimensional recursion:

    $$
    e_{t+1} = (1 - \eta\|k\|^2)\, e_t \quad\text{(gd)}, \qquad
    e_{t+1} = \frac{1}{1 + \eta\|k\|^2}\, e_t \quad\text{(implicit)}, \qquad
    \begin{cases} m_{t+1} = \theta m_t - \eta\|k\|^2 e_t \\ e_{t+1} = e_t + m_{t+1} \end{cases} \quad\text{(momentum)}
    $$

    gd shrinks the error only while $|1 - \eta\|k\|^2| < 1$, i.e. $\eta\|k\|^2 < 2$; beyond that every
    step overshoots further than the last. The implicit factor lies in $(0, 1)$ for **every** $\eta > 0$:
    a large η just means "jump (almost) all the way to $v$". Momentum is a heavy ball: on this single
    direction it is stable for $\eta\|k\|^2 < 2(1 + \theta)$, but it *rings* (overshoots and swings
    back) once $(1 + \theta - \eta\|k\|^2)^2 < 4\theta$.
    """)
    return


@app.cell
def _():
    eta_one = mo.ui.slider(0.05, 4.0, step=0.05, value=2.2, label="η", show_value=True)
    theta_one = mo.ui.slider(0.0, 0.95, step=0.05, value=0.5, label="θ (momentum)", show_value=True)
    mo.hstack([eta_one, theta_one], justify="start")
    return eta_one, theta_one


@app.function
def linear_spec(optimizer):
    """A linear memory with the l2 bias and no retention, stepping with `optimizer`."""
    return ml.MemorySpec(memory="linear", bias="l2", retention="none", optimizer=optimizer)


@app.function
def repeated_pair_errors(eta, theta, writes=12, dim=16):
    """Relative error ‖k W_t − v‖ / ‖v‖ after each of `writes` writes of one unit pair, per optimiser."""
    gen = torch.Generator().manual_seed(0)
    key = torch.nn.functional.normalize(torch.randn(dim, generator=gen), dim=0)
    value = torch.randn(dim, generator=gen)
    keys = key.expand(1, writes, 1, dim)
    values = value.expand(1, writes, 1, dim)
    rows = []
    for optimizer in ("gd", "momentum", "implicit"):
        with torch.no_grad():
            reads, _ = ml.memory_scan(keys, keys, values, eta=eta, alpha=1.0,
                                      theta=theta if optimizer == "momentum" else None, spec=linear_spec(optimizer))
        errors = (reads[0, :, 0] - value).norm(dim=-1) / value.norm()
        rows += [{"optimizer": optimizer, "write": t + 1, "error": e} for t, e in enumerate(errors.tolist())]
    return pl.DataFrame(rows)


@app.cell(hide_code=True)
def _(eta_one, theta_one):
    _frame = repeated_pair_errors(eta_one.value, theta_one.value).with_columns(
        # float32 reaches exactly 0 at η = 1: floor it so the log axis can draw it
        pl.col("error").clip(1e-7, 1e12).alias("shown")
    )
    _pick, _opacity = legend_pick("optimizer")
    (
        alt.Chart(_frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("write:Q", title="number of writes of the same pair"),
            y=alt.Y("shown:Q", scale=alt.Scale(type="log"), title="relative error ‖kW − v‖/‖v‖ (log)"),
            color=alt.Color("optimizer:N", title="optimizer (click)"),
            opacity=_opacity,
            tooltip=["optimizer:N", "write:Q", alt.Tooltip("error:Q", format=".3g")],
        )
        .add_params(_pick)
        .properties(width=600, height=260,
                    title=f"One unit-norm pair written 12 times: η = {eta_one.value:g}, θ = {theta_one.value:g}")
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:** η = 1 (gd lands exactly on $v$ in one step: error 0, drawn at the $10^{-7}$ floor);
    η = 1.9 (gd still converges, flipping sign every step); η = 2.2 (gd grows by $1.2\times$ per write,
    implicit still converges). For momentum, find the η where it starts to ring at θ = 0.5 (the formula
    says $\eta > (1 - \sqrt\theta)^2 \approx 0.09$) and the η where it blows up ($\eta > 2(1+\theta) = 3$).
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 2. Stability over η: a stream of many pairs

    One repeated pair is the worst case for overshoot; real streams write many *different* keys. Here
    $N$ pairs are written once each (`kv_stream`: unit keys, values of norm ≈ 1) and every key is read
    back from the final memory. With $N \le D_k$ the keys are orthonormal and never interfere; with
    $N > D_k$ they are random directions, every write disturbs every other pair, and the factors
    $(I - \eta\, k_t^\top k_t)$ of gd, each with eigenvalue $1 - \eta\|k_t\|^2$ along its key, multiply
    up: for $\eta > 2$ the error grows geometrically with the number of tokens (slowly just above 2:
    try $N = 96$). Each heatmap is one batched `memory_scan` (one memory per cell).
    Colour: mean relative recall error $\|k_u W_N - v_u\| / \|v_u\|$, **capped at 2** (a memory that
    answers 0 scores 1); the tooltip gives the uncapped value and the share of keys recalled (error < 0.5).
    The table lists each optimiser's best η and the first η where the error passes 10 (blown up).
    """)
    return


@app.cell
def _():
    dk = mo.ui.slider(8, 32, step=8, value=16, label="key dim Dk", show_value=True)
    n_pairs = mo.ui.slider(8, 96, step=8, value=24, label="pairs N", show_value=True)
    theta_grid = mo.ui.slider(0.0, 0.95, step=0.05, value=0.5, label="θ of the momentum row", show_value=True)
    mo.hstack([dk, n_pairs, theta_grid], justify="start")
    return dk, n_pairs, theta_grid


@app.function
def recall_errors(spec, stream, eta, theta=None):
    """Relative recall error ‖k_u W_N − v_u‖ / ‖v_u‖ of every key of `stream`, one memory per rate.

    eta (and theta, for momentum): tensors [B], constant over the stream; all B memories are written in
    one batched `memory_scan` -> [B, U].
    """
    B, T = eta.shape[0], stream.num_tokens
    # float64: a diverging memory grows for a long while before float32 would overflow, and the map shows it
    keys, values = (x.double().expand(B, -1, -1, -1) for x in (stream.keys, stream.values))

    def per_token(rate):
        return None if rate is None else rate.double().view(B, 1, 1).expand(B, T, 1)

    with torch.no_grad():
        _, state = ml.memory_scan(keys, keys, values, eta=per_token(eta), alpha=1.0, theta=per_token(theta),
                                  spec=spec)
        recalled = ml.read_memory(spec, state.W, stream.target_keys.double().expand(B, -1, -1, -1))
    targets = stream.targets.double()
    return ((recalled - targets).norm(dim=-1) / targets.norm(dim=-1))[..., 0]


@app.function
def error_summary(errors):
    """Mean error (inf once a memory diverged) and share recalled (error < 0.5) per row of errors [B, U]."""
    finite = torch.isfinite(errors).all(dim=-1)
    mean = torch.where(finite, errors.nan_to_num(0.0).mean(dim=-1), torch.inf)
    return mean.tolist(), (errors < 0.5).float().mean(dim=-1).tolist()


@app.cell
def _(dk, n_pairs, theta_grid):
    etas = torch.logspace(-1.3, 1.0, 28)  # 0.05 ... 10
    probe = kv_stream(n_pairs.value, dk.value, dk.value, seed=0)
    _rows = []
    for _optimizer in ("gd", "momentum", "implicit"):
        _theta = torch.full_like(etas, theta_grid.value) if _optimizer == "momentum" else None
        _mean, _recalled = error_summary(recall_errors(linear_spec(_optimizer), probe, etas, _theta))
        _rows += [
            {"optimizer": _optimizer, "eta": e, "mean_error": m, "recalled": r}
            for e, m, r in zip(etas.tolist(), _mean, _recalled)
        ]
    over_eta = pl.DataFrame(_rows).with_columns(pl.col("mean_error").clip(0, 2).alias("capped"))
    _best = over_eta.sort("mean_error").group_by("optimizer", maintain_order=True).first().sort("optimizer")
    _edge = (
        over_eta.filter(pl.col("mean_error") > BLOWN_UP)
        .group_by("optimizer")
        .agg(pl.col("eta").min().alias(f"first η with error > {BLOWN_UP}"))
    )
    eta_table = _best.join(_edge, on="optimizer", how="left").select(
        "optimizer",
        pl.col("eta").round(3).alias("best η"),
        pl.col("mean_error").round(3).alias("its mean error"),
        pl.col("recalled").round(3).alias("its share recalled"),
        pl.col(f"first η with error > {BLOWN_UP}").round(3),
    )
    script_print(
        f"stability over η: N = {n_pairs.value} pairs, Dk = {dk.value}, momentum θ = {theta_grid.value:g}",
        *(f"  {row['optimizer']}: best η {row['best η']:g} (mean error {row['its mean error']:.3g}), "
          + (f"blows up from η = {row[f'first η with error > {BLOWN_UP}']:g}"
             if row[f"first η with error > {BLOWN_UP}"] is not None else "never blows up")
          for row in eta_table.iter_rows(named=True)),
    )
    return eta_table, etas, over_eta, probe


@app.function
def error_heatmap(frame, row, row_title, title, row_sort="ascending"):
    """η × `row` heatmap of the capped mean recall error (blue: good recall, red: lost or diverged)."""
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("eta:O", title="η (log-spaced)", axis=alt.Axis(format=".2g", labelAngle=-45)),
            y=alt.Y(row, title=row_title, sort=row_sort),
            color=alt.Color("capped:Q", title="mean error (cap 2)",
                            scale=alt.Scale(scheme="redyellowblue", reverse=True, domain=[0, 2])),
            tooltip=[row, alt.Tooltip("eta:Q", title="η", format=".3g"),
                     alt.Tooltip("mean_error:Q", title="mean error", format=".3g"),
                     alt.Tooltip("recalled:Q", title="share recalled", format=".0%")],
        )
        .properties(width=600, title=title)
    )


@app.cell(hide_code=True)
def _(dk, n_pairs, over_eta, probe, theta_grid):
    _keys = "orthonormal" if probe.num_keys <= dk.value else "random"
    error_heatmap(
        over_eta, "optimizer:N", "optimizer",
        f"Recall after N = {n_pairs.value} pairs, Dk = {dk.value} ({_keys} keys), momentum θ = {theta_grid.value:g}",
    )
    return


@app.cell(hide_code=True)
def _(eta_table):
    mo.ui.table(eta_table, selection=None, show_download=False)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:** set $N \le D_k$ (orthonormal keys). Now nothing interferes: each pair is written once
    and gd recalls it with error exactly $|1 - \eta|$, so it "fails" for η > 1.5 but never explodes — the
    divergence above comes from keys that *overlap*. Then raise $N$ to $6 D_k$: the implicit row never
    turns red, at any η. Its best error is not better than gd's best (a matrix cannot hold more than
    $D_k$ independent pairs, whatever the optimiser); the gain is that *no* η breaks it.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ### Momentum: η × θ

    The same stream, now only the momentum optimiser, over a grid of θ. On keys that never come back,
    momentum keeps pushing along them: a key written once with step η receives in total
    $\eta(1 + \theta + \theta^2 + \dots) = \eta / (1 - \theta)$, so the best η shrinks like $1 - \theta$:
    the dashed line is (gd's best η) × $(1 - \theta)$. The edge of the red region moves left just as fast:
    the single-pair edge $\eta = 2(1 + \theta)$ of section 1 is no guide once keys overlap, momentum
    *accumulates* overshoot across them.
    """)
    return


@app.cell
def _(etas, probe):
    _thetas = torch.arange(0.0, 0.95, 0.1)
    _eta_grid, _theta_grid = torch.meshgrid(etas, _thetas, indexing="xy")
    _mean, _recalled = error_summary(
        recall_errors(linear_spec("momentum"), probe, _eta_grid.flatten(), _theta_grid.flatten())
    )
    over_theta = pl.DataFrame(
        {
            "eta": _eta_grid.flatten().tolist(),
            "theta": [round(t, 2) for t in _theta_grid.flatten().tolist()],
            "mean_error": _mean,
            "recalled": _recalled,
        }
    ).with_columns(pl.col("mean_error").clip(0, 2).alias("capped"))
    return (over_theta,)


@app.cell(hide_code=True)
def _(etas, over_theta):
    _heat = error_heatmap(
        over_theta, "theta:O", "θ", "Momentum: recall error over η × θ (dashed: gd's best η × (1 − θ))",
        row_sort="descending",
    )
    _gd_best = over_theta.filter(pl.col("theta") == 0).sort("mean_error")["eta"][0]
    # the grid column nearest to gd's best η × (1 − θ), per θ row
    _grid = etas.tolist()
    _ideal = pl.DataFrame({"theta": over_theta["theta"].unique().sort().to_list()}).with_columns(
        pl.col("theta")
        .map_elements(lambda t: min(_grid, key=lambda e: abs(e - _gd_best * (1 - t))), return_dtype=pl.Float64)
        .alias("eta")
    )
    _line = (
        alt.Chart(_ideal)
        .mark_line(strokeDash=[5, 4], color="black")
        .encode(x="eta:O", y=alt.Y("theta:O", sort="descending"), order="theta:Q",
                tooltip=["theta:Q", alt.Tooltip("eta:Q", format=".3g")])
    )
    _heat + _line
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 3. Rewrites: does the memory hold the latest value?

    Facts change: "Mary is in the kitchen" is later replaced by "Mary is in the garden". A stream with
    `rewrite_fraction` $r$ writes an earlier key again with a new value at $rN$ of its tokens; the right
    answer is the **latest** value. For every key written at least twice we fit its read-out as a
    combination of all the values ever written under it,
    $\hat v \approx a\, v_\text{latest} + b\, v_\text{previous} + \dots$ (least squares), and average
    $a$ and $b$.
    With orthonormal keys each optimiser has a closed form, the dots: the $k$-component of the
    memory follows $\hat v \leftarrow (1 - \eta)\hat v + \eta v$ for gd, so $a = \eta$, $b = \eta(1 - \eta)$;
    $\hat v \leftarrow \tfrac{1}{1+\eta}\hat v + \tfrac{\eta}{1+\eta} v$ for implicit, so
    $a = \tfrac{\eta}{1+\eta}$, $b = \tfrac{\eta}{(1+\eta)^2}$; and the `dot` bias of linear attention
    ($U = \eta\, k^\top v$, shown for contrast) only ever *adds*: $a = b = \eta$.
    """)
    return


@app.cell
def _():
    rewrite_fraction = mo.ui.slider(0.0, 0.6, step=0.05, value=0.4, label="rewrite fraction r", show_value=True)
    eta_rewrite = mo.ui.slider(0.1, 3.0, step=0.05, value=1.0, label="η", show_value=True)
    theta_rewrite = mo.ui.slider(0.0, 0.9, step=0.1, value=0.5, label="θ (momentum)", show_value=True)
    mo.hstack([rewrite_fraction, eta_rewrite, theta_rewrite], justify="start")
    return eta_rewrite, rewrite_fraction, theta_rewrite


@app.function
def clean_writes(stream):
    """Token positions of the clean writes (new or rewrite) of every key id, oldest first."""
    writes = {}
    for position in torch.nonzero(stream.kind < 2).flatten().tolist():
        writes.setdefault(int(stream.pair[position]), []).append(position)
    return writes


@app.function
def rewrite_weights(spec, stream, eta, theta=None):
    """Least-squares weights of every rewritten key's read-out on the values written under it, newest
    first: v̂_u ≈ a v_latest + b v_previous + (older writes). Returns the mean (a, b) over those keys,
    the share of them recalled (error to the latest value < 0.5) and their number."""
    with torch.no_grad():
        _, state = ml.memory_scan(stream.keys, stream.keys, stream.values, eta=eta, alpha=1.0, theta=theta, spec=spec)
        recalled = ml.read_memory(spec, state.W, stream.target_keys)[0, :, 0]
    weights, hits = [], []
    for key, positions in clean_writes(stream).items():
        if len(positions) < 2:
            continue
        written = stream.values[0, positions[::-1], 0].T  # [Dv, writes], newest first
        weights.append(torch.linalg.lstsq(written, recalled[key].unsqueeze(-1)).solution[:2, 0])
        target = stream.targets[0, key, 0]
        hits.append(float((recalled[key] - target).norm() / target.norm() < 0.5))
    return torch.stack(weights).mean(dim=0).tolist(), sum(hits) / len(hits), len(hits)


@app.cell
def _(dk, eta_rewrite, rewrite_fraction, theta_rewrite):
    mo.stop(rewrite_fraction.value == 0, mo.md("Set a rewrite fraction above 0 to see rewrites."))
    # N(1 − r) new keys fit in Dk orthonormal directions, so every difference below is the optimiser's
    rewrites = kv_stream(int(dk.value / (1 - rewrite_fraction.value)), dk.value, dk.value,
                         rewrite_fraction=rewrite_fraction.value, seed=1, keys="orthogonal")
    _eta = eta_rewrite.value
    _theory = {
        "gd": (_eta, _eta * (1 - _eta)),
        "implicit": (_eta / (1 + _eta), _eta / (1 + _eta) ** 2),
        "dot (linear attention)": (_eta, _eta),
    }
    _specs = {
        "gd": (linear_spec("gd"), None),
        "momentum": (linear_spec("momentum"), theta_rewrite.value),
        "implicit": (linear_spec("implicit"), None),
        "dot (linear attention)": (ml.preset("linear_attention"), None),
    }
    _rows = []
    for _name, (_spec, _theta) in _specs.items():
        (_a, _b), _share, _count = rewrite_weights(_spec, rewrites, _eta, _theta)
        _a_theory, _b_theory = _theory.get(_name, (None, None))
        _rows += [
            {"optimizer": _name, "weight on": "latest value (a)", "measured": _a, "theory": _a_theory,
             "recalled": _share, "keys": _count},
            {"optimizer": _name, "weight on": "previous value (b)", "measured": _b, "theory": _b_theory,
             "recalled": _share, "keys": _count},
        ]
    rewrite_table = pl.DataFrame(_rows)
    script_print(
        f"rewrites (r = {rewrite_fraction.value:g}, η = {_eta:g}): weight of the latest / previous value in the "
        "read-out, and share of rewritten keys holding the latest value:",
        # round(..) + 0.0: a weight of -1e-9 prints as 0.000, not -0.000
        *(f"  {_name}: {round(_latest['measured'], 3) + 0.0:.3f} / {round(_previous['measured'], 3) + 0.0:.3f}, "
          f"{_latest['recalled']:.0%}"
          for _name, _latest, _previous in zip(
              _specs, rewrite_table.filter(pl.col("weight on") == "latest value (a)").iter_rows(named=True),
              rewrite_table.filter(pl.col("weight on") == "previous value (b)").iter_rows(named=True))),
    )
    return rewrite_table, rewrites


@app.cell(hide_code=True)
def _(eta_rewrite, rewrite_table, rewrites):
    _bars = (
        alt.Chart(rewrite_table)
        .mark_bar()
        .encode(
            x=alt.X("weight on:N", title=None, axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("measured:Q", title="weight in the read-out"),
            color=alt.Color("weight on:N", title="weight on"),
            tooltip=["optimizer:N", "weight on:N", alt.Tooltip("measured:Q", format=".3f"),
                     alt.Tooltip("theory:Q", format=".3f"), alt.Tooltip("recalled:Q", title="latest recalled", format=".0%")],
        )
    )
    _dots = (
        alt.Chart(rewrite_table)
        .mark_point(shape="diamond", size=90, filled=True, color="black")
        .encode(x="weight on:N", y="theory:Q", tooltip=["optimizer:N", "weight on:N", alt.Tooltip("theory:Q", format=".3f")])
    )
    (
        alt.layer(_bars, _dots, data=rewrite_table)
        .properties(width=130, height=240)
        .facet(column=alt.Column("optimizer:N", title=None, sort=["gd", "momentum", "implicit", "dot (linear attention)"]))
        .properties(
            title=f"Read-out of the {rewrite_table['keys'][0]} rewritten keys (of {rewrites.num_keys}) at η = {eta_rewrite.value:g}: "
            "bars measured, diamonds closed form"
        )
    )
    return


@app.cell(hide_code=True)
def _(rewrite_table):
    mo.ui.table(
        rewrite_table.filter(pl.col("weight on") == "latest value (a)").select(
            "optimizer", pl.col("recalled").round(3).alias("share of rewritten keys holding the latest value")
        ),
        selection=None,
        show_download=False,
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:**

    - η = 1: gd (the delta rule) replaces the old value exactly ($a = 1$, $b = 0$); linear attention
      returns the *sum* of everything ever written under the key; implicit keeps a blend, half the new
      value and a quarter of the old one ($a = \tfrac12$, $b = \tfrac14$). Raise η to 3: implicit approaches the exact replacement
      ($a \to 1$, $b \to 0$ as $\eta \to \infty$) while gd overshoots ($a = 3$, $b = -6$).
    - Momentum with θ = 0.5 at η = 1 overshoots: the push along a key keeps going after the write, so $a$
      exceeds 1. Lower η towards $1 - \theta$ and $a$ comes back to about 1 — not exactly, because the
      total push $\eta(1 + \theta + \theta^2 + \dots)$ is paid out only by the tokens that *follow* the
      write: a key rewritten near the end of the stream has not received all of it yet.
    - The keys here are orthonormal: $N = D_k / (1 - r)$ tokens write at most $D_k$ distinct keys (set
      $D_k$ in section 2). A rewrite is a repeated key, section 1's situation: at η > 2, how do gd's
      weights grow with r?
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("05_deep_memory.py")
    mo.md(
        f"**Next:** [05 · Deep memory]({_next}): when a matrix is not enough — a small MLP as the memory, and "
        "what it takes to beat the best linear one."
    )
    return


if __name__ == "__main__":
    app.run()
