"""03 · Retention

What a memory keeps and what it lets go: forgetting curves, norm and sparsity of the none, l2, lq, kl and elastic retention gates.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite 03: retention")

with app.setup(hide_code=True):
    import math

    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import miras_lite as ml
    from miras_lite.ui import course_link, legend_pick, script_print
    from miras_lite.spec import RETENTIONS
    from miras_lite.tasks.probes import forgetting_curve, kv_stream

    RETENTION_COLORS = alt.Scale(
        domain=list(RETENTIONS), range=["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756"]
    )
    # |W_ij| below this counts as zero (elastic's soft threshold makes exact zeros)
    TINY = 1e-6


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # Retention: what a memory keeps, and what it lets go

    Every write adds a step $U_t = -\eta_t\, k_t^\top g_t$ to an accumulator $A$; the **retention gate**
    decides what happens to the old contents, and the memory that is read is $W_t = \mathcal{N}(A_t)$
    (step 5 of the update rule in the tour, notebook 00):

    | retention | update | read-out $W_t$ | forgets by |
    |:--|:--|:--|:--|
    | `none` | $A_t = A_{t-1} + U_t$ | $A_t$ | nothing (only crosstalk) |
    | `l2` | $A_t = \alpha_t A_{t-1} + U_t$ | $A_t$ | exponential decay $\alpha^{\text{age}}$ |
    | `lq` | $A_t = \alpha_t A_{t-1} + U_t$ | $A_t / \max(\lVert A_t\rVert_q, \epsilon)^{q-2}$ | rescaling the whole memory |
    | `kl` | $A_t = \alpha_t A_{t-1} + U_t$ (logits) | $c\cdot\operatorname{softmax}_{\text{key axis}}(A_t)$ | competition for a fixed mass $c$ |
    | `elastic` | $A_t = S_\gamma(\alpha_t A_{t-1} + U_t)$ | $A_t$ | shrinking every entry by $\gamma$ per token |

    with the soft threshold $S_\gamma(z) = \operatorname{sign}(z)\max(\lvert z\rvert - \gamma, 0)$ and
    $\lVert A\rVert_q$ the $q$-norm of all entries.

    **What you will learn**

    - the *forgetting curve* of each gate: how well a pair is recalled as a function of its age;
    - why `l2` forgets exponentially, `elastic` linearly and `lq` not by age at all;
    - how each gate shapes the memory itself: its norm over time, and the exact zeros (sparsity) of
      `elastic`.
    """)
    return


@app.cell
def _():
    bias = mo.ui.dropdown(options={"l2 (delta rule)": "l2", "dot (Hebbian)": "dot"}, value="l2 (delta rule)", label="bias")
    n_pairs = mo.ui.slider(8, 96, step=8, value=32, label="pairs N", show_value=True)
    key_dim = mo.ui.slider(8, 64, step=8, value=32, label="Dk = Dv", show_value=True)
    eta = mo.ui.slider(0.1, 1.5, step=0.05, value=1.0, label="η", show_value=True)
    alpha = mo.ui.slider(0.8, 1.0, step=0.005, value=0.95, label="α (l2 decay)", show_value=True)
    alpha_for_all = mo.ui.checkbox(value=False, label="apply α to lq, kl and elastic too")
    q = mo.ui.slider(2.0, 6.0, step=0.25, value=4.0, label="q (lq)", show_value=True)
    scale = mo.ui.slider(0.5, 64.0, step=0.5, value=1.0, label="c (kl simplex scale)", show_value=True)
    gamma = mo.ui.slider(0.0, 0.03, step=0.001, value=0.005, label="γ (elastic)", show_value=True)
    mo.vstack(
        [
            mo.hstack([bias, n_pairs, key_dim, eta], justify="start", wrap=True),
            mo.hstack([alpha, alpha_for_all], justify="start", wrap=True),
            mo.hstack([q, scale, gamma], justify="start", wrap=True),
        ]
    )
    return alpha, alpha_for_all, bias, eta, gamma, key_dim, n_pairs, q, scale


