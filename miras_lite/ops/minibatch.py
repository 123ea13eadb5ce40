"""Mini-batch (chunked) memory updates, docs/design.md §4 and §7; the Triton twin is `kernels/minibatch.py`.

Inside a chunk of C tokens starting at t0 with accumulator A0 (momentum S0), every token's gradient is
taken at the chunk's starting point,

    P_t = N(A0)              grad_at="previous"
    P_t = N(b_t A0)          grad_at="retained",   b_t = Π_{j=t0..t} α_j,

while the accumulator follows the linear recursion token by token, so reads stay causal:

    Ã_t = b_t A0 + γ_t S0 − Σ_{i≤t} M_{ti} η_i G_i,        o_t = M(q_t; N(E(Ã_t))),

with the step mix M and γ of `optimizer.chunk_mix`. The next chunk starts from A = E(Ã_last), S = S_last.
Hence two scans:

- `dual_scan`, retention none / l2 (N = E = identity): the *dual form*. Every weight is only used through
  u ↦ u·W_t = b_t u·A0 + γ_t u·S0 − ((u Xᵀ) ⊙ M) (η ⊙ D), with G_i = X_i ⊗ D_i: a few masked matrix
  products, for linear and MLP memory alike. Only the chunk-to-chunk state hand-off (`dual_update`, or
  the exact `delta_rule_update`) is sequential; the reads are batched over a few chunks once their starting
  states are known (`ChunkReads`). `minibatch_fused.py` is the same scan for linear memories with a
  hand-written backward.
- `materialised_scan`, the non-linear retentions, read through N at every token:
  lq: N(A) = A / max(‖A‖_q, ε)^{q−2} only rescales A, so every read is the dual form divided by
  s_t = max(‖Ã_t‖_q, ε)^{q−2}, and P_t = N(b_t A0) = b_t A0 / max(b_t ‖A0‖_q, ε)^{q−2}; Ã_t is
  materialised ([B, H, C, Din, Dout] per chunk) only for its q-norm.
  kl: the same mini-batch semantics, read through N per token, so Ã_t is materialised.
  elastic: the threshold E = S_γ is applied to the chunk's final accumulator (once per chunk instead
  of once per token) and to every read.

With C = 1 every rule above is the exact recurrence.
"""

from typing import NamedTuple

import torch

from .. import memory, optimizer
from ..bias import bias_gradient
from ..retention import lq_scale, readout, write_map


class ChunkDecays(NamedTuple):
    """Per-chunk coefficients, all with a leading [B, H] and one chunk axis removed or kept."""

    b: torch.Tensor  # [..., C]       Π α inside the chunk up to t
    mix: torch.Tensor  # [..., C, C]  M
    scores: torch.Tensor  # [..., C, C]  (Q Kᵀ) ⊙ M: how much each read sees of each key's update
    gamma: torch.Tensor | None  # [..., C]  weight of S0 in Ã_t (momentum only)
    theta_mix_last: torch.Tensor | None  # [..., C]  L_θ[C−1, i]
    theta_prod_last: torch.Tensor | None  # [...]   Θ_{C−1}
    eta: torch.Tensor  # [..., C]   effective step size per token
    delta: torch.Tensor | None  # [..., C, 1]  per-token Huber threshold


def chunk_decays(spec, q, k, eta, alpha, theta, delta):
    """`ChunkDecays` for chunks laid out as q, k [..., C, Dk] and rates [..., C]; q=None leaves the scores to the
    caller (None)."""
    mix = optimizer.chunk_mix(spec, alpha, theta)
    scores = None if q is None else (q @ k.transpose(-1, -2)) * mix.mix
    return ChunkDecays(mix.b, mix.mix, scores, mix.gamma, mix.theta_mix_last, mix.theta_prod_last,
                       optimizer.effective_rate(spec, eta, k), None if delta is None else delta.unsqueeze(-1))


def _per_chunk(decays):
    """The `ChunkDecays` of each chunk, split once along the chunk axis."""
    count = decays.b.shape[2]
    columns = [[None] * count if x is None else x.unbind(2) for x in decays]
    return [ChunkDecays(*fields) for fields in zip(*columns)]


def _gradient_point_matmuls(spec, A0, b, scales=None):
    """Matmuls at P_t = c A0 (previous) or c b_t A0 (retained), for identity read-outs; c = scales[j] ([..., 1],
    one per weight matrix) or 1. Neither c A0 nor b_t A0 is formed."""
    if spec.grad_at == "previous":
        return memory.weight_matmuls(A0, scales), memory.transposed_matmul(A0, scales)
    rows = b.unsqueeze(-1)
    row_scales = (rows,) * len(A0) if scales is None else tuple(c.unsqueeze(-1) * rows for c in scales)
    forward_matmuls = tuple((lambda u, W=W, r=r: r * (u @ W)) for W, r in zip(A0, row_scales))
    return forward_matmuls, (lambda u: row_scales[-1] * (u @ A0[-1].transpose(-1, -2)))


