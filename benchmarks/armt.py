"""`python -m benchmarks.armt`: ARMT on BABILong-style qa1, trained on contexts of at most 16K tokens, streamed
to 10M.

The recipe grows the context over a curriculum, as ARMT's own training grows the number of segments
(arXiv 2407.04841): no filler first (story and question share a segment, so attention alone answers and
the fact-reading circuit forms), then 256 ... 2048 tokens, where the question has a segment of its own
and the answer can only come through the memory, backpropagating through every segment; then 4K, 8K and
16K tokens in batches of 16, backpropagating through the last 32 segments only (`ARMTConfig.bptt_segments`:
the segments before them run without a graph and hand on their memory), so a 16K context costs about one
forward pass. On long contexts the memory must not fill up with filler: the long stages teach the write
gate β to stay shut on filler segments, and there the penalty `write_l1` · mean β keeps writes sparse. Each
stage starts once the mean training loss of 20 steps is below `advance_below`; training batches ask every answerable
question of the story. The budget is CPU time on one thread. The trained run is saved (a run directory
`eval` reads), then streamed (`ARMT.stream`, constant memory) at each context length of the table, the
samples of one length together.
"""

import argparse
import os
import resource
import sys

import polars as pl
import torch

from miras_lite.config import ARMTConfig, BabiLongConfig, FitConfig, RunConfig
from miras_lite.runs import load_run
from miras_lite.tasks.babilong import BabiLong, babilong_accuracy, batched_segments

from .common import machine_line, print_table

SHORT = (0, 256, 512, 1024, 2048)  # batches of 32, backpropagated through every segment
LONG = (4096, 8192, 16_384)  # batches of 16, backpropagated through the last BPTT_SEGMENTS segments
BPTT_SEGMENTS = 32  # 4096 tokens
WRITE_L1 = 1.0  # the write-gate penalty on inputs longer than BPTT_SEGMENTS: the LONG stages
RECIPE = RunConfig(
    task=BabiLongConfig("qa1", context_length=LONG[-1], test_examples=64, questions="all"),
    model=ARMTConfig(d_model=64, n_layers=2, num_heads=4, segment_size=128, num_mem_tokens=8, conv_size=6,
                     bptt_segments=BPTT_SEGMENTS, write_l1=WRITE_L1),
    fit=FitConfig(steps=3000, batch_size=32, lr=3e-3, warmup=30, eval_every=0),
    curriculum=(*((0 if i == 0 else 3000, {"context_length": n}) for i, n in enumerate(SHORT)),
                *((3000, {"context_length": n, "batch_size": 16}) for n in LONG)),
    advance_below=0.4, threads=1)
BUDGET_CPU_S = 1500.0
# (context length, samples): the samples of one length are streamed together, as one batch (at most 32)
EVALUATION = ((2048, 100), (16_384, 100), (65_536, 100), (1_048_576, 20), (10_485_760, 1))
TARGETS = {65_536: 0.9, 1_048_576: 0.8}
DRIFT_LENGTHS = (2048, 16_384, 65_536)
PAPER = "ARMT (arXiv 2407.04841, trained on at most 16K tokens): qa1 79.9% at 50M tokens"

QUICK = RECIPE.replace(task=RECIPE.task.replace(context_length=32, test_examples=4),
                       model=ARMTConfig(d_model=16, n_layers=1, num_heads=2, segment_size=16, num_mem_tokens=2,
                                        conv_size=3, bptt_segments=1, write_l1=1.0),
                       fit=RECIPE.fit.replace(steps=6, batch_size=4, warmup=2),
                       curriculum=((0, {"context_length": 0}), (3, {"context_length": 32, "batch_size": 2})))
QUICK_EVALUATION = ((64, 2), (256, 1))
QUICK_DRIFT = (256,)


def _progress(row):
    if row["step"] % 50 == 0:
        print(f"# step {row['step']} loss {row['loss']:.3f} {row['time_s']:.0f}s {row['cpu_s']:.0f} CPU-s",
              file=sys.stderr, flush=True)
    return False  # never asks fit to stop


def length_rows(model, evaluation, seed=0):
    """Streamed accuracy per (context length, samples), next to `TARGETS`."""
    rows = []
    for length, samples in evaluation:
        frame = babilong_accuracy(model, "qa1", [length], num_samples=samples, segment_size=model.segment_size,
                                  seed=seed)
        rows.append({"context": length, "samples": samples, "accuracy": frame["accuracy"][0],
                     "target": TARGETS.get(length), "tokens_per_s": frame["tokens_per_s"][0],
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "load": os.getloadavg()[0]})
    return rows


