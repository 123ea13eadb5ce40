"""Benchmarks: `python -m miras_lite.bench <command>`.

Commands
    scan    forward+backward time of `memory_scan`: the exact recurrence (chunk_size=None) against the
            chunked mini-batch form (chunk_size=64), per attentional bias and sequence length.

Add a command by writing `_add_<name>(subparsers)` that registers a subparser with
`set_defaults(run=<function taking the parsed args>)` and listing it in `COMMANDS`.
"""

import argparse
import statistics
import sys
import time

import torch

from .scan import memory_scan
from .spec import MemorySpec

# --------------------------------------------------------------------------------------- helpers


def _timed(fn, repeats):
    """Median wall-clock seconds of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def run_scan(args):
    B, H, D, C = args.batch, args.heads, args.dim, args.chunk
    lengths = (64, 256) if args.quick else (256, 1024, 4096)
    print(
        f"# memory_scan forward+backward, float32 CPU, torch {torch.__version__}, threads={torch.get_num_threads()}; "
        f"B={B} H={H} Dk=Dv={D}, retention=l2, optimizer=gd, grad_at=previous, η≈0.1, α≈0.99",
        flush=True,
    )
    print(
        f"# exact_s: chunk_size=None, {args.exact_repeats} run(s); chunked_s: chunk_size={C}, "
        f"median of {args.repeats} after 1 warm-up; speedup = exact_s / chunked_s",
        flush=True,
    )
    # warm up the allocator and kernels once on a short sequence
    leaves, grad_out = _scan_inputs(32, B, H, D, seed=0)
    for chunk_size in (None, C):
        _scan_step(SCAN_BIASES["l2"], leaves, grad_out, chunk_size)
    rows = []
    for name, spec in SCAN_BIASES.items():
        for T in lengths:
            leaves, grad_out = _scan_inputs(T, B, H, D, seed=T)
            exact = _timed(lambda: _scan_step(spec, leaves, grad_out, None), args.exact_repeats)
            _scan_step(spec, leaves, grad_out, C)
            chunked = _timed(lambda: _scan_step(spec, leaves, grad_out, C), args.repeats)
            rows.append((name, T, f"{exact:.4f}", f"{chunked:.4f}", f"{exact / chunked:.1f}x"))
            if args.progress:
                print(f"# done {name} T={T}", file=sys.stderr, flush=True)
    _print_table(("bias", "T", "exact_s", "chunked_s", "speedup"), rows)


def _add_scan(subparsers):
    p = subparsers.add_parser(
        "scan",
        help="exact recurrence vs chunked memory_scan, forward+backward",
        description="Time memory_scan forward+backward (exact recurrence vs chunk_size=C) for the biases "
        "l2, lp and huber[coord] and T in (256, 1024, 4096).",
    )
    p.add_argument("--quick", action="store_true", help="T in (64, 256) only (a smoke test)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the chunked form (median; default 3)")
    p.add_argument("--exact-repeats", type=int, default=1, help="repeats of the slow exact loop (default 1)")
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
