"""`python -m benchmarks.kernels`: throughput of the memory recurrence, torch vs Triton vs flash-linear-attention.

Every row times one method on one spec, forward ("fwd") and forward+backward ("fwd+bwd"):

    torch/recurrent          the exact recurrence token by token (`miras_lite/ops/recurrent.py`)
    torch/delta_rule         memory_scan(chunk_size=None): the exact UT-transform delta rule in torch
    torch/minibatch          memory_scan(chunk_size=64): the mini-batch dual form in torch
    triton/recurrent         kernels.recurrent.recurrent_scan (exact, state on chip)
    triton/delta_rule        kernels.delta_rule.delta_rule_scan (exact delta rule, UT transform)
    triton/minibatch         kernels.minibatch.minibatch_scan (mini-batch dual form, chunk 64)
    torch/mlp_dual           memory_scan(chunk_size=16) of an MLP memory (E = 4) in torch (`ops/minibatch.py`)
    triton/mlp_minibatch     the same on kernels.mlp_minibatch (D = 64 only, T up to --mlp-max-t)
    fla/chunk, fla/fused_recurrent   flash-linear-attention's chunk_gated_delta_rule and
                             fused_recurrent_gated_delta_rule (only when `fla` is installed, on a GPU)

TFLOP/s counts the algorithm's own matrix work per head and token (Dk = Dv = D, chunk C), forward:
recurrent 6D² (read, error, write); dual mini-batch 4CD + 6D²; UT delta rule 10CD + 6D²; MLP memory
(F = 4D) 14·D·F + 4C(D + F); fwd+bwd counts 3× the forward. On a CUDA GPU the sizes are T ∈ {1k, 4k, 16k}, D ∈ {64, 128}, bf16, B=8, H=16 (the token
loop only up to --loop-max-t); without one, torch rows run in float32 at small sizes and each Triton
kernel gets an interpreted smoke run (TRITON_INTERPRET=1: a correctness run, not a speed).
Writes a parquet file and an Altair chart (HTML) and prints the measured ratios next to the targets in
kernels/README.md. `bench_rows` and `target_ratios` give the same rows and ratios as plain dicts, without polars
(what `benchmarks.gpu_check` uses).
"""

import os

import torch

if not torch.cuda.is_available():
    # Without a GPU the kernels run only under the Triton interpreter, and Triton reads TRITON_INTERPRET when
    # `@triton.jit` wraps a function, i.e. when a kernel module is imported: so set it here, before the imports
    # below and before memory_scan's dispatch imports any of them. (Importing `kernels` sets nothing.)
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from kernels.delta_rule import delta_rule_scan  # noqa: E402
from kernels.minibatch import minibatch_scan  # noqa: E402
from kernels.recurrent import recurrent_scan  # noqa: E402
from miras_lite import MemorySpec, memory_scan, preset  # noqa: E402
from miras_lite.memory import mlp_initial_state  # noqa: E402
from miras_lite.ops.recurrent import recurrent_scan as torch_recurrent_scan  # noqa: E402

from .common import fastest_seconds, machine_line, print_table  # noqa: E402

