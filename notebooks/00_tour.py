"""00 · A tour of test-time memorization

Pick a model on the four axes of the Miras framework, read its update rule, and see how well it recalls what it was told.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite 00: a tour")

with app.setup(hide_code=True):
    import time

    import altair as alt
    import marimo as mo
    import polars as pl
    import torch
    import torch.nn.functional as F

    import miras_lite as ml
    from miras_lite.ui import AXES, axis_dropdowns, chosen_spec, course_link, script_print


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # A tour of test-time memorization

    A sequence model's token mixer can be read as an **associative memory** $M$ that is *trained while
    it reads*: at every token it sees a key $k_t$ and a value $v_t$, takes one step of an inner optimiser
    on a loss $\ell(M(k_t), v_t)$, and forgets part of the past through a retention gate. Four choices
    define a model (the *Miras* framework):

    | axis | what it decides |
    |:---|:---|
    | **memory** | what $M$ is: a matrix $W$ (`linear`) or a small residual MLP (`mlp`) |
    | **attentional bias** | the loss $\ell$ the memory minimises: `dot`, `l2`, `lp`, `huber`, `robust` |
    | **retention** | how the past is kept: `none`, `l2` decay $\alpha$, `lq`, `kl`, `elastic` |
    | **optimizer** | the inner step: `gd`, `momentum` (θ), `implicit` |

    **What you will learn here:** which well-known models (linear attention, RetNet, DeltaNet, Gated
    DeltaNet, Longhorn, TTT, Titans, Moneta, Yaad, Memora) are points of this space, what their update
    equation is, and how well each one *recalls* what it was told as the stream gets longer.
    """)
    return


@app.cell
def _():
    preset_choice = mo.ui.dropdown(
        options=[*ml.PRESETS, "custom"], value="gated_deltanet", label="preset"
    )
    # the stream's size stays as you set it when you switch models
    n_pairs = mo.ui.slider(8, 256, step=8, value=64, label="pairs N", show_value=True)
    dk = mo.ui.slider(8, 64, step=8, value=32, label="key dim Dk", show_value=True)
    return dk, n_pairs, preset_choice


@app.cell
def _(preset_choice):
    # Picking a preset resets the four axes to that model; change any axis to leave it.
    base, memory, bias, retention, optimizer, grad_at = axis_dropdowns(preset_choice.value)
    # η = 1 writes a unit-norm key exactly into a linear memory; an MLP memory needs much smaller steps.
    eta = mo.ui.slider(
        0.0, 3.0, step=0.01, value=1.0 if base.memory == "linear" else 0.05,
        label="η (learning rate)", show_value=True,
    )
    alpha = mo.ui.slider(
        0.5, 1.0, step=0.005, value=1.0 if base.retention == "none" else 0.95,
        label="α (retention)", show_value=True,
    )
    theta = mo.ui.slider(0.0, 0.95, step=0.05, value=0.5, label="θ (momentum only)", show_value=True)
    return alpha, base, bias, eta, grad_at, memory, optimizer, retention, theta


@app.cell(hide_code=True)
def _(alpha, bias, dk, eta, grad_at, memory, n_pairs, optimizer, preset_choice, retention, theta):
    mo.vstack(
        [
            mo.hstack([preset_choice], justify="start"),
            mo.hstack([memory, bias, retention, optimizer, grad_at], justify="start", wrap=True),
            mo.hstack([eta, alpha, theta], justify="start", wrap=True),
            mo.hstack([n_pairs, dk], justify="start", wrap=True),
        ]
    )
    return


@app.cell
def _(base, bias, grad_at, memory, optimizer, retention):
    # The spec: the preset's extra parameters (p, q, δ, huber mode, ...) with the four axes you chose.
    spec, spec_error = chosen_spec(base, memory, bias, retention, optimizer, grad_at)
    return spec, spec_error


@app.function
def known_models(spec):
    """Preset names whose spec equals `spec`, and those equal to it up to the gradient point.

    With retention "none" (α = 1) the two gradient points coincide, so e.g. ttt_linear and deltanet
    are the same model.
    """
    same = [name for name, s in ml.PRESETS.items() if s == spec]
    flipped = spec.replace(grad_at="retained" if spec.grad_at == "previous" else "previous")
    equivalent = (
        [name for name, s in ml.PRESETS.items() if s == flipped] if spec.retention == "none" else []
    )
    return same, equivalent


