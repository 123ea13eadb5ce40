"""08 · The Triton kernels

The same recurrence, fused: a kernel and the torch code side by side (outputs and gradients), and their throughput.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite 08: the Triton kernels")

with app.setup(hide_code=True):
    import time
    from pathlib import Path

    import altair as alt
    import marimo as mo
    import polars as pl
    import torch

    import os

    GPU = torch.cuda.is_available()
    if not GPU:  # Triton compiles for a GPU; without one its interpreter runs the same kernels, set before they load
        os.environ.setdefault("TRITON_INTERPRET", "1")

    import miras_lite as ml
    from benchmarks import kernels as bench
    from miras_lite.ui import AXES, course_link, quick_mode, report_mode, script_print

    QUICK = quick_mode()
    # a report runs both gated cells at the page's settings: on a CPU they take seconds
    REPORT = report_mode() is not None
    DEVICE = "cuda" if GPU else "cpu"


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # The kernels: the same recurrence, fused

    Everything in the other notebooks runs the torch implementation of the memory recurrence. On a GPU,
    `memory_scan(..., backend="triton")` (and `"auto"`) runs hand-written **Triton** kernels instead:

    | scan | kernel | what stays on chip |
    |:---|:---|:---|
    | exact, delta rule (`l2`, `gd`/`implicit`, retention `none`/`l2`) | `delta_rule`: UT transform per chunk | one chunk's $K$, $V$ and the state $W$ |
    | exact, any other linear spec | `recurrent`: one token at a time | the state $A$ (and momentum $S$) |
    | mini-batch `chunk_size=C` (`dot`, `l2`, `lp`, `huber`) | `minibatch`: the dual form with `tl.dot` | the state and one chunk |
    | mini-batch, MLP memory (ttt_mlp, titans, yaad, moneta, memora) | `mlp_minibatch`: one chunk per call, its backward through LayerNorm and GELU twice | both weight matrices and one chunk |

    **What you will learn:** that a kernel is only worth its speed if it computes *the same function*:
    here you run a kernel and the torch reference side by side, compare outputs **and gradients**, and
    see how the throughput of each method grows with the sequence length.

    Without a GPU the kernels run under the **Triton interpreter** (`TRITON_INTERPRET=1`): the same
    kernel code, executed with NumPy. That is how the test suite checks them on a CPU, and it is slow,
    so keep the sizes small here.
    """)
    return


@app.cell
def _():
    spec_choice = mo.ui.dropdown(
        options=["gated_deltanet", "deltanet", "longhorn", "linear_attention", "titans (linear)", "moneta (linear)"],
        value="gated_deltanet", label="spec",
    )
    chunk_choice = mo.ui.dropdown(options=["exact", "4", "8", "16"], value="exact", label="chunk_size")
    seq_len = mo.ui.slider(1, 64, value=12 if QUICK else 24, label="T", show_value=True)
    key_dim = mo.ui.slider(4, 32, step=4, value=8, label="Dk = Dv", show_value=True)
    check_button = mo.ui.run_button(label="Compare kernel and reference")
    mo.vstack([mo.hstack([spec_choice, chunk_choice]), mo.hstack([seq_len, key_dim]), check_button])
    return check_button, chunk_choice, key_dim, seq_len, spec_choice


@app.function
def linear_spec(name):
    """The spec behind a dropdown entry: MLP presets are shown with their linear-memory counterpart."""
    if name.endswith("(linear)"):
        return ml.preset(name.split()[0]).replace(memory="linear")
    return ml.preset(name)


@app.function
def axes_text(spec):
    """The axes of `spec` in a few words: "memory = linear, bias = l2, ..."."""
    return ", ".join(f"{axis} = {getattr(spec, axis)}" for axis in AXES)


