"""Mini-batch (chunked) memory updates, DESIGN §4 and §7.

Inside a chunk of C tokens starting at t0 with accumulator A0 (momentum S0), every token's gradient is
taken at the chunk's starting point,

    P_t = N(A0)              grad_at="previous"
    P_t = N(b_t A0)          grad_at="retained",   b_t = Π_{j=t0..t} α_j,

while the accumulator follows the linear recursion token by token, so reads stay causal:

    Ã_t = b_t A0 + γ_t S0 − Σ_{i≤t} M_{ti} η_i G_i,        o_t = M(q_t; N(E(Ã_t))),

with the decay mix M = L_α (gd) or L_α L_θ (momentum), L_x[t, i] = Π_{m=i+1..t} x_m, and
γ_t = Σ_j L_α[t, j] Θ_j, Θ_j = Π_{m≤j} θ_m (zero without momentum). The next chunk starts from
A = E(Ã_last), S = S_last. Hence:

- retention none / l2 (N = E = identity): the *dual form*. Every weight is only used through
  u ↦ u·W_t = b_t u·A0 + γ_t u·S0 − ((u Xᵀ) ⊙ M) (η ⊙ D), with G_i = X_i ⊗ D_i: a few masked matrix
  products, for linear and MLP memory alike. Only the chunk-to-chunk state hand-off is sequential;
  the reads of all chunks are batched once their starting states are known.
- lq: N(A) = A / max(‖A‖_q, ε)^{q−2} only rescales A, so every read is the dual form divided by
  s_t = max(‖Ã_t‖_q, ε)^{q−2}, and P_t = N(b_t A0) = b_t A0 / max(b_t ‖A0‖_q, ε)^{q−2}. Ã_t is
  materialised ([B, H, C, Din, Dout] per chunk) only for its q-norm.
- kl: the same mini-batch semantics, read through N per token, so Ã_t is materialised.
- elastic: the threshold E = S_γ is applied to the chunk's final accumulator (once per chunk instead
  of once per token) and to every read.

With C = 1 every rule above is the exact recurrence. Decay products are formed in log space
(never divisions), so θ may be 0 without NaNs.
"""

from typing import NamedTuple

import torch

from . import memories
from .bias import bias_gradient
from .fused_dual import FusedDualScan, fused_applies
from .recurrent import implicit_step, transposed_matmul, weight_matmuls
from .retention import lq_scale, readout, write_map


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


def _log_rate(a):
    # α > 0 is guaranteed; θ may be 0, which the clamp turns into a decay of e^-87 or less (no gradient to θ there).
    return a.clamp_min(torch.finfo(a.dtype).tiny).log()


def decay_matrix(a):
    """L[..., t, i] = Π_{m=i+1..t} a_m for t ≥ i and 0 for t < i, from a [..., C].

    exp(c_t − c_i) with c the cumulative sum of log a; the upper triangle is masked before the exp, so
    it cannot overflow. Differences of cumulative sums lose ~|c|·ε relative accuracy, which only
    matters where the product is e^{−|c|} ≈ 0 anyway.
    """
    C = a.shape[-1]
    log_cumulative = _log_rate(a).cumsum(-1)
    lower = torch.ones(C, C, dtype=torch.bool, device=a.device).tril()
    return torch.exp(torch.where(lower, log_cumulative.unsqueeze(-1) - log_cumulative.unsqueeze(-2), -torch.inf))


def chunk_decays(spec, q, k, eta, alpha, theta, delta):
    """`ChunkDecays` for chunks laid out as q, k [..., C, Dk] and rates [..., C]."""
    delta = None if delta is None else delta.unsqueeze(-1)
    if spec.optimizer == "implicit":
        eta = eta / (1.0 + eta * k.square().sum(-1))
    L = decay_matrix(alpha)
    b = torch.exp(_log_rate(alpha).cumsum(-1))
    if spec.optimizer != "momentum":
        return ChunkDecays(b, L, (q @ k.transpose(-1, -2)) * L, None, None, None, eta, delta)
    L_theta = decay_matrix(theta)
    theta_prod = torch.exp(_log_rate(theta).cumsum(-1))
    gamma = (L @ theta_prod.unsqueeze(-1)).squeeze(-1)
    mix = L @ L_theta
    scores = (q @ k.transpose(-1, -2)) * mix
    return ChunkDecays(b, mix, scores, gamma, L_theta[..., -1, :], theta_prod[..., -1], eta, delta)


def _per_chunk(decays):
    """The `ChunkDecays` of each chunk, split once along the chunk axis."""
    count = decays.b.shape[2]
    columns = [[None] * count if x is None else x.unbind(2) for x in decays]
    return [ChunkDecays(*fields) for fields in zip(*columns)]