@app.cell
def _(alpha, alpha_for_all, bias, gamma, q, scale):
    # grad_at="retained": with l2 bias and l2 retention this is Gated DeltaNet.
    specs = {
        retention: ml.MemorySpec(
            bias=bias.value, retention=retention, grad_at="retained", q=q.value, simplex_scale=scale.value,
            gamma=gamma.value,
        )
        for retention in RETENTIONS
    }
    # Each gate runs with α = 1 unless it is the l2 decay (or the box is ticked): one mechanism per curve.
    alphas = {
        retention: alpha.value if retention == "l2" or (alpha_for_all.value and retention != "none") else 1.0
        for retention in RETENTIONS
    }
    return alphas, specs


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Forgetting curves

    One stream of $N$ pairs (`kv_stream`: unit keys, orthonormal while $N \le D_k$, values of norm about 1)
    is written into a fresh memory per gate; then every key is read from the final memory
    (`forgetting_curve`). The *age* of a pair is the number of tokens written after it. Left: fraction
    of pairs recalled (relative error < 0.5) per age bin; right: mean relative error
    $\lVert k_u W_N - v_u\rVert / \lVert v_u\rVert$. Click a gate in the legend to highlight it.
    """)
    return


@app.cell
def _(alphas, eta, key_dim, n_pairs, specs):
    _bins = min(8, n_pairs.value)
    forgetting = pl.concat(
        [
            forgetting_curve(
                _spec, num_pairs=n_pairs.value, key_dim=key_dim.value, value_dim=key_dim.value, eta=eta.value,
                alpha=alphas[_retention], bins=_bins,
            ).with_columns(
                pl.lit(_retention).alias("retention"),
                ((pl.col("age_lo") + pl.col("age_hi") - 1) / 2).alias("age"),
            )
            for _retention, _spec in specs.items()
        ]
    )
    _overall = forgetting.group_by("retention", maintain_order=True).agg(
        ((pl.col("accuracy") * pl.col("count")).sum() / pl.col("count").sum()).alias("recalled")
    )
    script_print(
        f"forgetting curves: N = {n_pairs.value} pairs, Dk = Dv = {key_dim.value}, η = {eta.value:g}; "
        "share of pairs recalled from the final memory:",
        *(f"  {row['retention']} (α = {alphas[row['retention']]:g}): {row['recalled']:.0%}"
          for row in _overall.iter_rows(named=True)),
    )
    return (forgetting,)


@app.cell(hide_code=True)
def _(forgetting):
    _pick, _opacity = legend_pick("retention")
    _base = alt.Chart(forgetting).encode(
        x=alt.X("age:Q", title="age (tokens written after the pair)"),
        color=alt.Color("retention:N", scale=RETENTION_COLORS, title="retention (click)"),
        opacity=_opacity,
        tooltip=[
            "retention:N", "age_lo:Q", "age_hi:Q", "count:Q",
            alt.Tooltip("accuracy:Q", format=".2f", title="recalled"),
            alt.Tooltip("mean_error:Q", format=".3f", title="mean error"),
        ],
    )
    _recalled = (
        _base.mark_line(point=True)
        .encode(y=alt.Y("accuracy:Q", title="fraction recalled", scale=alt.Scale(domain=[0, 1])))
        .add_params(_pick)
        .properties(width=300, height=260, title="Recall vs age")
    )
    _error = (
        _base.mark_line(point=True)
        .encode(y=alt.Y("mean_error:Q", title="mean relative error"))
        .properties(width=300, height=260, title="Error vs age")
    )
    _recalled | _error
    return


@app.cell(hide_code=True)
def _(alphas):
    _half_life = math.log(2) / -math.log(alphas["l2"]) if alphas["l2"] < 1 else math.inf
    _at_alpha = (
        f"With α = {alphas['l2']:g} the `l2` gate recalls pairs younger than **{_half_life:.1f}** tokens."
        if alphas["l2"] < 1 else "With α = 1 the `l2` gate is `none`."
    )
    _reading = mo.md(r"""
    ## Reading the curves

    - **`none`** keeps everything: with orthonormal keys ($N \le D_k$) every age is recalled exactly.
      Raise $N$ past $D_k$ and it loses old pairs anyway, through crosstalk (notebook 01) — forgetting
      without a plan.
    - **`l2`** multiplies the whole memory by $\alpha$ per token, so a pair of age $a$ comes back as
      $\alpha^a v$ (orthogonal keys) with relative error $1 - \alpha^a$. It is recalled while
      $\alpha^a > \tfrac12$, i.e. for ages below $\ln 2 / \ln(1/\alpha)$ (for your $\alpha$: see the
      last line).
    - **`elastic`** subtracts $\gamma$ from every entry's magnitude per token: a contribution of size
      $w$ survives about $w/\gamma$ tokens and then is *exactly* zero. Forgetting grows linearly with age,
      and small entries die first.
    - **`lq`** does not forget by age: $A$ is never decayed (at $\alpha = 1$), and one number,
      $\lVert A_t\rVert_q^{q-2}$, rescales the whole memory at read time. Every pair is answered in the right
      *direction* (cosine 1 in the table below) but with the same wrong length, and the scale changes as
      the memory fills: for $q > 2$ each new write shrinks every stored answer. At $q = 2$ it is `none`.
    - **`kl`** keeps each column of $W$ on a simplex: entries are positive and sum to $c$ over the
      $D_k$ key rows. $W$ starts uniform ($c/D_k$ everywhere); while the logits are small, a step
      $-\eta\, k_u^\top g_u$ changes the answer to $k_u$ by only about $-\tfrac{c}{D_k}\,\eta\, g_u$, and
      every answer carries the offset $\tfrac{c}{D_k}\sum_i k_{u,i}$ in each coordinate. So on signed random
      values a *linear* `kl` memory recalls almost nothing at any $c$ — Memora pairs this gate with an MLP
      memory and learned projections. Its norm, though, is pinned (left chart below).
    """)
    mo.vstack([_reading, mo.md(_at_alpha)])
    return


@app.cell
def _(alphas, eta, key_dim, n_pairs, specs):
    # The same stream as forgetting_curve's (seed 0), now keeping W after every token.
    stream = kv_stream(n_pairs.value, key_dim.value, key_dim.value)
    snapshots = {}
    with torch.no_grad():
        for _retention, _spec in specs.items():
            _, _state = ml.memory_scan(
                stream.keys, stream.keys, stream.values, eta=eta.value, alpha=alphas[_retention], spec=_spec,
                return_states=1,
            )
            snapshots[_retention] = _state.snapshots[0, :, 0]
    return snapshots, stream


@app.cell
def _(snapshots):
    memory_over_time = pl.concat(
        [
            pl.DataFrame(
                {
                    "retention": _retention,
                    "t": list(range(1, len(_W) + 1)),
                    "‖W_t‖": _W.flatten(1).norm(dim=1).tolist(),
                    "fraction of zeros": (_W.abs() < TINY).flatten(1).float().mean(dim=1).tolist(),
                }
            )
            for _retention, _W in snapshots.items()
        ]
    )
    return (memory_over_time,)


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## The memory itself

    Left: the Frobenius norm $\lVert W_t\rVert$ after $t$ writes. Right: the fraction of entries with
    $\lvert W_{t,ij}\rvert < 10^{-6}$. With orthonormal keys and values of norm 1, `none` grows like
    $\sqrt t$ (the pairs are orthogonal, so $\lVert W_t\rVert^2 = \sum \lVert v_i\rVert^2$); `l2` levels off
    near $1/\sqrt{1 - \alpha^2}$, the sum of the geometric series $\sum_a \alpha^{2a}$; `kl` cannot leave
    $\lVert W\rVert \le c\sqrt{D_v}$. Only `elastic` makes exact zeros: an entry is zero whenever the
    decayed old value plus the new step is within $\gamma$ of 0.
    """)
    return