@app.function
def scan_inputs(T, D, momentum, seed=0):
    """Leaf tensors q, k, v, η, α (and θ) on DEVICE with unit-norm keys."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(1, T, 2, D, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(1, T, 2, D, generator=g)
    eta = 0.5 * torch.rand(1, T, 2, generator=g)
    alpha = 0.9 + 0.1 * torch.rand(1, T, 2, generator=g)
    theta = 0.5 * torch.rand(1, T, 2, generator=g) if momentum else None
    leaves = [x for x in (q, k, v, eta, alpha, theta) if x is not None]
    return [x.to(DEVICE).requires_grad_() for x in leaves]


@app.function
def run_and_grads(spec, leaves, chunk_size, backend):
    """Output and the gradients of Σ o ⊙ r (r fixed) w.r.t. every leaf."""
    q, k, v, eta, alpha, *theta = leaves
    o, _ = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, theta=theta[0] if theta else None, spec=spec,
                          chunk_size=chunk_size, backend=backend)
    weights = torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)
    grads = torch.autograd.grad((o * weights).sum(), leaves)
    return o.detach(), [g.detach() for g in grads]


@app.cell(hide_code=True)
def _(check_button, chunk_choice, key_dim, seq_len, spec_choice):
    mo.stop(not (check_button.value or QUICK or REPORT), mo.md("Press **Compare kernel and reference** to run both."))
    spec = linear_spec(spec_choice.value)
    if spec.retention == "none":
        spec = spec.replace(retention="l2")  # the inputs carry α < 1
    chunk_size = None if chunk_choice.value == "exact" else int(chunk_choice.value)
    leaves = scan_inputs(seq_len.value, key_dim.value, spec.optimizer == "momentum")
    started = time.perf_counter()
    reference = run_and_grads(spec, leaves, chunk_size, "torch")
    torch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    try:
        kernel = run_and_grads(spec, leaves, chunk_size, "triton")
        kernel_error = None
    except ValueError as error:  # no kernel for this spec / chunk size: the dispatcher says why
        kernel, kernel_error = None, str(error)
    kernel_seconds = time.perf_counter() - started
    return kernel, kernel_error, kernel_seconds, reference, spec, torch_seconds


@app.cell(hide_code=True)
def _(
    chunk_choice, kernel, kernel_error, kernel_seconds, key_dim, reference, seq_len, spec, spec_choice,
    torch_seconds,
):
    mo.stop(kernel is None, mo.callout(mo.md(f"**No kernel for this choice.** {kernel_error}"), kind="warn"))
    names = ["o", "∂q", "∂k", "∂v", "∂η", "∂α", "∂θ"]
    pairs = [(reference[0], kernel[0])] + list(zip(reference[1], kernel[1]))
    comparison = pl.DataFrame({
        "tensor": names[: len(pairs)],
        "max |torch − triton|": [float((a - b).abs().max()) for a, b in pairs],
        "max |torch|": [float(a.abs().max()) for a, _ in pairs],
    }).with_columns(
        (pl.col("max |torch − triton|") / pl.col("max |torch|").clip(lower_bound=1e-12)).alias("relative")
    )
    worst = comparison["relative"].max()
    verdict = "agree" if worst < 1e-3 else "DISAGREE"
    triton = f"Triton {'(interpreted) ' if not GPU else ''}{kernel_seconds:.2f} s"
    script_print(
        f"kernel check: {spec_choice.value}, chunk_size {chunk_choice.value}, T = {seq_len.value}, "
        f"Dk = Dv = {key_dim.value}: kernel and torch {verdict} (worst relative difference {worst:.1e}); "
        f"torch {torch_seconds:.2f} s, {triton}"
    )
    mo.vstack([
        mo.md(f"**{spec_choice.value}** ({axes_text(spec)}), chunk_size {chunk_choice.value}, "
              f"T = {seq_len.value}, Dk = Dv = {key_dim.value}: kernel and torch **{verdict}** "
              f"(worst relative difference {worst:.1e}); torch {torch_seconds:.2f} s, {triton}."),
        mo.ui.table(
            comparison, selection=None, show_download=False,
            format_mapping={column: "{:.2e}" for column in comparison.columns[1:]},
        ),
    ])
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:** switch `chunk_size` from *exact* to 8: the kernel now computes the mini-batch form
    (gradients at the chunk start), and so does the reference, so they still agree — but the output
    differs from the exact one. Pick `moneta (linear)` with a chunk size: the dispatcher refuses, since
    the mini-batch kernel covers the `none`/`l2` retentions only, and says so.

    ## Throughput

    The benchmark `python -m benchmarks.kernels` times every method forward and forward+backward. On a GPU it
    runs $T \in \{1\text{k}, 4\text{k}, 16\text{k}\}$, $D \in \{64, 128\}$ in bf16; on a CPU only the torch
    rows are timed, with one interpreted run per kernel to show it works (its time is not a speed).
    """)
    return


