"""The exact delta rule, chunk-parallel (UT transform), for linear memory with the l2 bias; the Triton twin
is `kernels/delta_rule.py`, the reference the token loop `recurrent.py`.

For bias="l2", optimizer gd or implicit, retention none / l2, the exact recurrence is linear in the
memory, W_t = α_t W_{t−1} + k_t u_tᵀ with u_t = η_t (v_t − k_t P_t), so inside a chunk of C tokens
starting from W0 the "pseudo-values" u solve one unit lower-triangular system:

    u_i + η_i Σ_{j<i} Λ_{ij} (k_i·k_j) u_j = η_i (v_i − c_i k_i W0),

with c_i, Λ_{ij} the decay from W0 resp. token j to the gradient point of token i:
retained (P_i = α_i W_{i−1}): c_i = b_i, Λ_{ij} = b_i/b_j;  previous (P_i = W_{i−1}): c_i = b_{i−1},
Λ_{ij} = b_{i−1}/b_j. Then o = diag(b) Q W0 + ((Q Kᵀ) ⊙ L) U and W_C = b_C W0 + Kᵀ (L_{C−1} ⊙ U).
For implicit steps η is replaced by η/(1 + η‖k‖²) (Longhorn, `optimizer.implicit_rate`), which
`minibatch.chunk_decays` already did. Only the state hand-off differs from the dual form: the reads are
`minibatch.dual_read`'s.
"""

import torch
import torch.nn.functional as F

from .minibatch import dual_scan


def delta_rule_update(spec, k, v, decays, A0, S0):
    """The state hand-off of one chunk of the exact delta rule; same contract as `minibatch.dual_update`.

    The update factors are (k, −u): the reads o = diag(b) Q W0 + ((Q Kᵀ) ⊙ L) U come from `minibatch.dual_read`.
    """
    (W0,) = A0
    L = decays.mix
    if spec.grad_at == "retained":
        start_decay, pair_decay = decays.b, L.tril(-1)
    else:
        start_decay = F.pad(decays.b[..., :-1], (1, 0), value=1.0)
        pair_decay = F.pad(L[..., :-1, :], (0, 0, 1, 0)).tril(-1)
    eta = decays.eta.unsqueeze(-1)
    system = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device) + eta * (k @ k.transpose(-1, -2)) * pair_decay
    rhs = eta * (v - start_decay.unsqueeze(-1) * (k @ W0))
    u = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    W = decays.b[..., -1, None, None] * W0 + k.transpose(-1, -2) @ (L[..., -1, :].unsqueeze(-1) * u)
    return (k,), (-u,), (W,), S0, None


def delta_rule_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every=None):
    """The exact recurrence in chunks of `chunk_size` tokens (any size gives the same values); same layout and
    returns as `recurrent.recurrent_scan`."""
    return dual_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every,
                     update=delta_rule_update)
