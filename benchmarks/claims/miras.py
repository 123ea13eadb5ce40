"""Miras (Behrouz, Razaviyayn, Zhong & Mirrokni, arXiv 2504.13173): the choices of attentional bias and
retention gate."""

import miras_lite as ml
from miras_lite.config import MQARConfig

from .core import Beats, Claim, preset_run


def moneta_pq():
    steps = ml.named_preset("moneta").recommended.steps
    points = {(3, 4), (2, 4), (4, 4), (3, 2)}
    return Claim(
        name="moneta_pq", source="Miras (arXiv 2504.13173), the effect of p and q (Moneta)",
        says="Moneta's ℓp attentional bias and ℓq retention with p = 3, q = 4 do better than the ℓ2 choices "
             "(p = 2: the usual regression loss; q = 2: no normalisation).",
        runs={f"p={p}, q={q}": preset_run("moneta", {"p": float(p), "q": float(q)}, steps)
              for p, q in sorted(points)},
        expect=(Beats("p=3, q=4", "p=2, q=4"), Beats("p=3, q=4", "p=3, q=2")))


# MQAR where each key is written 3 times, one write carrying an outlier value; the answer is the majority value
OUTLIER_TASK = MQARConfig(vocab_size=64, seq_len=40, num_kv_pairs=(1, 2, 3, 4), writes=3, write_mode="outlier",
                          train_examples=4096, test_examples=256, eval_pairs=(1, 2, 3, 4))
ROBUST_BIASES = {"l2": {}, "huber": {"bias": "huber"}, "lp, p=1": {"bias": "lp", "p": 1.0},
                 "robust": {"bias": "robust"}}


def robust_biases():
    """gated_deltanet's memory (linear, ℓ2 retention, gd) with each attentional bias, on `OUTLIER_TASK`; and, as
    a control, ℓ2 on the same MQAR with every key written once (no outlier)."""
    control = OUTLIER_TASK.replace(writes=1)
    return Claim(
        name="robust_biases", source="Miras (arXiv 2504.13173), robust attentional biases",
        says="Attentional biases that grow slower than ℓ2 for large errors (Huber, ℓp with p near 1, the robust "
             "loss) keep a memory from being dragged by outliers among the key-value pairs it writes.",
        runs={**{name: preset_run("gated_deltanet", spec, task=OUTLIER_TASK) for name, spec in ROBUST_BIASES.items()},
              "l2, no outliers (control)": preset_run("gated_deltanet", task=control)},
        expect=tuple(Beats(name, "l2") for name in ROBUST_BIASES if name != "l2"),
        metric="recall (mean accuracy over 1–4 pairs, each written 3 times, once with an outlier)")
