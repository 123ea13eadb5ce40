"""Benchmarks: `python -m miras_lite.bench <command>`.

Commands
    scan    forward+backward time of the exact recurrence as a token loop, of `memory_scan(chunk_size=None)`
            where it has an exact chunk-parallel form (l2: the UT-transform delta rule), and of the chunked
            mini-batch form (chunk_size=64), per attentional bias and sequence length.

Add a command by writing `_add_<name>(subparsers)` that registers a subparser with
`set_defaults(run=<function taking the parsed args>)` and listing it in `COMMANDS`.
"""

import argparse
import os
import sys
import time

import torch

from .recurrent import exact_scan
from .scan import exact_parallel_update, memory_scan
from .spec import MemorySpec

# --------------------------------------------------------------------------------------- helpers


def _timed(fn, repeats):
    """Fastest wall-clock seconds of `repeats` calls of fn(): the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _print_table(columns, rows, out=sys.stdout):
    """A plain whitespace-aligned table: a header line, a rule, one line per row."""
    cells = [[str(c) for c in columns]] + [[str(x) for x in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    print("\n".join(lines), file=out, flush=True)


# ---------------------------------------------------------------------------------------- scan

SCAN_BIASES = {
    "l2": MemorySpec(bias="l2", retention="l2", optimizer="gd", grad_at="previous"),
    "lp": MemorySpec(bias="lp", retention="l2", optimizer="gd", grad_at="previous"),
    "huber[coord]": MemorySpec(bias="huber", huber_mode="coord", retention="l2", optimizer="gd", grad_at="previous"),
}


def _scan_inputs(T, B, H, D, seed):
    """Random leaf inputs (all requiring grad): unit-norm q/k, η ≈ 0.1, α ≈ 0.99."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    eta = 0.2 * torch.sigmoid(torch.randn(B, T, H, generator=g))  # in (0, 0.2), mean 0.1
    alpha = 1 - 0.02 * torch.sigmoid(torch.randn(B, T, H, generator=g))  # in (0.98, 1), mean 0.99
    grad_out = torch.randn(B, T, H, D, generator=g)
    leaves = [x.requires_grad_() for x in (q, k, v, eta, alpha)]
    return leaves, grad_out


def _scan_step(spec, leaves, grad_out, chunk_size):
    q, k, v, eta, alpha = leaves
    for x in leaves:
        x.grad = None
    o, _ = memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec, chunk_size=chunk_size)
    o.backward(grad_out)


def _token_loop_step(spec, leaves, grad_out):
    """The exact recurrence one token at a time (`recurrent.exact_scan`), whatever `memory_scan` would pick."""
    q, k, v, eta, alpha = leaves
    for x in leaves:
        x.grad = None
    B, T, H, Dk = q.shape
    zeros = (q.new_zeros(B, H, Dk, v.shape[-1]),)
    o = exact_scan(*(x.transpose(1, 2) for x in (q, k, v, eta, alpha)), None, None, spec, zeros, zeros)[0]
    o.backward(grad_out.transpose(1, 2))


def run_scan(args):
    B, H, D, C = args.batch, args.heads, args.dim, args.chunk
    lengths = (64, 256) if args.quick else (256, 1024, 4096)
    print(
        f"# memory_scan forward+backward, float32 CPU, torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; "
        f"B={B} H={H} Dk=Dv={D}, retention=l2, optimizer=gd, grad_at=previous, η≈0.1, α≈0.99",
        flush=True,
    )
    print(
        f"# loop_s: exact recurrence token by token, fastest of {args.exact_repeats} run(s); exact_s: memory_scan(chunk_size=None) "
        f"where an exact chunk-parallel form exists (else '-': it is the loop); chunked_s: chunk_size={C}; "
        f"fastest of {args.repeats} after 1 warm-up; speedup = loop_s / chunked_s",
        flush=True,
    )
    leaves, grad_out = _scan_inputs(32, B, H, D, seed=0)
    _token_loop_step(SCAN_BIASES["l2"], leaves, grad_out)
    for chunk_size in (None, C):
        _scan_step(SCAN_BIASES["l2"], leaves, grad_out, chunk_size)
    rows = []
    for name, spec in SCAN_BIASES.items():
        for T in lengths:
            leaves, grad_out = _scan_inputs(T, B, H, D, seed=T)
            loop = _timed(lambda: _token_loop_step(spec, leaves, grad_out), args.exact_repeats)
            exact = "-"
            if exact_parallel_update(spec):
                exact = f"{_timed(lambda: _scan_step(spec, leaves, grad_out, None), args.repeats):.4f}"
            _scan_step(spec, leaves, grad_out, C)
            chunked = _timed(lambda: _scan_step(spec, leaves, grad_out, C), args.repeats)
            rows.append((name, T, f"{loop:.4f}", exact, f"{chunked:.4f}", f"{loop / chunked:.1f}x"))
            if args.progress:
                print(f"# done {name} T={T}", file=sys.stderr, flush=True)
    _print_table(("bias", "T", "loop_s", "exact_s", "chunked_s", "speedup"), rows)
    print(f"# load average at the end {os.getloadavg()[0]:.1f} (other processes on the machine skew the times)", flush=True)


def _add_scan(subparsers):
    p = subparsers.add_parser(
        "scan",
        help="exact recurrence (token loop, exact parallel form) vs chunked memory_scan, forward+backward",
        description="Time forward+backward of the exact token loop, the exact chunk-parallel form and chunk_size=C for the biases "
        "l2, lp and huber[coord] and T in (256, 1024, 4096).",
    )
    p.add_argument("--quick", action="store_true", help="T in (64, 256) only (a smoke test)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the parallel forms (fastest counts; default 5)")
    p.add_argument("--exact-repeats", type=int, default=3, help="repeats of the slow token loop (fastest counts; default 3)")
    p.add_argument("--chunk", type=int, default=64, help="chunk size C of the chunked form (default 64)")
    p.add_argument("--batch", type=int, default=2, help="B (default 2)")
    p.add_argument("--heads", type=int, default=4, help="H (default 4)")
    p.add_argument("--dim", type=int, default=64, help="Dk = Dv (default 64)")
    p.add_argument("--progress", action="store_true", help="print a line to stderr after each row")
    p.set_defaults(run=run_scan)


# ----------------------------------------------------------------------------------------- CLI

COMMANDS = [_add_scan]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m miras_lite.bench", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", metavar="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("repeats", "exact_repeats", "chunk", "batch", "heads", "dim"):
        if getattr(args, name, 1) < 1:
            build_parser().error(f"--{name.replace('_', '-')} must be >= 1")
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
