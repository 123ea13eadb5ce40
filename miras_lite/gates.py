"""Gates: how a layer turns a token x into the inner optimiser's per-token rates (docs/design.md §2).

    η_t = η_max · σ(w_η·x + b_η)                 inner learning rate, in (0, η_max)
    α_t = α_floor + (1 − α_floor) · σ(w_α·x + b_α)  retention, in (0, 1]   (or one learned logit per head)
    θ_t = θ_ceil · σ(w_θ·x + b_θ)                momentum, in [0, 1)
    δ_t = δ_floor + softplus(w_δ·x + b_δ)        per-token Huber threshold, > 0

The floors and the ceiling keep a saturated float32 sigmoid inside the ranges `memory_scan` accepts.
Gate weights start at N(0, 0.02²), so at initialisation the rates are set by the biases: `default_eta_max`,
`initial_eta_fraction` and `initial_alpha_range` say which values, and why.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

ALPHA_FLOOR = 1e-6
THETA_CEIL = 1.0 - 1e-5
DELTA_FLOOR = 1e-4


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def gate(d_model: int, heads: int, bias) -> nn.Linear:
    """A Linear(d_model → heads) gate with weights N(0, 0.02²) and the given initial bias (a float or [heads])."""
    lin = nn.Linear(d_model, heads)
    nn.init.normal_(lin.weight, std=0.02)
    with torch.no_grad():
        lin.bias.copy_(torch.as_tensor(bias, dtype=lin.bias.dtype).expand(heads))
    return lin


def eta_gate(z, eta_max):
    return eta_max * torch.sigmoid(z)


def alpha_gate(z):
    return ALPHA_FLOOR + (1.0 - ALPHA_FLOOR) * torch.sigmoid(z)


def theta_gate(z):
    return THETA_CEIL * torch.sigmoid(z)


def delta_gate(z):
    return DELTA_FLOOR + F.softplus(z)


def delta_gate_bias(delta: float) -> float:
    """The gate bias that makes δ_t start at `delta` (the inverse of `delta_gate` at w = 0)."""
    return math.log(math.expm1(max(delta - DELTA_FLOOR, 1e-6)))


def alpha_biases(low: float, high: float, heads: int) -> torch.Tensor:
    """Per-head α biases spread evenly in logit space from `low` (first head) to `high` (last head)."""
    if heads == 1:
        return torch.tensor([logit((low + high) / 2)])
    return torch.linspace(logit(low), logit(high), heads)


def default_eta_max(spec, chunk_size: int | None) -> float:
    """The largest inner learning rate a layer produces by default (η_t = η_max · σ(·)).

    ``η_max = min(cap, 2 / C)`` with ``cap = 1`` for a linear memory and ``0.1`` for an MLP memory;
    the ``2 / C`` term applies only to chunked scans (``C = chunk_size >= 3``).

    * Linear memory, exact recurrence: with unit keys the delta rule ``W ← (I − η k kᵀ) W + ...``
      is a contraction for η ∈ (0, 2), so η < 1 is always stable.
    * Chunked (mini-batch) scans take every gradient of a chunk at the same point, so one chunk
      applies the summed step ``Σ_i η_i k_i k_iᵀ``, whose norm reaches ``C · η_max`` for aligned
      keys; ``η_max = 2 / C`` bounds it by 2 whatever the keys. Measured without it: deltanet /
      gated_deltanet / longhorn with C=64 and η≈0.5 grow their state geometrically, chunk after
      chunk (|A| ~ 1e13 at T=2048). The dot bias on a linear memory is exempt: its gradient
      −k ⊗ v does not depend on the memory, chunking changes nothing, η_max stays 1.
    * MLP memory (LayerNorm inside): no such bound exists; measured on fresh layers, the outer
      gradients of the exact recurrence explode over a few hundred tokens for η ≳ 0.03-0.1
      (moneta, memora), hence the cap 0.1 (and an initial η of η_max/10).
    """
    cap = 0.1 if spec.memory == "mlp" else 1.0
    if (spec.memory == "linear" and spec.bias == "dot") or chunk_size is None or chunk_size <= 2:
        return cap
    return min(cap, 2.0 / chunk_size)


def initial_eta_fraction(spec) -> float:
    """η starts at this fraction of η_max: 1/2 for a linear memory (the sigmoid's steepest point; DeltaNet's
    usual 0.5 for the exact recurrence), 1/10 for an MLP memory (0.1 made the outer gradients of fresh
    moneta / memora layers explode, 1e5-1e13 at T=256-512)."""
    return 0.1 if spec.memory == "mlp" else 0.5


def initial_alpha_range(spec) -> tuple[float, float]:
    """(first head, last head) initial α: [0.95, 0.99] for a linear memory (time constants of 20-100 tokens),
    [0.99, 0.999] for an MLP memory: weight decay drives an MLP memory towards zero weights, where the
    LayerNorm inside it has a huge Jacobian, and the backward pass through time explodes (titans with
    α ≈ 0.9: 1e6 at T=256)."""
    return (0.99, 0.999) if spec.memory == "mlp" else (0.95, 0.99)
