"""ARMT (Rodkin, Kuratov, Bulatov & Burtsev, arXiv 2407.04841): the γ correction of the associative memory's
normaliser, which the paper motivates with keys written again and again."""

from miras_lite.config import ARMTConfig, FitConfig, MQARConfig, RunConfig

from .core import Beats, Claim, tiny_fit, tiny_task

# every key written 4 times with a new value (the answer: the last); the writes fill two 16-token segments and
# the queries come in later segments, so the answers reach them through the memory
REWRITE_TASK = MQARConfig(vocab_size=64, seq_len=64, num_kv_pairs=(1, 2, 3, 4), writes=4, write_mode="update",
                          train_examples=4096, test_examples=256, eval_pairs=(1, 2, 3, 4))


def armt_run(gamma):
    return RunConfig(task=REWRITE_TASK,
                     model=ARMTConfig(d_model=64, n_layers=2, num_heads=4, segment_size=16, num_mem_tokens=8,
                                      conv_size=4, dpfp_gamma=gamma),
                     fit=FitConfig(steps=600, batch_size=32, lr=3e-3, warmup=30), threads=1)


def reduced_armt(run):
    """A tiny version: the suite's MQAR, ARMT of width 8 with segments of 8 tokens and 2 memory tokens."""
    return run.replace(task=tiny_task(run.task), fit=tiny_fit(run.fit),
                       model=run.model.replace(d_model=8, num_heads=2, segment_size=8, num_mem_tokens=2))


def armt_gamma():
    return Claim(
        name="armt_gamma", source="ARMT (arXiv 2407.04841), the γ correction",
        says="Correcting the normaliser z by γ, the share of a key that is new to the memory, lets ARMT rewrite "
             "the same keys many times: without it, every rewrite adds the key to z again and the reads fade.",
        runs={"armt": armt_run(True), "armt w/o γ": armt_run(False)},
        expect=(Beats("armt", "armt w/o γ"),), shrink=reduced_armt,
        metric="recall of the last value written (mean accuracy over 1–4 pairs, each written 4 times)")