@app.cell
def _():
    bench_button = mo.ui.run_button(label="Run the benchmark here")
    bench_button
    return (bench_button,)


@app.cell(hide_code=True)
def _(bench_button):
    mo.stop(not (bench_button.value or QUICK or REPORT), mo.md("Press **Run the benchmark here**."))
    # on a CPU only the torch rows are timed here: interpreted kernel runs say nothing about speed
    arguments = [] if GPU and not QUICK else ["--quick", "--interpreted-max-t", "0"]
    out = Path(mo.notebook_dir()).parent / "runs" / "kernels_bench_notebook.parquet"
    with mo.status.spinner("timing torch and the kernels ..."):
        timings = bench.run_bench(bench.build_parser().parse_args([*arguments, "--repeats", "2", "--out", str(out)]))
    timed = timings.filter(~pl.col("interpreted"))
    sizes = (f"T = {', '.join(map(str, timed['T'].unique().sort()))}, "
             f"D = {', '.join(map(str, timed['D'].unique().sort()))}")
    _best = (
        timed.filter(pl.col("passes") == "fwd+bwd", pl.col("T") == timed["T"].max(), pl.col("D") == timed["D"].max())
        .group_by("method").agg(pl.col("tokens_per_s").max()).sort("method")
    )
    script_print(
        f"benchmark, forward + backward at T = {timed['T'].max()}, D = {timed['D'].max()} (fastest spec per method):",
        *(f"  {row['method']}: {row['tokens_per_s']:.3g} tokens/s" for row in _best.iter_rows(named=True)),
    )
    return sizes, timed


@app.cell(hide_code=True)
def _(sizes, timed):
    _where = torch.cuda.get_device_name() if GPU else "this CPU, torch only (the kernels need a GPU for a speed)"
    alt.Chart(timed).mark_point(filled=True, size=80).encode(
        x=alt.X("tokens_per_s:Q", title="tokens / s", scale=alt.Scale(type="log")),
        y=alt.Y("method:N", title=None),
        color=alt.Color("spec:N"),
        shape=alt.Shape("passes:N"),
        tooltip=["method", "spec", "T", "D", "passes", alt.Tooltip("seconds:Q", format=".3g"),
                 alt.Tooltip("tokens_per_s:Q", format=".3g"), alt.Tooltip("tflops:Q", format=".3g")],
    ).properties(width=480, title=f"Throughput on {_where}: {sizes}")
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## What has been measured so far

    A kernel has to pass two tests: it must compute the same function as the torch code, and it must
    be faster. So far only the first has been measured.

    - **The same function: checked, on a CPU.** The project's test suite (`tests/test_kernels_*.py`)
      runs every kernel under the Triton interpreter and compares its outputs *and* gradients with the
      torch code, as the comparison above does for one setting. The token-by-token kernel is checked for
      every combination of bias, retention, optimiser and gradient point, in float64, where it agrees to
      about $10^{-11}$ (relative); the delta-rule and mini-batch kernels are checked on awkward inputs too:
      a single token, a last chunk shorter than the others, $D_k \ne D_v$, bfloat16 inputs.
    - **The speed: not measured yet.** The kernels have only run on CPUs so far, where the interpreter
      executes them with NumPy: their times there say nothing about their speed. On a GPU,
      `python -m benchmarks.kernels` times them at $T$ from 1k to 16k tokens, $D \in \{64, 128\}$, in
      bfloat16, and checks three targets: the delta-rule kernel at least 0.9× as fast as
      flash-linear-attention's chunked Gated DeltaNet kernel, the mini-batch kernel with the `lp` or
      `huber` bias at least 0.7× as fast as with `l2`, and the token-by-token kernel at least 50× faster
      than the torch token loop at $T = 4096$.

    What this means for you: every other notebook runs the torch code, so none of their results depends
    on the kernels. The kernels matter for speed only, and that is still to be measured on a GPU.
    """)
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("09_sweep_explorer.py")
    mo.md(f"**Next:** [09 · Sweep explorer]({_next}): many small models trained on associative recall, one per point of the design space, and which ones recall best.")
    return


if __name__ == "__main__":
    app.run()