def _gradient_point_weights(spec, A0, b):
    """Explicit P_t: shared [B, H, Din, Dout] (previous) or per token [B, H, C, Din, Dout] (retained)."""
    if spec.grad_at == "previous":
        return tuple(readout(spec, A_j) for A_j in A0)
    return tuple(readout(spec, b[..., None, None] * A_j.unsqueeze(2)) for A_j in A0)


def _update_factors(spec, k, v, decays, forward_matmuls, transposed):
    """(inputs X_j, scaled output grads η ⊙ D_j) with η_i G_i = X_i ⊗ (η_i D_i), for one chunk."""
    prediction, cache = memory.forward(spec.memory, k, forward_matmuls)
    e = prediction - v
    if spec.optimizer == "implicit":
        inputs, grads = (k,), (e,)
    else:
        inputs, grads = memory.backward(spec.memory, cache, bias_gradient(spec, e, v, decays.delta), transposed)
    return inputs, tuple(decays.eta.unsqueeze(-1) * d for d in grads)


def _momentum_end(decays, S0, inputs, scaled_grads):
    """S_last = Θ_{C−1} S0 − Σ_i L_θ[C−1, i] η_i G_i."""
    return tuple(
        decays.theta_prod_last[..., None, None] * S_j - x.transpose(-1, -2) @ (decays.theta_mix_last.unsqueeze(-1) * d)
        for S_j, x, d in zip(S0, inputs, scaled_grads)
    )


def _hand_off(spec, decays, A0, S0, inputs, scaled_grads):
    """The chunk-end state of the linear recursion: A_last = b_last A0 + γ_last S0 − Σ_i M_{last,i} η_i G_i."""
    momentum = spec.optimizer == "momentum"
    mix_last = decays.mix[..., -1, :].unsqueeze(-1)
    A = []
    for j, (x, d) in enumerate(zip(inputs, scaled_grads)):
        A_j = decays.b[..., -1, None, None] * A0[j] - x.transpose(-1, -2) @ (mix_last * d)
        if momentum:
            A_j = A_j + decays.gamma[..., -1, None, None] * S0[j]
        A.append(A_j)
    return tuple(A), _momentum_end(decays, S0, inputs, scaled_grads) if momentum else S0


def dual_update(spec, k, v, decays, A0, S0):
    """The state hand-off of one chunk (retention none / l2): update factors and the chunk-end state.

    Returns (X, η ⊙ D, A_last, S_last, None) with η_i G_i = X_i ⊗ η_i D_i; reads are formed later, for a few
    chunks at once, by `dual_read` (the None: they need no scale).
    """
    inputs, scaled_grads = _update_factors(spec, k, v, decays, *_gradient_point_matmuls(spec, A0, decays.b))
    return inputs, scaled_grads, *_hand_off(spec, decays, A0, S0, inputs, scaled_grads), None


def _batched(x):
    """A [..., m, n] tensor as [batch, m, n] (a view where the layout allows)."""
    return x.reshape(-1, *x.shape[-2:])


def dual_read(spec, q, decays, A0, S0, inputs, scaled_grads, scales=None):
    """Outputs of chunks from their start states A0, S0 ([..., Din, Dout]; [B, H, N, ...] for N chunks at once).

    Each weight is only used through u ↦ u·W_t = b_t u·A0 + γ_t u·S0 − ((u Xᵀ) ⊙ M) (η ⊙ D), times
    ``scales[j]`` ([..., C, 1]; lq: W_t = Ã_t / s_t) when given. The terms are summed in place by fused
    gemms on [batch, C, ·] views: no temporary the size of a read per term.
    """
    b = _batched(decays.b.unsqueeze(-1))
    gamma = None if decays.gamma is None else _batched(decays.gamma.unsqueeze(-1))
    mix = _batched(decays.mix)

    def start_read(u, row_scale, W):
        """row_scale ⊙ (u W), scaling whichever side is narrower."""
        return (row_scale * u) @ W if u.shape[-1] < W.shape[-1] else row_scale * (u @ W)

    def read_matmul(j):
        def matmul(u):
            lead, u = u.shape[:-1], _batched(u)
            if j == 0 and decays.scores is not None:  # q's scores against k, formed with the decays
                scores = _batched(decays.scores)
            else:
                scores = (u @ _batched(inputs[j]).transpose(-1, -2)) * mix
            out = start_read(u, b, _batched(A0[j])).baddbmm_(scores, _batched(scaled_grads[j]), alpha=-1)
            if gamma is not None:
                out = out.baddbmm_(gamma * u, _batched(S0[j]))
            out = out.view(*lead, out.shape[-1])
            return out if scales is None else scales[j] * out

        return matmul

    return memory.forward(spec.memory, q, tuple(read_matmul(j) for j in range(len(A0))))[0]