@app.function
def update_equations(spec):
    """The update rule of `spec` as KaTeX lines (docs/design.md, sections 2 "Exact semantics, linear memory" and
    3 "MLP memory")."""
    linear = spec.memory == "linear"
    identity = spec.identity_readout
    lines = []
    if spec.grad_at == "previous":
        lines.append(r"P &= W_{t-1} && \text{gradient point}")
    elif identity:
        lines.append(r"P &= \alpha_t W_{t-1} && \text{gradient point (retained)}")
    else:
        lines.append(r"P &= \mathcal{N}(\alpha_t A_{t-1}) && \text{gradient point (retained)}")
    pred = r"k_t P" if linear else r"M(k_t; P)"
    lines.append(rf"e_t &= {pred} - v_t && \text{{error}}")
    g = {
        "dot": r"g_t &= -v_t && \ell = -\langle " + pred + r", v_t\rangle",
        "l2": r"g_t &= e_t && \ell = \tfrac12 \|e_t\|^2",
        "lp": rf"g_t &= e_t \odot (e_t^2 + \epsilon)^{{(p-2)/2}},\ p = {spec.p:g} && \ell = \tfrac1p \textstyle\sum_j |e_{{t,j}}|^p",
        "robust": rf"g_t &= e_t + \Delta\, e_t / \sqrt{{\|e_t\|^2 + \epsilon}},\ \Delta = {spec.robust_delta:g} && \text{{robust}}",
    }.get(spec.bias)
    if spec.bias == "huber":
        g = {
            "coord": rf"g_t &= \operatorname{{clamp}}(e_t, -\delta, \delta),\ \delta = {spec.delta:g} && \text{{Huber (per coordinate)}}",
            "norm": rf"g_t &= e_t \text{{ if }} \|e_t\| \le \delta \text{{ else }} \delta\, e_t / \|e_t\|,\ \delta = {spec.delta:g} && \text{{Huber (norm)}}",
            "mixture": rf"g_t &= e_t \text{{ if }} \|e_t\| \le \delta \text{{ else }} \delta\, e_t / \sqrt{{e_t^2 + \epsilon}},\ \delta = {spec.delta:g} && \text{{Huber (Yaad mixture)}}",
        }[spec.huber_mode]
    lines.append(g)
    if linear:
        lines.append(r"G_t &= k_t^\top g_t && \text{gradient (outer product)}")
    else:
        lines.append(r"G_t &= \nabla_P\, \ell\big(M(k_t; P), v_t\big) && \text{gradient (chain rule through } g_t)")
    lines.append(
        {
            "gd": r"U_t &= -\eta_t G_t && \text{gradient descent}",
            "momentum": r"S_t &= \theta_t S_{t-1} - \eta_t G_t,\quad U_t = S_t && \text{momentum}",
            "implicit": r"U_t &= -\frac{\eta_t}{1 + \eta_t \|k_t\|^2}\, k_t^\top e_t && \text{implicit (closed form)}",
        }[spec.optimizer]
    )
    lines.append(
        {
            "none": r"W_t &= W_{t-1} + U_t && \text{no forgetting}",
            "l2": r"W_t &= \alpha_t W_{t-1} + U_t && \text{decay}",
            "lq": rf"A_t &= \alpha_t A_{{t-1}} + U_t,\quad W_t = A_t / \max(\|A_t\|_q, \epsilon)^{{q-2}},\ q = {spec.q:g} && \ell_q \text{{ normalised}}",
            "kl": rf"A_t &= \alpha_t A_{{t-1}} + U_t,\quad W_t = c\, \operatorname{{softmax}}_{{\text{{key axis}}}}(A_t),\ c = {spec.simplex_scale:g} && \text{{scaled simplex}}",
            "elastic": rf"W_t &= S_\gamma(\alpha_t W_{{t-1}} + U_t),\ S_\gamma(z) = \operatorname{{sign}}(z) \max(|z| - \gamma, 0),\ \gamma = {spec.gamma:g} && \text{{soft threshold}}",
        }[spec.retention]
    )
    lines.append(
        r"o_t &= q_t W_t && \text{read after write}" if linear else r"o_t &= M(q_t; W_t) && \text{read after write}"
    )
    closed = None
    if linear and spec.optimizer == "gd" and spec.retention in ("none", "l2"):
        decay = r"\alpha_t " if spec.retention == "l2" else ""
        if spec.bias == "dot":
            closed = rf"W_t = {decay}W_{{t-1}} + \eta_t\, k_t^\top v_t"
        elif spec.bias == "l2" and (spec.grad_at == "retained" or spec.retention == "none"):
            closed = rf"W_t = {decay}(I - \eta_t k_t^\top k_t)\, W_{{t-1}} + \eta_t\, k_t^\top v_t"
        elif spec.bias == "l2":
            closed = r"W_t = (\alpha_t I - \eta_t k_t^\top k_t)\, W_{t-1} + \eta_t\, k_t^\top v_t"
    text = "$$\n\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}\n$$"
    if closed:
        text += "\n\nIn one line:\n\n$$\n" + closed + "\n$$"
    return text


