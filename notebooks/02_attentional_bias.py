"""02 · The attentional bias

What the memory calls an error: the dot, l2, lp, Huber and robust losses, and how each recalls values that carry noise and outliers.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite 02: attentional bias")

with app.setup(hide_code=True):
    import math

    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import miras_lite as ml
    from miras_lite.ui import course_link, legend_pick, script_print
    from miras_lite.bias import bias_gradient
    from miras_lite.spec import BIASES, HUBER_MODES
    from miras_lite.tasks.probes import kv_stream, probe_recall

    BIAS_COLORS = alt.Scale(domain=list(BIASES), range=["#e45756", "#4c78a8", "#f58518", "#54a24b", "#b279a2"])


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # The attentional bias: what the memory calls an error

    A test-time memory learns by gradient steps on an inner loss $\ell(M(k_t), v_t)$, the
    **attentional bias**. For a linear memory with gradient descent one write is
    $$
    e_t = k_t W_{t-1} - v_t, \qquad g_t = \frac{\partial \ell}{\partial \hat v}\Big|_{\hat v = k_t W_{t-1}}, \qquad
    W_t = W_{t-1} - \eta_t\, k_t^\top g_t .
    $$
    The memory never sees the loss itself: **everything the bias decides is the map from the error
    $e_t$ to the step direction $g_t$.**

    **What you will learn**

    - the shapes of $\ell(e)$ and $g(e)$ for `dot`, `l2`, `lp`, `huber` and `robust`, and what $p$, $\delta$
      and $\Delta$ change;
    - why a *bounded* gradient (Huber, $\ell_p$ with $p$ near 1) limits the damage of an outlier value, and
      what it costs on ordinary values;
    - that `robust` is robust to small *shifts* of the value, not to outliers.
    """)
    return


@app.cell
def _():
    p = mo.ui.slider(1.0, 4.0, step=0.1, value=3.0, label="p (lp)", show_value=True)
    delta = mo.ui.slider(0.1, 2.0, step=0.05, value=1.2, label="δ (huber)", show_value=True)
    huber_mode = mo.ui.dropdown(options=list(HUBER_MODES), value="norm", label="huber mode")
    robust_delta = mo.ui.slider(0.0, 2.0, step=0.05, value=0.5, label="Δ (robust)", show_value=True)
    mo.hstack([p, delta, huber_mode, robust_delta], justify="start", wrap=True)
    return delta, huber_mode, p, robust_delta