def _running_accumulators(spec, decays, A0, S0, inputs, scaled_grads):
    """Ã_t = b_t A0 + γ_t S0 − Σ_{i≤t} M_{ti} η_i G_i for every t of the chunk, [B, H, C, Din, Dout] per weight."""
    running = []
    for j, (x, d) in enumerate(zip(inputs, scaled_grads)):
        # Σ_i M_ti x_i ⊗ d_i = Xᵀ (M_t ⊙ D) for every t: one batched matmul, no per-token outer products
        updates = x.transpose(-1, -2).unsqueeze(2) @ (decays.mix.unsqueeze(-1) * d.unsqueeze(2))
        A_t = decays.b[..., None, None] * A0[j].unsqueeze(2) - updates
        if spec.optimizer == "momentum":
            A_t = A_t + decays.gamma[..., None, None] * S0[j].unsqueeze(2)
        running.append(A_t)
    return running


def _lq_gradient_point_matmuls(spec, A0, b):
    """Matmuls at P_t = N(A0) (previous) or N(b_t A0) = b_t A0 / max(b_t ‖A0‖_q, ε)^{q−2} (retained):
    scalar multiples c_t A0, never materialised per token."""
    if spec.grad_at == "previous":
        return _gradient_point_matmuls(spec, A0, b, tuple(lq_scale(spec, A_j) for A_j in A0))
    scales = tuple(b.unsqueeze(-1) * lq_scale(spec, b[..., None, None] * A_j.unsqueeze(2)) for A_j in A0)
    forward_matmuls = tuple((lambda u, W=W, c=c: c * (u @ W)) for W, c in zip(A0, scales))
    return forward_matmuls, (lambda u: scales[-1] * (u @ A0[-1].transpose(-1, -2)))


def lq_chunk(spec, q, k, v, decays, A0, S0):
    """One chunk with lq retention: dual-form reads divided by s_t = max(‖Ã_t‖_q, ε)^{q−2}."""
    inputs, scaled_grads = _update_factors(spec, k, v, decays, *_lq_gradient_point_matmuls(spec, A0, decays.b))
    running = _running_accumulators(spec, decays, A0, S0, inputs, scaled_grads)
    scales = tuple(lq_scale(spec, A_t) for A_t in running)
    o = dual_read(spec, q, decays, A0, S0, inputs, scaled_grads, scales)
    A = tuple(A_t[:, :, -1] for A_t in running)
    S = _momentum_end(decays, S0, inputs, scaled_grads) if spec.optimizer == "momentum" else S0
    return o, A, S


def materialised_chunk(spec, q, k, v, decays, A0, S0):
    """One chunk with the running accumulators Ã_t formed explicitly (retention kl / elastic; lq: `lq_chunk`)."""
    if spec.retention == "lq":
        return lq_chunk(spec, q, k, v, decays, A0, S0)
    P = _gradient_point_weights(spec, A0, decays.b)
    inputs, scaled_grads = _update_factors(spec, k, v, decays, memory.weight_matmuls(P), memory.transposed_matmul(P))
    running = _running_accumulators(spec, decays, A0, S0, inputs, scaled_grads)
    W = tuple(readout(spec, write_map(spec, A_t)) for A_t in running)
    o = memory.forward(spec.memory, q, memory.weight_matmuls(W))[0]
    A = tuple(write_map(spec, A_t[:, :, -1]) for A_t in running)
    S = _momentum_end(decays, S0, inputs, scaled_grads) if spec.optimizer == "momentum" else S0
    return o, A, S


def chunk_groups(T, C):
    """(start, number of chunks, chunk length): the full chunks, then the partial last one."""
    full = T // C
    groups = [(0, full, C)] if full else []
    if T % C:
        groups.append((full * C, 1, T % C))
    return groups


class ChunkGroup(NamedTuple):
    """One group of equal-length chunks, laid out [B, H, N, C, ...], with its decays."""

    start: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    decays: ChunkDecays


def _grouped(spec, q, k, v, eta, alpha, theta, delta, chunk_size):
    """The `ChunkGroup`s of a sequence: its full chunks, then the partial last one."""
    B, H = q.shape[:2]
    for start, count, length in chunk_groups(q.shape[2], chunk_size):
        def chunks(x):
            return None if x is None else x[:, :, start:start + count * length].reshape(B, H, count, length,
                                                                                      *x.shape[3:])

        qs, ks = chunks(q), chunks(k)
        decays = chunk_decays(spec, qs, ks, *(chunks(x) for x in (eta, alpha, theta, delta)))
        yield ChunkGroup(start, qs, ks, chunks(v), decays)


