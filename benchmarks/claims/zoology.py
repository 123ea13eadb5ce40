"""Zoology (Arora, Eyuboglu et al., arXiv 2312.04927): softmax attention solves multi-query associative recall
at every width, efficient models need more width as the pairs grow."""

import miras_lite as ml
from miras_lite.config import FitConfig, MirasLMConfig, MQARConfig, RunConfig
from miras_lite.presets import recommended as recommended_settings

from .core import Beats, Claim, Reaches, tiny_fit, tiny_task

# (L, D) cells of Zoology's grid: the pair count grows with the length; L=128 trains first on the small cell
CELLS = ((64, 4), (128, 16))
WIDTHS = (64, 128)
STEPS, SWITCH = 800, 300  # the large cell trains on (64, 4) for its first SWITCH steps


def zoology_run(model, d_model, seq_len, pairs):
    """`model` ("attention" or a preset) at width `d_model` on MQAR V=8192 with `pairs` pairs in `seq_len`
    tokens: 2 layers, 1 head, STEPS steps of batch 32, the model's recommended learning rate (and chunk and
    η_max for the presets with an MLP memory)."""
    recommended = recommended_settings(model)
    attention = model == "attention"
    exact = attention or ml.named_preset(model).spec.memory == "linear"
    task = MQARConfig(vocab_size=8192, seq_len=seq_len, num_kv_pairs=pairs, train_examples=20_000,
                      test_examples=256)
    curriculum = () if (seq_len, pairs) == CELLS[0] else ((0, {"seq_len": CELLS[0][0], "num_kv_pairs": CELLS[0][1]}),
                                                          (SWITCH, {}))
    return RunConfig(task=task, spec="gated_deltanet" if attention else model,
                     model=MirasLMConfig(d_model=d_model, n_layers=2, num_heads=1, mixer="attention" if attention
                                         else "miras", chunk_size=None if exact else recommended.chunk_size,
                                         eta_max=None if exact else recommended.eta_max),
                     fit=FitConfig(steps=STEPS, batch_size=32, lr=recommended.lr, warmup=50),
                     curriculum=curriculum, threads=1)


def name(model, d_model, seq_len, pairs):
    return f"{model} d={d_model} L={seq_len} D={pairs}"


def reduced_cell(run):
    """A tiny version of a cell's run (V=16, L=16, 2 pairs, d_model 8, 4 steps, no curriculum)."""
    return run.replace(task=tiny_task(run.task), fit=tiny_fit(run.fit), curriculum=(),
                       model=run.model.replace(d_model=8, chunk_size=None if run.model.chunk_size is None else 4))


def zoology_mqar():
    runs = {name(m, d, L, D): zoology_run(m, d, L, D) for d in WIDTHS for L, D in CELLS
            for m in ("attention", "gated_deltanet")}
    small, (L, D) = WIDTHS[0], CELLS[0]
    runs[name("moneta", small, L, D)] = zoology_run("moneta", small, L, D)
    hard = (WIDTHS[0], *CELLS[-1])
    return Claim(
        name="zoology_mqar", source="Zoology (arXiv 2312.04927), MQAR across widths and pairs",
        says="Softmax attention solves MQAR (accuracy near 1) at every model width tested (64 and up), while "
             "efficient models need a width that grows with the number of key-value pairs.",
        runs=runs,
        expect=(*(Reaches(name("attention", d, L, D), 0.99) for d in WIDTHS for L, D in CELLS),
                Beats(name("attention", *hard), name("gated_deltanet", *hard)),
                Beats(name("gated_deltanet", WIDTHS[-1], *CELLS[-1]), name("gated_deltanet", *hard))),
        shrink=reduced_cell, metric="accuracy on held-out MQAR examples of the trained pair count")
