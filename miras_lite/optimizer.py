"""The memory-optimiser axis: the step U_t the inner optimiser takes on the gradient G_t (docs/design.md §2 step 4).

    gd         U_t = −η_t G_t
    momentum   S_t = θ_t S_{t−1} − η_t G_t,   U_t = S_t                      (Titans)
    implicit   U_t = −η_t / (1 + η_t ‖k_t‖²) · k_t ⊗ e_t                      (Longhorn; l2 bias, linear memory)

The implicit step is gd on the l2 bias with the effective rate η̃_t = η_t / (1 + η_t ‖k_t‖²): the
closed-form solution of the proximal step, so chunked forms only need `implicit_rate`.

Inside a chunk (`chunk_mix`), the step of token i reaches the accumulator at token t with the weight
M_{ti}: L_α[t, i] for gd / implicit, (L_α L_θ)[t, i] for momentum, where L_x[t, i] = Π_{m=i+1..t} x_m;
with momentum the chunk-start S0 adds γ_t S0, γ_t = Σ_j L_α[t, j] Θ_j, Θ_j = Π_{m≤j} θ_m.
"""

from typing import NamedTuple

import torch

from .retention import cumulative_decay, decay_matrix


def implicit_rate(eta, k):
    """η̃ = η / (1 + η ‖k‖²) (per token; ‖k‖ over the last axis of k)."""
    return eta / (1.0 + eta * k.square().sum(-1))


def effective_rate(spec, eta, k):
    """The step size the gradient is multiplied by: η̃ for implicit steps, η otherwise."""
    return implicit_rate(eta, k) if spec.optimizer == "implicit" else eta


def step(spec, G, S, eta, theta):
    """(U, S) of one token from the gradients G (a tuple, one per weight matrix) for gd / momentum; η, θ are
    [..., 1, 1]. (Implicit steps are gd with `implicit_rate`.)"""
    if spec.optimizer == "momentum":
        S = tuple(theta * S_j - eta * G_j for S_j, G_j in zip(S, G))
        return S, S
    return tuple(-eta * G_j for G_j in G), S


class ChunkMix(NamedTuple):
    """How the steps inside one chunk mix into the accumulator (module docstring), all [..., C] or [..., C, C]."""

    b: torch.Tensor  # Π α inside the chunk up to t
    mix: torch.Tensor  # M
    gamma: torch.Tensor | None  # weight of S0 in the accumulator at t (momentum only)
    theta_mix_last: torch.Tensor | None  # L_θ[C−1, i]: weight of step i in the chunk-end momentum
    theta_prod_last: torch.Tensor | None  # Θ_{C−1}: weight of S0 in the chunk-end momentum


def chunk_mix(spec, alpha, theta):
    """`ChunkMix` of chunks laid out as rates [..., C]."""
    L = decay_matrix(alpha)
    b = cumulative_decay(alpha)
    if spec.optimizer != "momentum":
        return ChunkMix(b, L, None, None, None)
    L_theta = decay_matrix(theta)
    theta_prod = cumulative_decay(theta)
    gamma = (L @ theta_prod.unsqueeze(-1)).squeeze(-1)
    return ChunkMix(b, L @ L_theta, gamma, L_theta[..., -1, :], theta_prod[..., -1])