CHUNK = 64
DELTA_RULE = preset("gated_deltanet")
MINIBATCH_SPECS = {
    "l2": MemorySpec(bias="l2", retention="l2", grad_at="retained"),
    "lp": MemorySpec(bias="lp", retention="l2", grad_at="retained"),
    "huber": MemorySpec(bias="huber", huber_mode="coord", retention="l2", grad_at="retained"),
}
MLP_CHUNK = 16  # the MLP presets' chunk size (presets.Recommended)
MLP_SPECS = {  # MLP memory, retention l2, gd: the mini-batch rule of ttt_mlp / titans / yaad, one bias each
    "mlp-l2": MemorySpec(memory="mlp", bias="l2", retention="l2"),
    "mlp-lp": MemorySpec(memory="mlp", bias="lp", retention="l2"),
    "mlp-huber": MemorySpec(memory="mlp", bias="huber", huber_mode="mixture", retention="l2", eps=1e-2),
}
TARGETS = (  # the targets of kernels/README.md: (what, numerator method/spec, denominator method/spec, at least)
    ("exact delta-rule kernel vs fla chunk", ("triton/delta_rule", "gated_deltanet"), ("fla/chunk", "gated_deltanet"),
     0.9),
    ("mini-batch kernel lp vs l2", ("triton/minibatch", "lp"), ("triton/minibatch", "l2"), 0.7),
    ("mini-batch kernel huber vs l2", ("triton/minibatch", "huber"), ("triton/minibatch", "l2"), 0.7),
    ("MLP-memory kernel lp vs l2", ("triton/mlp_minibatch", "mlp-lp"), ("triton/mlp_minibatch", "mlp-l2"), 0.7),
    ("MLP-memory kernel huber vs l2", ("triton/mlp_minibatch", "mlp-huber"), ("triton/mlp_minibatch", "mlp-l2"), 0.7),
    ("MLP-memory kernel vs torch (scan)", ("triton/mlp_minibatch", "mlp-l2"), ("torch/mlp_dual", "mlp-l2"), 3.0),
    ("recurrent kernel vs torch token loop", ("triton/recurrent", "gated_deltanet"),
     ("torch/recurrent", "gated_deltanet"), 50.0),
)
COLUMNS = ("method", "spec", "T", "D", "passes", "seconds", "tokens_per_s", "tflops")
GPU_GRID = dict(B=8, H=16, lengths=(1024, 4096, 16384), dims=(64, 128), dtype=torch.bfloat16, device="cuda")
MLP_MAX_D = 64  # the MLP-memory rows run at D = 64 only (the playground's head size): they are the slowest rows
QUICK_GRID = dict(B=1, H=2, lengths=(32,), dims=(16,), dtype=torch.float32, device="cpu")


# ------------------------------------------------------------------------------------- methods
# Each method maps (spec, q, k, v, eta, alpha), all [B, T, H, ·] / [B, T, H], to the output o [B, T, H, Dv].


def _torch_loop(spec, q, k, v, eta, alpha):
    B, T, H, Dk = q.shape
    zeros = (q.new_zeros(B, H, Dk, v.shape[-1]),)
    head_major = (x.transpose(1, 2) for x in (q, k, v, eta, alpha))
    return torch_recurrent_scan(*head_major, None, None, spec, zeros, zeros)[0].transpose(1, 2)


def _scan(chunk_size):
    return lambda spec, q, k, v, eta, alpha: memory_scan(q, k, v, eta, alpha, spec=spec, chunk_size=chunk_size)[0]


@functools.cache
def _mlp_memory(H, D, dtype, device):
    """The default MLP memory (W_in, W_out), made once per size: its draw is not part of what is timed."""
    return mlp_initial_state(H, D, dtype=dtype, device=device)


def _mlp_scan(backend):
    def run(spec, q, k, v, eta, alpha):
        memory = _mlp_memory(q.shape[2], q.shape[3], q.dtype, q.device)
        return memory_scan(q, k, v, eta, alpha, spec=spec, initial_state=memory, chunk_size=MLP_CHUNK,
                           backend=backend)[0]

    return run


def _kernel(scan, chunk_size):
    def run(spec, q, k, v, eta, alpha):
        B, T, H, Dk = q.shape
        A0 = q.new_zeros(B, H, Dk, v.shape[-1])
        head_major = (x.transpose(1, 2) for x in (q, k, v, eta, alpha))
        return scan(*head_major, None, None, spec, A0, torch.zeros_like(A0), chunk_size)[0].transpose(1, 2)

    return run


def _fla(name):
    def run(spec, q, k, v, eta, alpha):
        from fla.ops import gated_delta_rule as fla_gdr

        op = getattr(fla_gdr, f"{name}_gated_delta_rule")
        return op(q, k, v, g=alpha.float().log(), beta=eta, scale=1.0)[0]

    return run


def _flops_per_token(method, D):
    if method in ("torch/recurrent", "triton/recurrent", "fla/fused_recurrent"):
        return 6 * D * D
    if method in ("torch/minibatch", "triton/minibatch"):
        return 4 * CHUNK * D + 6 * D * D
    if method in ("torch/mlp_dual", "triton/mlp_minibatch"):  # F = 4D: 7 products with a weight, 4 with the chunk
        return 14 * D * 4 * D + 4 * MLP_CHUNK * 5 * D
    return 10 * CHUNK * D + 6 * D * D


