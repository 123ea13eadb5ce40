"""What the benchmark commands share: timing and plain tables."""

import os
import sys
import time

import torch


def fastest_seconds(fn, repeats, device=None):
    """Fastest wall-clock seconds of `repeats` calls of fn() (synchronising on CUDA): the least disturbed by other
    processes."""
    cuda = device is not None and torch.device(device).type == "cuda"
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def print_table(columns, rows, out=sys.stdout):
    """A plain whitespace-aligned table: a header line, a rule, one line per row."""
    cells = [[str(c) for c in columns]] + [[str(x) for x in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    print("\n".join(lines), file=out, flush=True)


def machine_line():
    """torch version, threads and the load average, for the header of every table."""
    return (f"torch {torch.__version__}, threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
            "(other processes on the machine slow the runs)")
