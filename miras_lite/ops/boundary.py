"""The boundary chunk rule (`chunk_rule="boundary"`, docs/design.md §4): the Miras paper's parallel training for
the non-linear retentions lq (Moneta) and kl (Memora). Their read-out N is applied at chunk boundaries only;
inside a chunk the memory evolves linearly, so a chunk costs one dual form (`minibatch.py`), as for the
linear retentions, instead of materialising every token's accumulator.

Each chunk t0 .. t0+C−1 starts with its lag token, which takes the exact step (docs/design.md §2) from the
chunk-start state A0, S0:

    A_lag = α_{t0} A0 + U_{t0}(P),     o_{t0} = M(q_{t0}; N(A_lag)).

The read-out the lag token produces is then frozen for the rest of the chunk, which runs linearly from the
start weights V0 with the gradient points P_t = V0 (grad_at="previous") or b'_t V0 ("retained"),
b'_t = Π_{j=t0+1..t} α_j:

    Ṽ_t = b'_t V0 + γ'_t S_lag − Σ_{t0<i≤t} M'_{ti} η_i G_i(c·P_i),        o_t = M(q_t; c · Ṽ_t)

(M', γ' the step mix of `optimizer.chunk_mix` over the chunk after its lag token) with, per retention,

    lq:  V0 = A_lag, c = 1 / max(‖A_lag‖_q, ε)^{q−2}   (one normaliser per weight matrix and chunk: the chunk
         is the dual form divided by one scalar); the next chunk starts from A = Ṽ_last.
    kl:  V0 = W_lag = c_s·softmax(A_lag), c = 1   (the log and the softmax are dropped inside the chunk); the
         next chunk starts from the logits A = log(max(Ṽ_last, c_s·ε) / c_s), so its lag token computes
         c_s·softmax(α log(Ṽ/c_s) − η G), the paper's Softmax(α log W − η∇ℓ) (the log-softmax differs by a
         constant per column, which the softmax ignores).
         Each step inside the chunk is the KL step to first order: a logit step −ηG moves the weights by
         −η W ⊙ (G − 1·(1ᵀ(W ⊙ G))/c_s), which for G = x ⊗ δ is rank-one when the columns of W are equal,
         W = ρ 1ᵀ: −η x̂ ⊗ δ with x̂ = ρ ⊙ (x − (ρ·x)/c_s). With ρ the row means of V0, the update inputs x
         become x̂ (`_natural_inputs`) and the chunk stays one dual form. The plain step −ηG would move
         weights of size ~1/Din by ηG, tens of times the KL step, and the log at the chunk end would clamp
         every weight it drove negative.

A chunk of one token is its lag token: at C = 1 the rule is the exact recurrence. Every other retention has
no non-linear read-out to defer; for them the boundary rule is the mini-batch rule, which `dispatch` runs.
"""

import torch

from ..retention import readout, scaled_readout
from .minibatch import (ChunkReads, _gradient_point_matmuls, _hand_off, _is_snapshot, _per_chunk, _update_factors,
                        chunk_decays, chunk_groups)
from .recurrent import exact_step


def _natural_inputs(spec, V0, inputs):
    """kl: the update inputs x̂ = ρ ⊙ (x − (ρ·x)/c_s), ρ the row means of each weight matrix of V0 (module
    docstring); any other retention: x."""
    if spec.retention != "kl":
        return inputs
    rows = tuple(V_j.mean(-1).unsqueeze(-2) for V_j in V0)  # [B, H, 1, Din]
    return tuple(r * (x - (x * r).sum(-1, keepdim=True) / spec.simplex_scale) for x, r in zip(inputs, rows))


def _chunk_end(spec, V_last):
    """The accumulator the next chunk starts from."""
    if spec.retention == "lq":
        return V_last
    return tuple(torch.log(torch.clamp_min(V_j / spec.simplex_scale, spec.eps)) for V_j in V_last)


class _Chunks:
    """One group of equal-length chunks split into lag tokens (per chunk, [B, H, ...]) and the tokens after
    them ([B, H, N, C − 1, ...], with their decays, and per chunk). Every tensor is split once: indexing a
    chunk out of the sequence per chunk would make each backward step write a full-size gradient."""

    def __init__(self, spec, tensors, start, count, length):
        B, H = tensors[0].shape[:2]

        def chunks(x):
            return None if x is None else x[:, :, start:start + count * length].reshape(B, H, count, length,
                                                                                      *x.shape[3:])

        def per_chunk(x):
            return [None] * count if x is None else x.unbind(2)

        grouped = [chunks(x) for x in tensors]
        self.lag = list(zip(*(per_chunk(None if x is None else x[:, :, :, 0]) for x in grouped)))
        if length == 1:
            self.after = None
            return
        self.q, k, v, eta, alpha, theta, delta = (None if x is None else x[:, :, :, 1:] for x in grouped)
        # kl reads its first weight through the update inputs x̂, not k: `dual_read` forms its scores
        self.decays = chunk_decays(spec, None if spec.retention == "kl" else self.q, k, eta, alpha, theta, delta)
        self.after = list(zip(per_chunk(k), per_chunk(v), _per_chunk(self.decays)))


def boundary_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every=None):
    """The boundary rule for retention lq or kl (module docstring); same layout and returns as
    `recurrent.recurrent_scan`."""
    linear = spec.replace(retention="l2")  # inside a chunk the weights are read as they are (times c)
    tensors = (q, k, v, eta, alpha, theta, delta)
    outputs, snapshots = [], []
    for start, count, length in chunk_groups(q.shape[2], chunk_size):
        group = _Chunks(spec, tensors, start, count, length)
        reads = None if group.after is None else ChunkReads(linear, group.q, group.decays)
        lag_reads = []
        for n in range(count):
            o_lag, A, S, W_lag = exact_step(spec, group.lag[n], A, S, scaled_readout(spec, A))
            lag_reads.append(o_lag)
            if group.after is not None:
                # lq: V0 = A_lag read with c = 1/max(‖A_lag‖_q, ε)^{q−2}; kl: V0 = c_s·softmax(A_lag), no scale
                V0, c = W_lag
                k_n, v_n, decays = group.after[n]
                inputs, scaled_grads = _update_factors(linear, k_n, v_n, decays,
                                                       *_gradient_point_matmuls(linear, V0, decays.b, c))
                inputs = _natural_inputs(spec, V0, inputs)
                reads.add(V0, S, inputs, scaled_grads, None if c is None else tuple(x.unsqueeze(-1) for x in c))
                V_last, S = _hand_off(linear, decays, V0, S, inputs, scaled_grads)
                A = _chunk_end(spec, V_last)
            if _is_snapshot(snapshot_every, start, length, n):
                snapshots.append(tuple(readout(spec, A_j) for A_j in A))
        o = torch.stack(lag_reads, dim=2).unsqueeze(3)  # [B, H, N, 1, Dv]
        if reads is not None:
            o = torch.cat([o, reads.result()], dim=3)
        outputs.append(o.flatten(2, 3))
    return torch.cat(outputs, dim=2), A, S, snapshots
