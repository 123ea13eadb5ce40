"""Miras (arXiv 2504.13173), Table 3: single needle in a haystack (RULER's S-NIAH), the Miras models against
gated_deltanet, Titans and attention. At toy scale: trained on short haystacks, read at 8 to 32 times that."""

import time

import polars as pl
import torch

from miras_lite.config import FitConfig, MirasLMConfig, NIAHConfig, RunConfig
from miras_lite.presets import recommended
from miras_lite.tasks.niah import niah_accuracy

from .core import Beats, Claim, tiny_fit

# RULER's S-NIAH-1: a 4-digit passkey in repeated noise, trained at 128 tokens
NEEDLE_TASK = NIAHConfig(haystack="passkey", context_length=128, digits=4, test_examples=8)
READ_AT = (8, 16, 32)  # read at these multiples of the training length: 1K, 2K, 4K tokens
MODELS = ("moneta", "yaad", "memora", "gated_deltanet", "titans", "attention")
STEPS = 600
# the paper's S-NIAH average (%, 760M parameters, Table 3), as a fraction
PAPER = {"moneta": 0.935, "yaad": 0.929, "memora": 0.921, "gated_deltanet": 0.758}


def needle_run(model):
    """`model` (a preset, or "attention") as MirasLM (width 64, 2 layers, 1 head) at its recommended chunk size,
    η_max and learning rate, STEPS steps of batch 16 on `NEEDLE_TASK`."""
    settings = recommended(model)
    attention = model == "attention"
    return RunConfig(task=NEEDLE_TASK, spec="gated_deltanet" if attention else model,
                     model=MirasLMConfig(d_model=64, n_layers=2, num_heads=1, mixer="attention" if attention else "miras",
                                         chunk_size=settings.chunk_size, eta_max=settings.eta_max),
                     fit=FitConfig(steps=STEPS, batch_size=16, lr=settings.lr, warmup=50), threads=1)


def read_needles(run, model):
    """`niah_accuracy` of `model` at READ_AT × the training length of `run`, on the run's threads: `run.train()`
    gives the process its default back, and a second thread on a busy machine made reading ~100× slower."""
    task = run.task.build(run.seed)
    lengths = [factor * run.task.context_length for factor in READ_AT]
    threads = torch.get_num_threads()
    torch.set_num_threads(run.threads or threads)
    try:
        return niah_accuracy(model, task, context_lengths=lengths, batch_size=8)
    finally:
        torch.set_num_threads(threads)


def needle_recall(run):
    """Train `run`, then read needles at READ_AT × its training length, 5 depths each: recall is the mean
    exact-match accuracy over lengths and depths."""
    start = time.perf_counter()
    model, metrics = run.train()
    train_s = time.perf_counter() - start
    frame = read_needles(run, model)
    by_length = frame.group_by("context_length", maintain_order=True).agg(pl.col("accuracy").mean())
    return {"recall": float(frame["accuracy"].mean()),
            "accuracy_by_length": [{"context_length": n, "accuracy": a} for n, a in by_length.iter_rows()],
            "final_loss": metrics["loss"][-1], "loss_curve": metrics["loss"].to_list(), "train_s": train_s,
            "eval_s": time.perf_counter() - start - train_s}


def tiny_needles(run):
    """A tiny version: the passkey in 48 tokens (read at 384 to 1536), width 8, 4 steps, 2 needles per depth."""
    return run.replace(task=run.task.replace(context_length=48, test_examples=2), fit=tiny_fit(run.fit),
                       model=run.model.replace(d_model=8, chunk_size=None if run.model.chunk_size is None else 4))


def miras_niah():
    return Claim(
        name="miras_niah", source="Miras (arXiv 2504.13173), Table 3: needle in a haystack",
        says="Moneta, Yaad and Memora find a single needle in long haystacks better than Gated DeltaNet (S-NIAH "
             "accuracy averaged over RULER's three needle tasks and 1K–8K tokens, models of 760M parameters: "
             "93.5, 92.9 and 92.1% against 75.8%).",
        runs={model: needle_run(model) for model in MODELS},
        expect=tuple(Beats(model, "gated_deltanet") for model in ("moneta", "yaad", "memora")),
        paper=PAPER, score=needle_recall, shrink=tiny_needles, chance=1e-4,
        metric="needle accuracy (4-digit passkey, exact match) at 1K, 2K, 4K tokens, trained at 128")