def _rows_to_run(gpu, fla_available):
    """(method, spec name, spec, run) for every row."""
    exact = [("torch/recurrent", _torch_loop), ("torch/delta_rule", _scan(None)),
             ("triton/recurrent", _kernel(recurrent_scan, None)), ("triton/delta_rule", _kernel(delta_rule_scan, None))]
    if gpu and fla_available:
        exact += [("fla/chunk", _fla("chunk")), ("fla/fused_recurrent", _fla("fused_recurrent"))]
    rows = [(method, "gated_deltanet", DELTA_RULE, run) for method, run in exact]
    for name, spec in MINIBATCH_SPECS.items():
        rows.append(("torch/minibatch", name, spec, _scan(CHUNK)))
        rows.append(("triton/minibatch", name, spec, _kernel(minibatch_scan, CHUNK)))
    for name, spec in MLP_SPECS.items():
        rows.append(("torch/mlp_dual", name, spec, _mlp_scan("torch")))
        rows.append(("triton/mlp_minibatch", name, spec, _mlp_scan("triton")))
    return rows


# -------------------------------------------------------------------------------------- timing


def _inputs(B, T, H, D, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = torch.randn(3, B, T, H, D, generator=g, device=device)
    eta, alpha = torch.randn(2, B, T, H, generator=g, device=device)
    q, k = (torch.nn.functional.normalize(x, dim=-1) for x in (q, k))
    eta = torch.sigmoid(eta)  # in (0, 1), as fla's beta
    alpha = 1 - 0.05 * torch.sigmoid(alpha)
    return [x.to(dtype, copy=True).requires_grad_() for x in (q, k, v, eta, alpha)]


def _seconds(fn, repeats, device):
    """Fastest seconds of fn() after one warm-up call (which also compiles / autotunes)."""
    fn()
    return fastest_seconds(fn, repeats, device)


def _measure(spec, run, inputs, repeats, device):
    """{pass: seconds} for the forward and forward+backward passes of one method."""
    grad_out = torch.randn_like(inputs[2])

    def forward():
        with torch.no_grad():
            run(spec, *inputs)

    def forward_backward():
        for x in inputs:
            x.grad = None
        run(spec, *inputs).backward(grad_out.to(inputs[2].dtype))

    return {"fwd": _seconds(forward, repeats, device), "fwd+bwd": _seconds(forward_backward, repeats, device)}


def fla_missing():
    """Why flash-linear-attention's gated delta rule cannot be imported here (its error), or None when it can."""
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception as error:  # an fla built for another triton fails with more than ImportError
        return f"{type(error).__name__}: {error}"
    return None


def _grid(args, gpu):
    if gpu:
        return GPU_GRID
    if args.quick:
        return QUICK_GRID
    return dict(B=1, H=4, lengths=(64, 1024, 4096), dims=(64,), dtype=torch.float32, device="cpu")


def bench_rows(args, grid, fla, errors=False):
    """Yield the benchmark's rows, dicts of COLUMNS and `interpreted`, two per method and size (fwd, fwd+bwd), for
    the sizes of `grid` (`GPU_GRID`'s keys) in its order, with fla's rows when `fla` (on CUDA). errors=True: a method
    that raises at one size yields {method, spec, T, D, error} instead, and the next one runs."""
    gpu = grid["device"] == "cuda"
    for D in grid["dims"]:
        for T in grid["lengths"]:
            inputs = _inputs(grid["B"], T, grid["H"], D, grid["dtype"], grid["device"])
            for method, name, spec, run in _rows_to_run(gpu, fla):
                if method == "torch/recurrent" and T > args.loop_max_t:
                    continue
                if "mlp" in method and (T > args.mlp_max_t or D > MLP_MAX_D):
                    continue
                if method.startswith("triton/") and not gpu and T > args.interpreted_max_t:
                    continue
                try:
                    times = _measure(spec, run, inputs, args.repeats, grid["device"])
                except Exception as error:
                    if not errors:
                        raise
                    yield dict(method=method, spec=name, T=T, D=D, error=f"{type(error).__name__}: {error}")
                    continue
                for pass_name, seconds in times.items():
                    passes = 3 if pass_name == "fwd+bwd" else 1
                    flops = _flops_per_token(method, D) * grid["B"] * grid["H"] * T * passes
                    yield dict(method=method, spec=name, T=T, D=D, passes=pass_name, seconds=seconds,
                               tokens_per_s=grid["B"] * T / seconds, tflops=flops / seconds / 1e12,
                               interpreted=method.startswith("triton/") and not gpu)
                print(f"# {method:24s} {name:15s} T={T:6d} D={D:4d} done", file=sys.stderr, flush=True)


def run_bench(args):
    """Time every row, print the table and the targets, write the parquet file and the chart; the rows as a
    polars DataFrame."""
    import polars as pl

    gpu = torch.cuda.is_available()
    grid = _grid(args, gpu)
    fla_error = fla_missing()
    where = torch.cuda.get_device_name() if gpu else "CPU (no CUDA GPU; Triton kernels interpreted)"
    print(f"# benchmarks.kernels on {where}; {machine_line()}; B={grid['B']} H={grid['H']} "
          f"{str(grid['dtype']).removeprefix('torch.')}; fla {'not usable' if fla_error else 'installed'}",
          flush=True)
    if fla_error and gpu:
        print(f"# fla: {fla_error}", file=sys.stderr, flush=True)
    frame = pl.DataFrame(list(bench_rows(args, grid, fla_error is None)))
    _report(frame, args.out)
    return frame


def _report(frame, out):
    print_table(COLUMNS, [(r["method"], r["spec"], r["T"], r["D"], r["passes"], f"{r['seconds']:.4g}",
                           f"{r['tokens_per_s']:.4g}", f"{r['tflops']:.4g}") for r in frame.iter_rows(named=True)])
    print("# interpreted Triton rows (CPU) check that the kernels run; their times are not speeds", flush=True)
    _print_targets(frame.to_dicts())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out)
    _chart(frame).save(out.with_suffix(".html"))
    print(f"# wrote {out} and {out.with_suffix('.html')}", flush=True)


