"""The retention axis: how the memory keeps or forgets its past (docs/design.md §2 step 5).

The recursion is always A_t = E(α_t A_{t−1} + U_t) and the memory that is read is W_t = N(A_t):

    none      α_t = 1,   E = N = identity
    l2        decay α_t ∈ (0, 1]                         E = N = identity
    elastic   E(A) = S_γ(A) = sign(A)·max(|A| − γ, 0)    N = identity
    lq        N(A) = A / max(‖A‖_q, ε)^{q−2}  (Moneta; q-norm over the whole matrix)
    kl        N(A) = c · softmax(A) over the input (key) axis  (Memora; each output column on a scaled simplex)

`write_map` is E and `readout` is N; both act on one weight matrix (last two axes: input, output).
Products of α over a span of tokens are formed in log space (`log_rate`, `decay_matrix`), never by
division, so α (or θ, which shares these helpers) may be tiny or 0 without NaNs.
"""

from typing import NamedTuple

import torch


def write_map(spec, A):
    """E(A): S_γ(A) = sign(A)·max(|A| − γ, 0) for elastic, A otherwise."""
    if spec.retention == "elastic":
        return torch.sign(A) * torch.relu(A.abs() - spec.gamma)
    return A


def _abs_power(A, q):
    """|A|^q, with q = 2 and q = 4 (Moneta's) as A² and (A²)²: pow's generic path is several times slower,
    forward and backward."""
    if q == 2:
        return A.square()
    if q == 4:
        return A.square().square()
    return A.abs().pow(q)


def lq_scale(spec, A):
    """1 / max(‖A‖_q, ε)^{q−2} over the last two axes, kept as [..., 1]: lq's N(A) = lq_scale(A) · A.

    ‖A‖_q = m (Σ (|A|/m)^q)^{1/q} with m = max |A| (held constant: m cancels, so the gradient is exact), so
    Σ |A|^q cannot overflow float32 however large A grows."""
    tiny = torch.finfo(A.dtype).tiny
    m = A.detach().abs().amax((-2, -1), keepdim=True).clamp_min(tiny)
    power_sum = _abs_power(A / m, spec.q).sum((-2, -1)).unsqueeze(-1)
    q_norm = (m.squeeze(-1) * power_sum.clamp_min(tiny).pow(1.0 / spec.q)).clamp_min(spec.eps)
    return q_norm.pow(2.0 - spec.q)


def readout(spec, A):
    """N(A): the memory W that the accumulator A stands for."""
    if spec.retention == "lq":
        return lq_scale(spec, A).unsqueeze(-1) * A
    if spec.retention == "kl":
        return spec.simplex_scale * torch.softmax(A, dim=-2)
    return A


class ReadOut(NamedTuple):
    """W = N(A) as weight matrices times optional per-matrix scales, W_j = c_j · weights_j. lq keeps A and its
    c = `lq_scale`(A) apart, so c·A is never formed (every use of a weight is a product u·W, see
    `memory.weight_matmuls`); any other retention has weights N(A) and no scales."""

    weights: tuple
    scales: tuple | None

    def explicit(self):
        """The weight matrices N(A) themselves."""
        if self.scales is None:
            return self.weights
        return tuple(c.unsqueeze(-1) * W for c, W in zip(self.scales, self.weights))


def scaled_readout(spec, A):
    """N(A) of a memory (a tuple of accumulators) as a `ReadOut`."""
    if spec.retention == "lq":
        return ReadOut(A, tuple(lq_scale(spec, A_j) for A_j in A))
    return ReadOut(tuple(readout(spec, A_j) for A_j in A), None)


def log_rate(a):
    """log a for a rate in [0, 1]; a = 0 (θ may be 0) becomes a decay of e^-87 or less, with no gradient."""
    return a.clamp_min(torch.finfo(a.dtype).tiny).log()


def cumulative_decay(a):
    """b_t = Π_{j≤t} a_j along the last axis."""
    return torch.exp(log_rate(a).cumsum(-1))


def decay_matrix(a):
    """L[..., t, i] = Π_{m=i+1..t} a_m for t ≥ i and 0 for t < i, from a [..., C].

    exp(c_t − c_i) with c the cumulative sum of log a; the upper triangle is masked before the exp, so
    it cannot overflow. Differences of cumulative sums lose ~|c|·ε relative accuracy, which only
    matters where the product is e^{−|c|} ≈ 0 anyway.
    """
    C = a.shape[-1]
    log_cumulative = log_rate(a).cumsum(-1)
    lower = torch.ones(C, C, dtype=torch.bool, device=a.device).tril()
    return torch.exp(torch.where(lower, log_cumulative.unsqueeze(-1) - log_cumulative.unsqueeze(-2), -torch.inf))
