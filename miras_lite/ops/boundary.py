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

A chunk of one token is its lag token: at C = 1 the rule is the exact recurrence. Every other retention has
no non-linear read-out to defer; for them the boundary rule is the mini-batch rule, which `dispatch` runs.
"""

import torch

from ..retention import lq_scale, readout
from .minibatch import (_gradient_point_matmuls, _grouped, _hand_off, _is_snapshot, _per_chunk, _stack,
                        _update_factors, chunk_decays, dual_read)
from .recurrent import recurrent_scan


def _linear_start(spec, A_lag):
    """(V0, c): the weights the rest of the chunk starts from and the scale they are read with (None: 1)."""
    if spec.retention == "lq":
        return A_lag, tuple(lq_scale(spec, A_j).unsqueeze(-1) for A_j in A_lag)
    return tuple(readout(spec, A_j) for A_j in A_lag), None


def _chunk_end(spec, V_last):
    """The accumulator the next chunk starts from."""
    if spec.retention == "lq":
        return V_last
    return tuple(torch.log(torch.clamp_min(V_j / spec.simplex_scale, spec.eps)) for V_j in V_last)


class _AfterLag:
    """The tokens after each chunk's lag token, laid out [B, H, N, C − 1, ...], with their decays."""

    def __init__(self, spec, group, tensors, count, length):
        B, H = tensors[0].shape[:2]

        def rest(x):
            if x is None:
                return None
            chunks = x[:, :, group.start:group.start + count * length].reshape(B, H, count, length, *x.shape[3:])
            return chunks[:, :, :, 1:]

        self.q, self.k, self.v, eta, alpha, theta, delta = (rest(x) for x in tensors)
        self.decays = chunk_decays(spec, self.q, self.k, eta, alpha, theta, delta)
        self.per_chunk = _per_chunk(self.decays)


def boundary_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every=None):
    """The boundary rule for retention lq or kl (module docstring); same layout and returns as
    `recurrent.recurrent_scan`."""
    linear = spec.replace(retention="l2")  # inside a chunk the weights are read as they are (times c)
    tensors = (q, k, v, eta, alpha, theta, delta)
    outputs, snapshots = [], []
    for group in _grouped(spec, *tensors, chunk_size):
        count, length = group.q.shape[2:4]
        after = _AfterLag(spec, group, tensors, count, length) if length > 1 else None
        lag_reads, starts, factors, scales = [], [], [], []
        for n in range(count):
            t = group.start + n * length
            o_lag, A, S, _ = recurrent_scan(*(None if x is None else x[:, :, t:t + 1] for x in tensors), spec, A, S)
            lag_reads.append(o_lag)
            if after is not None:
                V0, scale = _linear_start(spec, A)
                decays = after.per_chunk[n]
                point = V0 if scale is None else tuple(c * V_j for c, V_j in zip(scale, V0))
                inputs, scaled_grads = _update_factors(linear, after.k[:, :, n], after.v[:, :, n], decays,
                                                       *_gradient_point_matmuls(linear, point, decays.b))
                starts.append((*V0, *S))
                factors.append(inputs + scaled_grads)
                scales.append(scale)
                V_last, S = _hand_off(linear, decays, V0, S, inputs, scaled_grads)
                A = _chunk_end(spec, V_last)
            if _is_snapshot(snapshot_every, group, n):
                snapshots.append(tuple(readout(spec, A_j) for A_j in A))
        o = torch.stack(lag_reads, dim=2)  # [B, H, N, 1, Dv]
        if after is not None:
            weights = len(A)
            starts, factors = _stack(starts), _stack(factors)
            o_after = dual_read(linear, after.q, after.decays, starts[:weights], starts[weights:], factors[:weights],
                                factors[weights:], None if scales[0] is None else _stack(scales))
            o = torch.cat([o, o_after], dim=3)
        outputs.append(o.flatten(2, 3))
    return torch.cat(outputs, dim=2), A, S, snapshots
