"""`python -m benchmarks.scan`: forward+backward time of `memory_scan` per attentional bias and length.

    loop_s     the exact recurrence token by token (`ops.recurrent.recurrent_scan`), whatever dispatch would pick
    exact_s    memory_scan(chunk_size=None) where the exact recurrence has a chunk-parallel form (l2: the delta
               rule), '-' where it is the loop
    chunked_s  memory_scan(chunk_size=C), the mini-batch rule
    speedup    loop_s / chunked_s

float32 CPU, B=2, H=4, Dk=Dv=64, retention l2, gd, grad_at="previous", η ≈ 0.1, α ≈ 0.99.
"""

import argparse
import sys

import polars as pl
import torch

from miras_lite import dispatch, memory_scan
from miras_lite.ops.recurrent import recurrent_scan
from miras_lite.spec import MemorySpec

from .common import fastest_seconds, machine_line, print_table

SPECS = {
    "l2": MemorySpec(bias="l2", retention="l2", optimizer="gd", grad_at="previous"),
    "lp": MemorySpec(bias="lp", retention="l2", optimizer="gd", grad_at="previous"),
    "huber[coord]": MemorySpec(bias="huber", huber_mode="coord", retention="l2", optimizer="gd", grad_at="previous"),
}


def _inputs(T, B, H, D, seed):
    """Random leaf inputs (all requiring grad): unit-norm q/k, η in (0, 0.2), α in (0.98, 1)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    eta = 0.2 * torch.sigmoid(torch.randn(B, T, H, generator=g))
    alpha = 1 - 0.02 * torch.sigmoid(torch.randn(B, T, H, generator=g))
    grad_out = torch.randn(B, T, H, D, generator=g)
    return [x.requires_grad_() for x in (q, k, v, eta, alpha)], grad_out


def _scan_step(spec, leaves, grad_out, chunk_size):
    q, k, v, eta, alpha = leaves
    for x in leaves:
        x.grad = None
    memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec, chunk_size=chunk_size)[0].backward(grad_out)


def _loop_step(spec, leaves, grad_out):
    q, k, v, eta, alpha = leaves
    for x in leaves:
        x.grad = None
    B, T, H, Dk = q.shape
    zeros = (q.new_zeros(B, H, Dk, v.shape[-1]),)
    o = recurrent_scan(*(x.transpose(1, 2) for x in (q, k, v, eta, alpha)), None, None, spec, zeros, zeros)[0]
    o.backward(grad_out.transpose(1, 2))


def run(args):
    B, H, D, C = args.batch, args.heads, args.dim, args.chunk
    lengths = (64, 256) if args.quick else (256, 1024, 4096)
    print(f"# memory_scan forward+backward, float32 CPU, {machine_line()}; B={B} H={H} Dk=Dv={D}, retention=l2, "
          f"optimizer=gd, grad_at=previous; loop fastest of {args.loop_repeats}, the parallel forms fastest of "
          f"{args.repeats} after one warm-up; chunked_s: chunk_size={C}", flush=True)
    leaves, grad_out = _inputs(32, B, H, D, seed=0)
    _loop_step(SPECS["l2"], leaves, grad_out)
    rows = []
    for name, spec in SPECS.items():
        exact_parallel = dispatch.has_exact_parallel_form(spec)
        for T in lengths:
            leaves, grad_out = _inputs(T, B, H, D, seed=T)
            loop = fastest_seconds(lambda: _loop_step(spec, leaves, grad_out), args.loop_repeats)
            exact = None
            if exact_parallel:
                _scan_step(spec, leaves, grad_out, None)
                exact = fastest_seconds(lambda: _scan_step(spec, leaves, grad_out, None), args.repeats)
            _scan_step(spec, leaves, grad_out, C)
            chunked = fastest_seconds(lambda: _scan_step(spec, leaves, grad_out, C), args.repeats)
            rows.append({"bias": name, "T": T, "loop_s": loop, "exact_s": exact, "chunked_s": chunked,
                         "speedup": loop / chunked})
    frame = pl.DataFrame(rows)
    print_table(frame.columns, [(r["bias"], r["T"], f"{r['loop_s']:.4f}", "-" if r["exact_s"] is None else
                                 f"{r['exact_s']:.4f}", f"{r['chunked_s']:.4f}", f"{r['speedup']:.1f}x")
                                for r in rows])
    if args.out:
        frame.write_parquet(args.out)
    return frame


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.scan", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="T in (64, 256) only (a smoke test)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the parallel forms (fastest counts)")
    p.add_argument("--loop-repeats", type=int, default=3, help="repeats of the slow token loop (fastest counts)")
    p.add_argument("--chunk", type=int, default=64, help="chunk size C of the mini-batch form")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="Dk = Dv")
    p.add_argument("--out", help="write the results here (parquet)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("repeats", "loop_repeats", "chunk", "batch", "heads", "dim"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
