"""Every claim of the benchmark, by name."""

from .miras import moneta_pq
from .titans import titans_ablation

CLAIMS = (titans_ablation, moneta_pq)


def all_claims(reduced_runs=False):
    """name -> Claim, every claim of the benchmark (tiny runs with `reduced_runs`)."""
    claims = [make() for make in CLAIMS]
    return {c.name: c.reduced() if reduced_runs else c for c in claims}
