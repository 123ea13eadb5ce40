"""Retention gates as maps on the accumulator A (DESIGN §2 step 5).

The recursion is always A_t = E(α_t A_{t−1} + U_t) and the memory that is read is W_t = N(A_t):

- `write_map` E: the soft threshold S_γ for `elastic`, the identity otherwise.
- `readout`   N: `lq` divides by ‖A‖_q^{q−2} (Moneta), `kl` is c·softmax over the input (key)
  axis (Memora), the identity otherwise.

Both act on one weight matrix: the last two axes are (input, output).
"""

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
    """1 / max(‖A‖_q, ε)^{q−2} over the last two axes, kept as [..., 1]: lq's N(A) = lq_scale(A) · A."""
    power_sum = _abs_power(A, spec.q).sum((-2, -1)).unsqueeze(-1)
    q_norm = power_sum.clamp_min(torch.finfo(A.dtype).tiny).pow(1.0 / spec.q).clamp_min(spec.eps)
    return q_norm.pow(2.0 - spec.q)


def readout(spec, A):
    """N(A): the memory W that the accumulator A stands for."""
    if spec.retention == "lq":
        return lq_scale(spec, A).unsqueeze(-1) * A
    if spec.retention == "kl":
        return spec.simplex_scale * torch.softmax(A, dim=-2)
    return A