def target_ratios(rows):
    """The targets in kernels/README.md against `bench_rows`' rows: a dict (what, T, D, ratio, target, needs) per
    target and size where both of its methods ran fwd+bwd uninterpreted, `ratio` the first's tokens/s over the
    second's; a target with no such size gets one dict with T, D and ratio None."""
    speed = {(r["method"], r["spec"], r["T"], r["D"]): r["tokens_per_s"] for r in rows
             if r.get("passes") == "fwd+bwd" and not r["interpreted"]}
    ratios = []
    for what, numerator, denominator, target in TARGETS:
        needs = "a GPU and fla" if "fla" in denominator[0] else "a GPU"
        sizes = [(T, D) for method, spec, T, D in speed
                 if (method, spec) == numerator and (*denominator, T, D) in speed]
        measured = [dict(what=what, T=T, D=D, ratio=speed[(*numerator, T, D)] / speed[(*denominator, T, D)],
                         target=target, needs=needs) for T, D in sizes]
        ratios += measured or [dict(what=what, T=None, D=None, ratio=None, target=target, needs=needs)]
    return ratios


def _print_targets(rows):
    """The targets in kernels/README.md (throughput of one row over another, fwd+bwd), each next to its ratio."""
    for r in target_ratios(rows):
        if r["ratio"] is None:
            print(f"# {r['what']}: not measured here (needs {r['needs']}); target >= {r['target']}x")
        else:
            print(f"# {r['what']} at T={r['T']} D={r['D']}: {r['ratio']:.2f}x (target >= {r['target']}x)")


def _chart(frame):
    import altair as alt
    import polars as pl

    return (
        alt.Chart(frame.filter(~pl.col("interpreted")))
        .mark_line(point=True)
        .encode(
            x=alt.X("T:Q", scale=alt.Scale(type="log"), title="sequence length T"),
            y=alt.Y("tokens_per_s:Q", scale=alt.Scale(type="log"), title="tokens / s"),
            color=alt.Color("method:N"),
            strokeDash=alt.StrokeDash("spec:N"),
            tooltip=["method", "spec", "T", "D", "passes", "seconds", "tokens_per_s", "tflops"],
        )
        .facet(row=alt.Row("D:O"), column=alt.Column("passes:N"))
    )


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU only: one tiny size (a smoke test)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (the fastest counts; default 5)")
    parser.add_argument("--loop-max-t", type=int, default=4096, help="longest T for the torch token loop")
    parser.add_argument("--mlp-max-t", type=int, default=4096, help="longest T for the MLP-memory rows")
    parser.add_argument("--interpreted-max-t", type=int, default=64,
                        help="longest T for the interpreted Triton smoke runs on a CPU")
    parser.add_argument("--out", default="runs/kernels_bench.parquet", help="parquet file (the chart goes next to it)")
    return parser


def main(argv=None):
    run_bench(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