@torch.no_grad()
def memory_drift(model, lengths=DRIFT_LENGTHS, samples=8, seed=0):
    """How the memory fares along long contexts: for each context length, `samples` test stories are read
    segment by segment (`ARMT.segment`, as `stream` reads them) and per segment the write gate β (the largest of
    the memory tokens') and the write ‖A_s − A_{s−1}‖_F are kept, apart for segments holding a fact and for
    filler; ‖A‖_F is the memory at the end. Means over layers and stories."""
    bench, rows = BabiLong("qa1", 0, seed=seed), []
    for length in lengths:
        stories = [bench.sample(i, length) for i in range(samples)]
        state = model.initial_state(samples)
        beta, write, fact = [], [], []
        for index, ids in enumerate(batched_segments(stories, model.segment_size)):
            gates, before = [], [layer.A for layer in state]
            _, state = model.segment(ids, state, gates)
            beta.append(torch.stack([g.amax(dim=(1, 2, 3)) for g in gates]).mean(0))
            write.append(torch.stack([(layer.A - A).flatten(1).norm(dim=1) for layer, A in zip(state, before)]).mean(0))
            span = (index * model.segment_size, (index + 1) * model.segment_size)
            fact.append(torch.tensor([any(span[0] <= p < span[1] for p in s.fact_positions) for s in stories]))
        beta, write, fact = torch.stack(beta)[1:], torch.stack(write)[1:], torch.stack(fact)[1:]  # segment 0: empty A
        rows.append({"context": length, "segments": len(fact) + 1, "beta_fact": beta[fact].mean().item(),
                     "beta_filler": beta[~fact].mean().item(),
                     "write_ratio": (write[fact].mean() / write[~fact].mean()).item(),
                     "memory_norm": torch.stack([layer.A.flatten(1).norm(dim=1) for layer in state]).mean().item()})
    return rows


def _train(recipe, args):
    print(f"# ARMT qa1: {recipe.to_dict()}; at most {BUDGET_CPU_S:.0f} CPU-s; {machine_line()}", flush=True)
    callbacks = [lambda row: row["cpu_s"] >= BUDGET_CPU_S] + ([_progress] if args.progress else [])
    model, metrics = recipe.train(out_dir=args.run_dir, callbacks=callbacks)
    last = metrics.row(-1, named=True)
    print(f"# trained {last['time_s']:.0f}s ({last['cpu_s']:.0f} CPU-s), {last['step']} steps; final training loss "
          f"{metrics['loss'][-20:].mean():.3f}; saved {args.run_dir}", flush=True)
    return model


def _trained(path):
    run = load_run(path)
    print(f"# ARMT qa1: the trained run {path} (step {run.step}); {machine_line()}", flush=True)
    return run.model.eval()


def run(args):
    recipe, evaluation = (QUICK, QUICK_EVALUATION) if args.quick else (RECIPE, EVALUATION)
    torch.set_num_threads(1)  # the recipe trains on one thread; a trained run is streamed on one too
    model = _trained(args.evaluate) if args.evaluate else _train(recipe, args)
    rows = length_rows(model, evaluation)
    print(f"# paper: {PAPER}; peak_rss_mb is the process's peak so far (flat: streaming holds no context)")
    print_table(("context", "samples", "accuracy", "target", "met", "stream_tok/s", "peak_rss_mb", "load"),
                [(r["context"], r["samples"], f"{r['accuracy']:.3f}", "-" if r["target"] is None else r["target"],
                  "-" if r["target"] is None else "yes" if r["accuracy"] >= r["target"] else "no",
                  f"{r['tokens_per_s']:,.0f}", f"{r['peak_rss_mb']:,.0f}", f"{r['load']:.1f}") for r in rows])
    stories = 2 if args.quick else 8
    drift = memory_drift(model, QUICK_DRIFT if args.quick else DRIFT_LENGTHS, samples=stories)
    print(f"# the memory along the context ({stories} stories per length): write gate β, the largest of the memory "
          "tokens', on segments with a fact and on filler; a fact segment's write ‖ΔA‖ over a filler segment's; "
          "‖A‖ at the end")
    print_table(("context", "segments", "beta_fact", "beta_filler", "write_ratio", "|A|_end"),
                [(r["context"], r["segments"], f"{r['beta_fact']:.3f}", f"{r['beta_filler']:.1e}",
                  f"{r['write_ratio']:,.0f}", f"{r['memory_norm']:.2f}") for r in drift])
    frame = pl.DataFrame(rows)
    if args.out:
        frame.write_parquet(args.out)
    return frame


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.armt", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default="runs/armt-qa1", help="where the trained run is saved (default runs/armt-qa1)")
    p.add_argument("--evaluate", metavar="RUN_DIR", help="stream a trained run (e.g. data/models/armt-qa1) instead of "
                   "training one")
    p.add_argument("--quick", action="store_true", help="a tiny ARMT for a few steps (a smoke test)")
    p.add_argument("--progress", action="store_true", help="print the loss every 50 steps to stderr")
    p.add_argument("--out", help="write the accuracy table here (parquet)")
    return p


def main(argv=None):
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