def _gradient_point_matmuls(spec, A0, b):
    """Matmuls at P_t = b_t A0 (retained) or A0 (previous), for identity read-outs."""
    if spec.grad_at == "previous":
        return weight_matmuls(A0), transposed_matmul(A0)
    scale = b.unsqueeze(-1)
    forward_matmuls = tuple((lambda u, W=W: scale * (u @ W)) for W in A0)
    return forward_matmuls, (lambda u: scale * (u @ A0[-1].transpose(-1, -2)))


def _gradient_point_weights(spec, A0, b):
    """Explicit P_t: shared [B, H, Din, Dout] (previous) or per token [B, H, C, Din, Dout] (retained)."""
    if spec.grad_at == "previous":
        return tuple(readout(spec, A_j) for A_j in A0)
    return tuple(readout(spec, b[..., None, None] * A_j.unsqueeze(2)) for A_j in A0)


def _update_factors(spec, k, v, decays, forward_matmuls, transposed):
    """(inputs X_j, scaled output grads η ⊙ D_j) with η_i G_i = X_i ⊗ (η_i D_i), for one chunk."""
    prediction, cache = memories.forward(spec.memory, k, forward_matmuls)
    e = prediction - v
    if spec.optimizer == "implicit":
        inputs, grads = (k,), (e,)
    else:
        inputs, grads = memories.backward(spec.memory, cache, bias_gradient(spec, e, v, decays.delta), transposed)
    return inputs, tuple(decays.eta.unsqueeze(-1) * d for d in grads)


def _momentum_end(decays, S0, inputs, scaled_grads):
    """S_last = Θ_{C−1} S0 − Σ_i L_θ[C−1, i] η_i G_i."""
    return tuple(
        decays.theta_prod_last[..., None, None] * S_j - x.transpose(-1, -2) @ (decays.theta_mix_last.unsqueeze(-1) * d)
        for S_j, x, d in zip(S0, inputs, scaled_grads)
    )


def dual_update(spec, k, v, decays, A0, S0):
    """The state hand-off of one chunk (retention none / l2): update factors and the chunk-end state.

    Returns (X, η ⊙ D, A_last, S_last) with η_i G_i = X_i ⊗ η_i D_i; reads are formed later, for all
    chunks at once, by `dual_read`.
    """
    momentum = spec.optimizer == "momentum"
    inputs, scaled_grads = _update_factors(spec, k, v, decays, *_gradient_point_matmuls(spec, A0, decays.b))
    mix_last = decays.mix[..., -1, :].unsqueeze(-1)
    A = []
    for j, (x, d) in enumerate(zip(inputs, scaled_grads)):
        A_j = decays.b[..., -1, None, None] * A0[j] - x.transpose(-1, -2) @ (mix_last * d)
        if momentum:
            A_j = A_j + decays.gamma[..., -1, None, None] * S0[j]
        A.append(A_j)
    S = _momentum_end(decays, S0, inputs, scaled_grads) if momentum else S0
    return inputs, scaled_grads, tuple(A), S


def dual_read(spec, q, decays, A0, S0, inputs, scaled_grads, scales=None):
    """Outputs of every chunk at once from the chunk-start states A0, S0 ([B, H, N, Din, Dout]).

    Each weight is only used through u ↦ u·W_t = b_t u·A0 + γ_t u·S0 − ((u Xᵀ) ⊙ M) (η ⊙ D), times
    ``scales[j]`` ([..., C, 1]; lq: W_t = Ã_t / s_t) when given.
    """
    b = decays.b.unsqueeze(-1)

    def read_matmul(j):
        def matmul(u):
            # the first weight always reads q, whose scores against k were formed with the decays
            scores = decays.scores if j == 0 else (u @ inputs[j].transpose(-1, -2)) * decays.mix
            out = b * (u @ A0[j]) - scores @ scaled_grads[j]
            if spec.optimizer == "momentum":
                out = out + decays.gamma.unsqueeze(-1) * (u @ S0[j])
            return out if scales is None else scales[j] * out

        return matmul

    return memories.forward(spec.memory, q, tuple(read_matmul(j) for j in range(len(A0))))[0]


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
        scales = tuple(lq_scale(spec, A_j).unsqueeze(-1) for A_j in A0)  # [B, H, 1, 1]
    else:
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
    inputs, scaled_grads = _update_factors(spec, k, v, decays, weight_matmuls(P), transposed_matmul(P))
    running = _running_accumulators(spec, decays, A0, S0, inputs, scaled_grads)
    W = tuple(readout(spec, write_map(spec, A_t)) for A_t in running)
    o = memories.forward(spec.memory, q, weight_matmuls(W))[0]
    A = tuple(write_map(spec, A_t[:, :, -1]) for A_t in running)
    S = _momentum_end(decays, S0, inputs, scaled_grads) if spec.optimizer == "momentum" else S0
    return o, A, S