@app.cell(hide_code=True)
def _(spec, spec_error):
    mo.stop(
        spec is None,
        mo.callout(mo.md(f"**This combination is not a valid model:** {spec_error}"), kind="danger"),
    )
    _same, _equivalent = known_models(spec)
    if _same:
        _who = "This is **" + "** / **".join(_same) + "**."
    else:
        _who = "No named preset has exactly this spec: a new point of the design space."
    if _equivalent:
        _who += (
            " With no retention the two gradient points coincide, so it is also **"
            + "** / **".join(_equivalent) + "**."
        )
    _memory = (
        "Keys and values are row vectors; the memory $W \\in \\mathbb{R}^{D_k \\times D_v}$ predicts $k W$."
        if spec.memory == "linear"
        else f"The memory is $M(x; W) = x + \\mathrm{{LN}}(\\mathrm{{GELU}}(x W_\\text{{in}}) W_\\text{{out}})$ "
        f"with expansion {spec.expansion}; $W$ stands for $(W_\\text{{in}}, W_\\text{{out}})$."
    )
    mo.md(
        "## The update rule of your choice\n\n"
        + f"{_who} {_memory} Per token $t$:\n\n"
        + update_equations(spec)
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## An instant recall probe

    We write $N$ random pairs $(k_i, v_i)$ into one memory, one token at a time
    (`ml.memory_scan(..., chunk_size=None)`, the exact recurrence), with the η, α and θ you set above.
    Keys have unit norm; values are standardised (zero mean, unit variance per coordinate); the seed is
    fixed. Then we read **every key back from the final memory** and measure the relative error
    $\|M(k_i) - v_i\|^2 / \|v_i\|^2$: perfect recall scores 0, a memory that answers 0 scores 1.
    The *age* of a pair is how many pairs were written after it. The dashed line is the mean error of
    the memory *before* anything was written (an MLP memory starts as a random function, not at zero).
    """)
    return


@app.cell
def _(alpha, dk, eta, n_pairs, spec, theta):
    mo.stop(spec is None)
    _gen = torch.Generator().manual_seed(0)
    N, D = n_pairs.value, dk.value
    keys = F.normalize(torch.randn(1, N, 1, D, generator=_gen), dim=-1)
    values = torch.randn(1, N, 1, D, generator=_gen)
    values = (values - values.mean(-1, keepdim=True)) / values.std(-1, correction=0, keepdim=True)
    # retention "none" means α = 1 (memory_scan refuses anything else).
    alpha_used = 1.0 if spec.retention == "none" else alpha.value
    _theta = theta.value if spec.optimizer == "momentum" else None
    _t0 = time.perf_counter()
    with torch.no_grad():
        _, state = ml.memory_scan(
            keys, keys, values, eta=eta.value, alpha=alpha_used, theta=_theta, spec=spec, chunk_size=None
        )
        recalled = ml.read_memory(spec, state.W, keys)
    scan_ms = 1000 * (time.perf_counter() - _t0)
    with torch.no_grad():
        # The memory before any write: one token with η = 0 (and θ = 0) leaves the state as it was
        # (elastic retention still applies its soft threshold once).
        _, _state0 = ml.memory_scan(
            keys[:, :1], keys[:, :1], values[:, :1], eta=0.0, alpha=1.0,
            theta=0.0 if _theta is not None else None, spec=spec,
        )
        _before = ml.read_memory(spec, _state0.W, keys)
    _v2 = (values**2).sum(-1)
    _err = ((recalled - values) ** 2).sum(-1) / _v2
    before_error = (((_before - values) ** 2).sum(-1) / _v2).mean().item()
    recall = pl.DataFrame(
        {
            "pair": list(range(N)),
            "age": [N - 1 - i for i in range(N)],
            "error": _err[0, :, 0].tolist(),
        }
    )
    script_print(
        f"recall probe: {', '.join(f'{axis} = {getattr(spec, axis)}' for axis in AXES)}; "
        f"η = {eta.value:g}, α = {alpha_used:g}; N = {N} pairs, Dk = {D}",
        f"  mean relative error {recall['error'].mean():.3g} (before writing: {before_error:.3g}), "
        f"pairs recalled with error < 0.1: {(recall['error'] < 0.1).mean():.0%}",
    )
    return D, N, alpha_used, before_error, recall, scan_ms


@app.cell(hide_code=True)
def _(D, N, before_error, recall):
    _finite = recall.filter(pl.col("error").is_finite())
    _warn = (
        mo.callout(
            mo.md(f"{N - _finite.height} of {N} reads are not finite: the inner optimiser diverged. Lower η."),
            kind="warn",
        )
        if _finite.height < N
        else None
    )
    _line = (
        alt.Chart(_finite)
        .mark_line(point=True)
        .encode(
            x=alt.X("age:Q", title="age (pairs written after this one)"),
            y=alt.Y("error:Q", title="relative recall error", scale=alt.Scale(domainMin=0)),
            tooltip=["pair:Q", "age:Q", alt.Tooltip("error:Q", format=".4f")],
        )
    )
    _before = (
        alt.Chart(pl.DataFrame({"before writing": [round(before_error, 4)]}))
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(y="before writing:Q", tooltip=["before writing:Q"])
    )
    _chart = (_line + _before).properties(
        width=640, height=280,
        title=f"Recall from the final memory: N = {N} pairs, Dk = {D} (dashed: before writing)",
    )
    mo.vstack([_warn, _chart]) if _warn is not None else _chart
    return


@app.cell(hide_code=True)
def _(D, N, alpha_used, recall, scan_ms):
    _by_age = (
        recall.with_columns(
            (pl.col("age") * 4 // N).alias("quarter")
        )
        .group_by("quarter")
        .agg(
            pl.len().alias("pairs"),
            pl.col("age").min().alias("age_from"),
            pl.col("age").max().alias("age_to"),
            pl.col("error").mean().round(4).alias("mean_error"),
            (pl.col("error") < 0.1).mean().round(3).alias("recalled (err < 0.1)"),
        )
        .sort("quarter")
        .with_columns(
            pl.col("quarter").replace_strict(
                {0: "newest 25%", 1: "second 25%", 2: "third 25%", 3: "oldest 25%"}, return_dtype=pl.String
            )
        )
    )
    mo.vstack(
        [
            mo.md(
                f"Load $N / D_k = {N / D:.2f}$, α used = {alpha_used:g}; the scan took **{scan_ms:.0f} ms**."
            ),
            mo.ui.table(_by_age, selection=None, show_download=False),
        ]
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Try this

    - **Capacity.** Pick `linear_attention` and raise $N$ past $D_k$: a $D_k \times D_v$ matrix holds at most
      $D_k$ orthogonal keys, so every pair is blurred by *crosstalk* from all the others — young and old alike.
    - **The delta rule.** Switch to `deltanet` (η = 1): the newest pair is recalled exactly, because the `l2`
      bias *corrects* what the memory already predicts instead of adding on top. Now raise $N$ above $D_k$.
    - **Forgetting on purpose.** `gated_deltanet` with α = 0.9: old pairs fade out — the price of room for
      new ones. From what age on is a pair as lost as if it had never been written?
    - **Overshoot.** Push η past 2 with `ttt_linear`: each explicit gradient step overshoots its target
      ($|1 - \eta\|k\|^2| > 1$) and the memory blows up; `longhorn`'s implicit step takes the same η
      and never does.
    - **Deeper memory.** `ttt_mlp`, `titans`, `moneta`, `yaad` and `memora` use a residual MLP. One small
      gradient step per pair pulls it away from its random start (the dashed line), yet it recalls single
      pairs far worse than the delta rule: such memories earn their keep when η, α, θ and the key/value
      projections are *learned* end to end. Try a few η values, and compare the `bias` options on the
      same stream.
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("01_memory_as_regression.py")
    mo.md(
        f"**Next:** [01 · Memory as regression]({_next}): the two simplest memories, linear attention and the "
        "delta rule, written pair by pair, and how many pairs a matrix can hold."
    )
    return


if __name__ == "__main__":
    app.run()