@app.cell
def _(delta, huber_mode, p, robust_delta):
    # One spec per bias, sharing the parameters set above (linear memory, no forgetting).
    specs = {
        bias: ml.MemorySpec(
            bias=bias, retention="none", p=p.value, delta=delta.value, huber_mode=huber_mode.value,
            robust_delta=robust_delta.value,
        )
        for bias in BIASES
    }
    return (specs,)


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Loss and gradient for a scalar error

    With $D_v = 1$ the error is a number $e$. Below, $g(e)$ is computed by the library's own
    `miras_lite.bias.bias_gradient` on a grid of errors, and $\ell(e) = \int_0^e g(s)\,ds$ is its integral
    (each loss up to a constant, so every curve passes through $\ell(0) = 0$). `dot` needs a target: $v = 1$.

    | bias | $\ell$ | $g$ |
    |:--|:--|:--|
    | `dot` | $-\langle \hat v, v\rangle$ | $-v$ |
    | `l2` | $\tfrac12 \lVert e\rVert^2$ | $e$ |
    | `lp` | $\tfrac1p \sum_j \lvert e_j\rvert^p$ | $e \odot (e^2 + \epsilon)^{(p-2)/2}$ |
    | `huber` (`coord`) | $\tfrac12 e_j^2$ if $\lvert e_j\rvert \le \delta$ else $\delta\lvert e_j\rvert - \tfrac12\delta^2$, summed | $\operatorname{clamp}(e, -\delta, \delta)$ |
    | `robust` | $\max_{\lVert s\rVert \le \Delta} \tfrac12\lVert \hat v - (v + s)\rVert^2 = \tfrac12(\lVert e\rVert + \Delta)^2$ | $e + \Delta\, e / \sqrt{\lVert e\rVert^2 + \epsilon}$ |

    Click a bias in the legend to highlight it in both panels.
    """)
    return


@app.cell
def _(specs):
    # errors on a grid symmetric around 0, so the integral can start at the middle point
    errors = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)
    middle = len(errors) // 2
    curves = []
    for _bias, _spec in specs.items():
        _g = bias_gradient(_spec, errors[:, None], torch.ones(len(errors), 1, dtype=torch.float64))[:, 0]
        _integral = torch.cumulative_trapezoid(_g, errors)
        _loss = torch.cat([_g.new_zeros(1), _integral]) - _integral[middle - 1]
        curves.append(
            pl.DataFrame({"bias": _bias, "e": errors.tolist(), "loss ℓ(e)": _loss.tolist(), "gradient g(e)": _g.tolist()})
        )
    curves = pl.concat(curves)
    return (curves,)


@app.cell(hide_code=True)
def _(curves):
    _pick, _opacity = legend_pick("bias")
    _base = alt.Chart(curves).encode(
        x=alt.X("e:Q", title="error e = prediction − value"),
        color=alt.Color("bias:N", scale=BIAS_COLORS, title="bias (click)"),
        opacity=_opacity,
        tooltip=[
            "bias:N", alt.Tooltip("e:Q", format=".2f"), alt.Tooltip("loss ℓ(e):Q", format=".3f"),
            alt.Tooltip("gradient g(e):Q", format=".3f"),
        ],
    )
    _loss = (
        _base.mark_line().encode(y=alt.Y("loss ℓ(e):Q")).add_params(_pick)
        .properties(width=300, height=280, title="ℓ(e)")
    )
    _grad = _base.mark_line().encode(y=alt.Y("gradient g(e):Q")).properties(
        width=300, height=280, title="g(e): how hard the memory is pushed"
    )
    _loss | _grad
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Reading the picture

    - **`l2`**: $g = e$. The step grows with the error without limit: an outlier ten times larger than a
      normal value moves the memory ten times as far. At $\eta = 1$ with a unit key, one step fits the
      value exactly (the delta rule).
    - **`lp`**: $\lvert g\rvert = \lvert e\rvert^{p-1}$ per coordinate. With $p > 2$ small errors are
      nearly ignored and large ones amplified; with $p < 2$ the reverse, and at $p = 1$ the step is
      $\operatorname{sign}(e)$ (smoothed by $\epsilon$ near 0): every error, tiny or huge, pushes equally hard.
      Only $p = 2$ gives a step that is exact at $\eta = 1$: for $p \ne 2$ the right $\eta$ depends on the
      size of the errors.
    - **`huber`**: exactly `l2` while $\lvert e\rvert \le \delta$, then the slope is capped at $\delta$.
      Normal errors are fitted as by `l2`; no error can push harder than $\delta$.
    - **`robust`**: the `l2` loss of the *worst* value within distance $\Delta$ of $v$. Its step is the
      `l2` step plus $\Delta$ in the direction of the error, so it pushes *harder* than `l2` — a
      pessimistic fit that guards against small value shifts, not against outliers.
    - **`dot`**: $g = -v$ whatever the memory already predicts: it never stops writing (see notebook 01).

    For a scalar the three Huber modes coincide. For a vector they do not: `coord` clips each coordinate
    (which bends the direction of $g$), `norm` shortens the whole vector to length $\delta$ (same
    direction), `mixture` (Yaad) switches to $\delta$ times the smoothed $\operatorname{sign}(e)$.
    Here is $g$ for the error $e = (2, 0.3)$ and your $\delta$:
    """)
    return