def _chunk_groups(T, C):
    """(start, number of chunks, chunk length): the full chunks, then the partial last one."""
    full = T // C
    groups = [(0, full, C)] if full else []
    if T % C:
        groups.append((full * C, 1, T % C))
    return groups


def _stack(per_chunk):
    """A list (over chunks) of tuples of tensors as a tuple of tensors with a chunk axis at dim 2."""
    return tuple(torch.stack(parts, dim=2) for parts in zip(*per_chunk))


def fused_chunked_scan(q, k, v, eta, alpha, delta, spec, A, S, chunk_size):
    """`chunked_scan` through `fused_dual.FusedDualScan`, one call per group of equal-length chunks.

    Autograd forms what the Function takes: the effective η (implicit: η/(1 + η‖k‖²)) and the
    cumulative log-decay ℓ_t = Σ_{j≤t} log α_j inside each chunk.
    """
    B, H = q.shape[:2]
    (A,) = A
    outputs = []
    for start, count, length in _chunk_groups(q.shape[2], chunk_size):
        stop = start + count * length
        q_g, k_g, v_g, eta_g, alpha_g = (x[:, :, start:stop] for x in (q, k, v, eta, alpha))
        if spec.optimizer == "implicit":
            eta_g = eta_g / (1.0 + eta_g * k_g.square().sum(-1))
        log_cumulative = _log_rate(alpha_g).reshape(B, H, count, length).cumsum(-1).reshape(B, H, -1)
        delta_g = None if delta is None else delta[:, :, start:stop]
        o, A = FusedDualScan.apply(q_g, k_g, v_g, eta_g, log_cumulative, delta_g, A, spec, length)
        outputs.append(o.transpose(1, 2))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2), (A,), S, []


def _any_requires_grad(*tensors):
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


def chunked_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every=None, update=None,
                 fused=True):
    """Scan chunk by chunk; same layout and returns as `recurrent.exact_scan`.

    Retention none / l2: only the state hand-off `update` (default `dual_update`) runs chunk after chunk;
    the reads of all chunks are then one batched `dual_read`. Other retentions: `materialised_chunk`.
    When gradients are needed, linear memories with gd / implicit steps and the dual update go through
    `fused_chunked_scan` instead (same values, hand-written backward); `fused=False` (tests) keeps the
    generic path, the reference for the fused one.
    """
    B, H = q.shape[:2]
    update = update or dual_update
    if (fused and update is dual_update and fused_applies(spec, snapshot_every)
            and _any_requires_grad(q, k, v, eta, alpha, delta, *A)):
        return fused_chunked_scan(q, k, v, eta, alpha, delta, spec, A, S, chunk_size)
    materialised = spec.retention not in ("none", "l2")
    outputs, snapshots = [], []
    for start, count, length in _chunk_groups(q.shape[2], chunk_size):
        stop = start + count * length

        def chunks(x):
            return x[:, :, start:stop].reshape(B, H, count, length, *x.shape[3:])

        qs, ks, vs = chunks(q), chunks(k), chunks(v)
        optional = [None if x is None else chunks(x) for x in (theta, delta)]
        decays = chunk_decays(spec, qs, ks, chunks(eta), chunks(alpha), *optional)
        starts, factors, reads = [], [], []
        # Split once: indexing x[:, :, n] per chunk would make every backward step write a full-size gradient.
        for n, (q_n, k_n, v_n, decays_n) in enumerate(zip(qs.unbind(2), ks.unbind(2), vs.unbind(2), _per_chunk(decays))):
            if materialised:
                o, A, S = materialised_chunk(spec, q_n, k_n, v_n, decays_n, A, S)
                reads.append(o)
            else:
                starts.append((*A, *S))
                inputs, scaled_grads, A, S = update(spec, k_n, v_n, decays_n, A, S)
                factors.append(inputs + scaled_grads)
            if snapshot_every and (start + (n + 1) * length) % snapshot_every == 0:
                snapshots.append(tuple(readout(spec, A_j) for A_j in A))
        if materialised:
            outputs.append(torch.cat(reads, dim=2))
            continue
        weights = len(A)
        starts, factors = _stack(starts), _stack(factors)
        o = dual_read(spec, qs, decays, starts[:weights], starts[weights:], factors[:weights], factors[weights:])
        outputs.append(o.flatten(2, 3))
    return torch.cat(outputs, dim=2), A, S, snapshots