@app.cell(hide_code=True)
def _(memory_over_time):
    _pick, _opacity = legend_pick("retention")
    _base = alt.Chart(memory_over_time).encode(
        x=alt.X("t:Q", title="t (pairs written)"),
        color=alt.Color("retention:N", scale=RETENTION_COLORS, title="retention (click)"),
        opacity=_opacity,
        tooltip=[
            "retention:N", "t:Q", alt.Tooltip("‖W_t‖:Q", format=".3f"),
            alt.Tooltip("fraction of zeros:Q", format=".3f"),
        ],
    )
    _norm = (
        _base.mark_line().encode(y=alt.Y("‖W_t‖:Q", title="‖W_t‖ (Frobenius)"))
        .add_params(_pick)
        .properties(width=300, height=240, title="Memory norm over time")
    )
    _zeros = (
        _base.mark_line().encode(y=alt.Y("fraction of zeros:Q", title="fraction |W_ij| < 1e-6", scale=alt.Scale(domain=[0, 1])))
        .properties(width=300, height=240, title="Sparsity over time")
    )
    _norm | _zeros
    return


@app.cell(hide_code=True)
def _(alphas, forgetting, memory_over_time, snapshots, stream):
    # direction of the answers from the final memory: cosine between k_u W_N and v_u
    _targets = stream.targets[0, :, 0]
    _rows = []
    for _retention, _W in snapshots.items():
        _reads = stream.target_keys[0, :, 0] @ _W[-1]
        _last = memory_over_time.filter(pl.col("retention") == _retention).tail(1)
        _curve = forgetting.filter(pl.col("retention") == _retention)
        _rows.append(
            {
                "retention": _retention,
                "α used": round(alphas[_retention], 3),
                "recalled": round((_curve["accuracy"] * _curve["count"]).sum() / _curve["count"].sum(), 3),
                "mean error": round((_curve["mean_error"] * _curve["count"]).sum() / _curve["count"].sum(), 3),
                "mean cosine": round(torch.nn.functional.cosine_similarity(_reads, _targets, dim=-1).mean().item(), 3),
                "final ‖W‖": round(_last["‖W_t‖"][0], 3),
                "final zeros": round(_last["fraction of zeros"][0], 3),
            }
        )
    mo.ui.table(pl.DataFrame(_rows), selection=None, show_download=False)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    The final memory $W_N$ of one gate, entry by entry (white = 0). Pick `elastic` and raise $\gamma$ to
    watch the zeros spread; pick `kl` to see a memory with no negative entries.
    """)
    return


@app.cell
def _():
    shown = mo.ui.dropdown(options=list(RETENTIONS), value="elastic", label="show W_N of")
    shown
    return (shown,)


@app.cell(hide_code=True)
def _(shown, snapshots):
    _W = snapshots[shown.value][-1]
    _rows, _cols = _W.shape
    _limit = max(_W.abs().max().item(), TINY)
    alt.Chart(
        pl.DataFrame(
            {
                "i": [i for i in range(_rows) for _ in range(_cols)],
                "j": [j for _ in range(_rows) for j in range(_cols)],
                "W_ij": _W.flatten().tolist(),
            }
        )
    ).mark_rect().encode(
        x=alt.X("j:O", title="value coordinate j", axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("i:O", title="key coordinate i", axis=alt.Axis(labels=False, ticks=False)),
        color=alt.Color("W_ij:Q", scale=alt.Scale(scheme="redblue", domain=[-_limit, _limit], reverse=True)),
        tooltip=["i:O", "j:O", alt.Tooltip("W_ij:Q", format=".4f")],
    ).properties(width=300, height=300, title=f"W_N, retention = {shown.value}")
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:**

    - Lower $\alpha$ to 0.85 and read the age limit under *Reading the curves*: does the `l2` recall
      curve drop there?
    - Set $\gamma = 0$: `elastic` becomes `none`. Raise it step by step: the forgetting curve bends down
      from the oldest ages first, and the sparsity climbs.
    - Set $q = 2$: `lq` coincides with `none`. Try $q = 3$: then $\lVert W_t\rVert_3 = 1$ after every
      write — a fixed budget that all pairs share.
    - Raise $N$ past $D_k$: now keys overlap and `none` forgets through crosstalk. Which gate recalls the
      newest pairs best?
    - Switch the bias to `dot`: for `none`, `l2` and `lq` nothing changes while $N \le D_k$ — a new
      orthonormal key reads 0 from a memory spanned by the old keys, so $g = e = -v$ for both biases.
      `elastic` and `kl` do change: the soft threshold moves $W$ out of that span, and the simplex memory
      starts uniform, so a new key reads something non-zero that only the `l2` bias corrects.
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("04_optimizers.py")
    mo.md(
        f"**Next:** [04 · Inner optimisers]({_next}): gd, momentum and the implicit step — when a memory's "
        "updates blow up, and what each keeps when a fact is rewritten."
    )
    return


if __name__ == "__main__":
    app.run()
