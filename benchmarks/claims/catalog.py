"""Every claim of the benchmark, by name."""

from .armt import armt_gamma
from .miras import moneta_pq, robust_biases
from .niah import miras_niah
from .titans import titans_ablation
from .zoology import zoology_mqar

CLAIMS = (titans_ablation, moneta_pq, robust_biases, miras_niah, armt_gamma, zoology_mqar)


def all_claims(reduced_runs=False):
    """name -> Claim, every claim of the benchmark (tiny runs with `reduced_runs`)."""
    claims = [make() for make in CLAIMS]
    return {c.name: c.reduced() if reduced_runs else c for c in claims}