@app.cell(hide_code=True)
def _(delta):
    _e = torch.tensor([[2.0, 0.3]], dtype=torch.float64)
    _rows = []
    for _mode in HUBER_MODES:
        _g = bias_gradient(ml.MemorySpec(bias="huber", huber_mode=_mode, delta=delta.value), _e, torch.zeros_like(_e))[0]
        _cos = float(_g @ _e[0]) / float(_g.norm() * _e[0].norm())
        _rows.append(
            {
                "huber mode": _mode,
                "g₁": round(_g[0].item(), 3),
                "g₂": round(_g[1].item(), 3),
                "‖g‖": round(_g.norm().item(), 3),
                "angle to e (°)": round(math.degrees(math.acos(min(1.0, _cos))), 1),
            }
        )
    mo.ui.table(pl.DataFrame(_rows), selection=None, show_download=False)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:** set $\delta = 2$: the error $(2, 0.3)$ has norm $2.02 > \delta$, so `norm` still shortens
    it (by one percent) while `coord` changes nothing. Drop $\delta$ to 0.2: `coord` and `mixture` now
    return $(0.2, 0.2)$, pointing at 45° whatever the error's direction; `norm` keeps the direction.

    ## Recall when values carry noise and outliers

    Now a real memory. A probe stream (`kv_stream`) writes $U$ keys, each once, with its clean value plus
    Gaussian noise of relative size $\sigma$; then some **outlier** tokens rewrite an already stored key with
    a corrupt value of norm $s$. The target of every key stays its clean value (`probe_recall` reads each
    key back from the final memory). Keys are orthonormal ($U \le D_k$), so there is no crosstalk: every
    difference below comes from the bias. All biases share the $\eta$ below and the parameters above.
    """)
    return


@app.cell
def _():
    noise = mo.ui.slider(0.0, 1.0, step=0.05, value=0.2, label="value noise σ", show_value=True)
    outlier_fraction = mo.ui.slider(0.0, 0.4, step=0.025, value=0.15, label="outlier fraction", show_value=True)
    outlier_scale = mo.ui.slider(1.0, 20.0, step=0.5, value=10.0, label="outlier norm s", show_value=True)
    eta = mo.ui.slider(0.1, 1.5, step=0.05, value=1.0, label="η (step size)", show_value=True)
    mo.hstack([noise, outlier_fraction, outlier_scale, eta], justify="start", wrap=True)
    return eta, noise, outlier_fraction, outlier_scale


@app.cell
def _(eta, noise, outlier_fraction, outlier_scale, specs):
    # 24 tokens and Dk = 24: at most 24 distinct keys, so the keys are always orthonormal.
    stream = kv_stream(
        24, 24, 24, value_noise=noise.value, outlier_fraction=outlier_fraction.value,
        outlier_scale=outlier_scale.value,
    )
    hit = set(stream.pair[stream.kind == 2].tolist())
    recall = pl.concat(
        [
            probe_recall(_spec, stream, eta=eta.value).with_columns(
                pl.lit(_bias).alias("bias"),
                pl.col("pair").is_in(list(hit)).replace_strict({True: "hit by an outlier", False: "clean"}).alias("key"),
            )
            for _bias, _spec in specs.items()
        ]
    )
    _means = recall.group_by("bias", "key", maintain_order=True).agg(pl.col("error").mean())
    script_print(
        f"noisy stream: {stream.num_keys} keys, {len(hit)} hit by an outlier (σ = {noise.value:g}, "
        f"outlier norm {outlier_scale.value:g}, η = {eta.value:g}); mean relative recall error:",
        *(f"  {row['bias']}: {row['error']:.3g} ({row['key']})" for row in _means.iter_rows(named=True)),
    )
    return hit, recall, stream


@app.cell(hide_code=True)
def _(recall):
    _means = recall.group_by("bias", "key").agg(
        pl.col("error").mean().alias("mean error"), pl.col("correct").mean().alias("recalled"), pl.len().alias("keys")
    )
    alt.Chart(_means).mark_bar().encode(
        x=alt.X("bias:N", sort=list(BIASES), title=None),
        xOffset=alt.XOffset("key:N", sort=["clean", "hit by an outlier"]),
        y=alt.Y("mean error:Q", scale=alt.Scale(type="symlog"), title="mean relative error (symlog)"),
        color=alt.Color("key:N", scale=alt.Scale(domain=["clean", "hit by an outlier"], range=["#4c78a8", "#e45756"])),
        tooltip=["bias:N", "key:N", "keys:Q", alt.Tooltip("mean error:Q", format=".3f"),
                 alt.Tooltip("recalled:Q", format=".2f", title="recalled (error < 0.5)")],
    ).properties(width=520, height=280, title="Error of clean keys and of keys hit by an outlier")
    return


@app.cell(hide_code=True)
def _(hit, recall, stream):
    _table = (
        recall.group_by("bias")
        .agg(
            pl.col("error").filter(pl.col("key") == "clean").mean().round(3).alias("error, clean keys"),
            pl.col("error").filter(pl.col("key") != "clean").mean().round(3).alias("error, hit keys"),
            pl.col("error").mean().round(3).alias("error, all keys"),
            pl.col("correct").mean().round(2).alias("recalled (err < 0.5)"),
            pl.col("cosine").mean().round(3).alias("mean cosine"),
        )
        .sort(pl.col("bias").replace_strict({b: i for i, b in enumerate(BIASES)}))
    )
    mo.vstack(
        [
            mo.md(f"{stream.num_keys} keys, {len(hit)} of them hit by an outlier ({stream.num_tokens} tokens)."),
            mo.ui.table(_table, selection=None, show_download=False),
        ]
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## What the bars say

    - **Clean keys.** A value seen once can only be stored as it arrived: `l2` at $\eta = 1$ stores
      $v + \text{noise}$, so its error is about $\sigma$. Huber does the same as long as the first error
      $\lVert e\rVert \approx \lVert v\rVert \approx 1$ is below $\delta$; with a smaller $\delta$ it writes
      only part of the value. `robust` overshoots by $\Delta$ (its step is $(1 + \Delta/\lVert e\rVert)$
      times the `l2` step). `lp` with $p \ne 2$ takes a step of the wrong size.
    - **Keys hit by an outlier.** `l2` (and `dot`) follow the corrupt value all the way: the error is
      about $s$. Huber moves at most $\eta\delta$ in norm (`norm` mode), so the damage is about $\eta\delta$
      however large $s$ is — bounded influence is what "robust to outliers" means.
    - The trade-off: one $\delta$ serves both. Large enough to fit normal errors in one step, small enough
      to ignore outliers — possible only when outliers are much larger than normal errors.

    **Try this:**

    - Raise the outlier norm $s$ from 2 to 20: the `l2` bars for hit keys grow with $s$; `huber` stays put.
    - With `norm` mode and $\delta = 1.2$ clean keys are stored like `l2` and hit keys keep an error near
      $\eta\delta$. Lower $\delta$ to 0.5: outliers do less harm, but clean values are now only half
      written. Switch to `coord`: with $D_v = 24$ value coordinates, clipping each at $\delta$ lets an
      outlier move the value by up to $\delta\sqrt{D_v}$, so it protects only with a much smaller $\delta$.
    - Set $\eta = 1/(1 + \Delta)$ (0.65 for $\Delta = 0.5$): `robust` now stores clean values almost exactly.
      Why only almost? (Hint: $\lVert v\rVert$ is not exactly 1.)
    - Set $p = 1.5$ and lower $\eta$ until `lp` recalls clean keys: its step per coordinate is
      $\lvert e_j\rvert^{0.5}$, larger than the coordinate itself when it is small.
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("03_retention.py")
    mo.md(
        f"**Next:** [03 · Retention]({_next}): what a memory keeps and what it lets go — forgetting curves of "
        "five retention gates."
    )
    return


if __name__ == "__main__":
    app.run()
