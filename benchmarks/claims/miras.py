"""Miras (Behrouz, Razaviyayn, Zhong & Mirrokni, arXiv 2504.13173): the choices of attentional bias and
retention gate."""

import miras_lite as ml

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