def _is_snapshot(snapshot_every, start, length, n):
    """Whether chunk n of a group of `length`-token chunks from `start` ends where a snapshot is due."""
    return snapshot_every and (start + (n + 1) * length) % snapshot_every == 0


READ_BATCH = 64


class ChunkReads:
    """The reads of one group's chunks (q and decays [B, H, N, ...]), `dual_read` over a few chunks at a time.

    Chunks are added in order with their start states and update factors; every `per_read` chunks are read
    together, so that each batched product covers B·H·per_read ≥ READ_BATCH matrices: few chunks per read keep
    the operands in cache when B·H is large, several amortise the cost of each op when it is small.
    """

    def __init__(self, spec, q, decays):
        B, H = q.shape[:2]
        self.spec, self.per_read = spec, -(-READ_BATCH // (B * H))
        # split once along the chunk axis (slicing per read would make each backward step write a full-size gradient)
        self.q = q.split(self.per_read, dim=2)
        fields = [[None] * len(self.q) if x is None else x.split(self.per_read, dim=2) for x in decays]
        self.decays = [ChunkDecays(*parts) for parts in zip(*fields)]
        self.pending, self.outputs = [], []

    def add(self, A0, S0, inputs, scaled_grads, scales=None):
        """Queue one chunk: its start states, update factors and read scales (tuples over the weights)."""
        self.pending.append(((*A0, *S0), inputs + scaled_grads, scales))
        read = len(self.outputs)
        if len(self.pending) == self.q[read].shape[2]:
            starts, factors, read_scales = (_chunk_axis(parts) for parts in zip(*self.pending))
            weights = len(A0)
            self.outputs.append(dual_read(self.spec, self.q[read], self.decays[read], starts[:weights],
                                          starts[weights:], factors[:weights], factors[weights:], read_scales))
            self.pending = []

    def result(self):
        """The outputs of every chunk, [B, H, N, C, Dv]."""
        return torch.cat(self.outputs, dim=2)


def _chunk_axis(per_chunk):
    """A list (over chunks) of tuples of tensors as a tuple of tensors with a chunk axis at dim 2 (None: None)."""
    if per_chunk[0] is None:
        return None
    if len(per_chunk) == 1:
        return tuple(x.unsqueeze(2) for x in per_chunk[0])
    return tuple(torch.stack(parts, dim=2) for parts in zip(*per_chunk))


def dual_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every=None, update=dual_update):
    """The dual form (retention none / l2), chunk by chunk; same layout and returns as `recurrent_scan`.

    Only the state hand-off `update` runs chunk after chunk; the reads follow a few chunks at a time.
    """
    outputs, snapshots = [], []
    for group in _grouped(spec, q, k, v, eta, alpha, theta, delta, chunk_size):
        reads = ChunkReads(spec, group.q, group.decays)
        # Split once: indexing x[:, :, n] per chunk would make every backward step write a full-size gradient.
        for n, (k_n, v_n, decays_n) in enumerate(zip(group.k.unbind(2), group.v.unbind(2), _per_chunk(group.decays))):
            inputs, scaled_grads, A_next, S_next, scale = update(spec, k_n, v_n, decays_n, A, S)
            reads.add(A, S, inputs, scaled_grads, scale)
            A, S = A_next, S_next
            if _is_snapshot(snapshot_every, group.start, group.q.shape[3], n):
                snapshots.append(tuple(readout(spec, A_j) for A_j in A))
        outputs.append(reads.result().flatten(2, 3))
    return torch.cat(outputs, dim=2), A, S, snapshots


def materialised_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every=None):
    """The mini-batch rule for the non-linear retentions (lq, kl, elastic), chunk by chunk; same layout and
    returns as `recurrent_scan`."""
    outputs, snapshots = [], []
    for group in _grouped(spec, q, k, v, eta, alpha, theta, delta, chunk_size):
        reads = []
        chunks = zip(group.q.unbind(2), group.k.unbind(2), group.v.unbind(2), _per_chunk(group.decays))
        for n, (q_n, k_n, v_n, decays_n) in enumerate(chunks):
            o, A, S = materialised_chunk(spec, q_n, k_n, v_n, decays_n, A, S)
            reads.append(o)
            if _is_snapshot(snapshot_every, group.start, group.q.shape[3], n):
                snapshots.append(tuple(readout(spec, A_j) for A_j in A))
        outputs.append(torch.cat(reads, dim=2))
    return torch.cat(outputs, dim=2), A, S, snapshots
