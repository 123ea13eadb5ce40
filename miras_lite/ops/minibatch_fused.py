"""The dual chunked scan as one autograd Function (linear memory; retention none / l2; gd / implicit).

It computes what `minibatch.dual_scan` computes with `dual_update` + `dual_read` (docs/design.md §4, §7) and
writes the backward by hand, so autograd records neither the per-chunk ops nor the broadcast-gradient
reductions. Per chunk of C tokens and head, from the chunk-start accumulator A0 (Dk×Dv), with ℓ the
cumulative log-decay inside the chunk (ℓ_t = Σ_{j≤t} log α_j):

    b_t = e^{ℓ_t},   L_ti = e^{ℓ_t − ℓ_i} (i ≤ t, else 0),   w_i = L_{C−1,i},   β = b_{C−1},
    K̃ = c ⊙ K,  c = b (grad_at="retained") or 1 ("previous"),
    e = K̃ A0 − V,   g = φ(e) (the bias gradient),   D = η ⊙ g,
    A_next = β A0 − Kᵀ (w ⊙ D)                                (the only sequential step)
    O = b ⊙ (Q A0) − S D,   S = (Q Kᵀ) ⊙ L.

Backward: R = Qᵀ (b ⊙ dO) and F = Sᵀ dO are batched over all chunks; the reverse recursion of the
gradient of the chunk-start state (`_state_grads`) is the only loop:

    X = K dA_next,   −dD = F + w ⊙ X,   −de = J_φᵀ (η ⊙ (−dD)),   dA0 = β dA_next + R − K̃ᵀ (−de);

dQ, dK and dℓ are then batched (`_query_key_grads`), dV = −de (dot: −η ⊙ dD), dη = Σ_j dD ⊙ g.
Implicit steps enter only through η (Longhorn's η/(1 + η‖k‖²)) and the decays only through ℓ: both are
formed outside by autograd. Tensors are chunk-major inside, [N, B·H, C, D], so a chunk is one
contiguous block; the Function reads and writes the token-major layout of memory_scan ([B, T, H, D]).
The backward is not itself differentiable (`once_differentiable`): double backward raises.
"""

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from .. import optimizer
from ..bias import bias_gradient, bias_linearisation, linearisation_vjp
from ..retention import log_rate
from .minibatch import chunk_groups


# ---------------------------------------------------------------------------------- layouts


def _chunk_major(x, count, length):
    """[B, H, N·C, *rest] → [N, B·H, C, *rest], contiguous (each chunk one contiguous block)."""
    B, H, _, *rest = x.shape
    return x.reshape(B, H, count, length, *rest).movedim(2, 0).contiguous().view(count, B * H, length, *rest)


def _rates_back(x, B, H):
    """[N, B·H, C] → [B, H, N·C]."""
    count, _, length = x.shape
    return x.reshape(count, B, H, length).permute(1, 2, 0, 3).reshape(B, H, count * length)


def _token_major(x, B, H):
    """[N, B·H, C, D] → [B, N·C, H, D] (the layout of memory_scan's inputs), as a new tensor."""
    count, _, length, D = x.shape
    out = x.new_empty(B, count, length, H, D)
    out.permute(1, 0, 3, 2, 4).copy_(x.view(count, B, H, length, D))
    return out.view(B, count * length, H, D)


# ------------------------------------------------------------------------------------ forward


class _Decays(NamedTuple):
    """Chunk-major decays: b, w [N, BH, C, 1], β [N, BH, 1, 1], L [N, BH, C, C]."""

    b: torch.Tensor
    w: torch.Tensor
    beta: torch.Tensor
    L: torch.Tensor


def _decays(log_cumulative):
    """b, w, β, L from ℓ [N, BH, C] in log space. The upper triangle of exp(ℓ_t − ℓ_i) may overflow to inf
    before `tril_` replaces it by 0; nothing is differentiated through it here, so no inf·0 can arise."""
    L = (log_cumulative.unsqueeze(-1) - log_cumulative.unsqueeze(-2)).exp_().tril_()
    b = torch.exp(log_cumulative).unsqueeze(-1)
    return _Decays(b, L[..., -1, :].unsqueeze(-1), b[..., -1:, :], L)


class _HandOff(NamedTuple):
    """What the forward loop leaves behind, chunk-major: states [N+1, BH, Dk, Dv] (chunk starts, then the
    last chunk's end), e (None for dot), g (the same tensor as e for l2), D = η ⊙ g and w ⊙ D."""

    states: torch.Tensor
    errors: torch.Tensor | None
    grads: torch.Tensor
    D: torch.Tensor
    wD: torch.Tensor


def _hand_off(spec, K, K_tilde, V, eta, delta, decays, A):
    """The sequential part, chunk by chunk: e = K̃ A0 − V, g = φ(e), D = η ⊙ g, A_next = β A0 − Kᵀ (w ⊙ D).

    Everything per token is formed here, while the chunk is in cache, rather than in passes over all chunks.
    """
    count = K.shape[0]
    states = A.new_empty(count + 1, *A.shape)
    states[0] = A
    errors = None if spec.bias == "dot" else torch.empty_like(V)
    grads = -V if errors is None else errors if spec.bias == "l2" else torch.empty_like(V)
    D, wD = torch.empty_like(V), torch.empty_like(V)
    for n in range(count):
        if errors is not None:
            e = torch.baddbmm(V[n], K_tilde[n], states[n], beta=-1, out=errors[n])
            if grads is not errors:
                grads[n] = bias_gradient(spec, e, None, None if delta is None else delta[n])
        torch.mul(decays.w[n], torch.mul(eta[n], grads[n], out=D[n]), out=wD[n])
        torch.mul(states[n], decays.beta[n], out=states[n + 1]).baddbmm_(K[n].transpose(1, 2), wD[n], alpha=-1)
    return _HandOff(states, errors, grads, D, wD)


def _bmm(x, y):
    """Batched matmul over the leading [N, BH] axes."""
    return torch.bmm(x.flatten(0, 1), y.flatten(0, 1)).view(*x.shape[:2], x.shape[2], y.shape[3])


def _row_dot(x, y, dims=1):
    """Σ over the last `dims` axes of x ⊙ y (contiguous x, y), as one batched matmul of rows."""
    size = x.shape[-dims:].numel()
    return torch.bmm(x.reshape(-1, 1, size), y.reshape(-1, size, 1)).view(x.shape[:-dims])


def _baddbmm_(z, x, y, alpha=1, beta=1):
    """z ← beta · z + alpha · x y in place (z contiguous) over the leading [N, BH] axes."""
    z.flatten(0, 1).baddbmm_(x.flatten(0, 1), y.flatten(0, 1), alpha=alpha, beta=beta)
    return z


# ----------------------------------------------------------------------------------- backward
# Signs are folded into the products: F = Sᵀ dO = −dD_read, and the buffers hold −dD and −de.


def _state_grads(spec, K, K_tilde, saved, eta, delta, decays, F, R, dA_last, delta_grad):
    """Reverse recursion over chunks, with every per-token gradient formed while the chunk is in cache:

    X = K dA_next,  −dD = F + w ⊙ X,  −dg = η ⊙ (−dD),  −de = J_φᵀ(−dg),  dA0 = β dA_next + R − K̃ᵀ (−de),
    dη = Σ_j dD ⊙ g,  dδ = Σ_j dg ⊙ ∂g/∂δ.

    Returns dA [N+1, BH, Dk, Dv] (dA[n] the gradient of chunk n's start state, dA[N] = dA_last), −dD
    (written over F), −de (None for dot), dη [N, BH, C] and dδ (None unless `delta_grad`).
    """
    count = K.shape[0]
    dA = R.new_empty(count + 1, *R.shape[1:])
    dA[count] = dA_last
    minus_de = None if spec.bias == "dot" else torch.empty_like(F)
    d_eta = F.new_empty(F.shape[:-1])
    d_delta = F.new_empty(F.shape[:-1]) if delta_grad else None
    for n in reversed(range(count)):
        minus_dD = F[n].addcmul_(decays.w[n], torch.bmm(K[n], dA[n + 1]))
        d_eta[n] = -(minus_dD * saved.grads[n]).sum(-1)
        torch.addcmul(R[n], decays.beta[n], dA[n + 1], out=dA[n])
        if minus_de is None:
            continue
        if spec.bias == "l2":
            torch.mul(eta[n], minus_dD, out=minus_de[n])
        else:
            lin = bias_linearisation(spec, saved.errors[n], None if delta is None else delta[n], delta_grad)
            minus_dg = eta[n] * minus_dD
            minus_de[n] = linearisation_vjp(lin, saved.errors[n], minus_dg)
            if delta_grad:
                d_delta[n] = -(minus_dg * lin.h).sum(-1)
        dA[n].baddbmm_(K_tilde[n].transpose(1, 2), minus_de[n], alpha=-1)
    return dA, F, minus_de, d_eta, d_delta


def _query_key_grads(spec, decays, Q, K, saved, dO, dA, minus_de, log_grad):
    """dQ, dK and (if `log_grad`) dℓ, batched over all chunks; A0 = states[:-1], dA_next = dA[1:].

    PL = (dO Dᵀ) ⊙ L = −dS ⊙ L,  U = −de A0ᵀ,
    dQ = b ⊙ (dO A0ᵀ) − PL K,
    dK = −M − c ⊙ U,  M = PLᵀ Q + (w ⊙ D) dA_nextᵀ.
    Every ℓ-dependent factor (b, L, w, β, c) scales its term by e^{±ℓ}, so the gradient of ℓ is read off
    the products already formed: dℓ_t = Σ q_t ⊙ dQ_t + Σ k_t ⊙ M_t − [retained] b_t Σ k_t ⊙ U_t
    + [t = C−1] ⟨A_next, dA_next⟩ (A_next scales as a whole with e^{ℓ_{C−1}}).
    """
    starts_t, dA_next = saved.states[:-1].transpose(-1, -2), dA[1:]
    PL = _bmm(dO, saved.D.transpose(-1, -2)).mul_(decays.L)
    dQ = _baddbmm_(_bmm(dO, starts_t).mul_(decays.b), PL, K, alpha=-1)
    dK = _baddbmm_(torch.empty_like(K), PL.transpose(-1, -2), Q, alpha=-1, beta=0)
    _baddbmm_(dK, saved.wD, dA_next.transpose(-1, -2), alpha=-1)
    d_log = None
    if log_grad:
        d_log = _row_dot(Q, dQ) - _row_dot(K, dK)
        d_log[..., -1] += _row_dot(saved.states[1:], dA_next, dims=2)
    if minus_de is None:
        return dQ, dK, d_log
    if spec.grad_at == "previous":
        return dQ, _baddbmm_(dK, minus_de, starts_t, alpha=-1), d_log
    U = _bmm(minus_de, starts_t)
    if log_grad:
        d_log -= decays.b.squeeze(-1) * _row_dot(K, U)
    return dQ, dK.addcmul_(decays.b, U, value=-1), d_log


class FusedDualScan(torch.autograd.Function):
    """(q, k, v [B, H, T, D], η, ℓ, δ or None [B, H, T], A0 [B, H, Dk, Dv], spec, C) → (o [B, T, H, Dv], A_last).

    T must be a multiple of C; η is the effective step size and ℓ the cumulative log-decay per chunk.
    """

    @staticmethod
    def forward(ctx, q, k, v, eta, log_cumulative, delta, A0, spec, chunk_size):
        B, H, T, _ = q.shape
        count = T // chunk_size
        Q, K, V = (_chunk_major(x, count, chunk_size) for x in (q, k, v))
        eta_c = _chunk_major(eta, count, chunk_size).unsqueeze(-1)
        delta_c = None if delta is None else _chunk_major(delta, count, chunk_size).unsqueeze(-1)
        decays = _decays(_chunk_major(log_cumulative, count, chunk_size))
        K_tilde = K * decays.b if spec.grad_at == "retained" else K
        saved = _hand_off(spec, K, K_tilde, V, eta_c, delta_c, decays, A0.reshape(B * H, *A0.shape[2:]))
        S = _bmm(Q, K.transpose(-1, -2)).mul_(decays.L)
        O = _baddbmm_(_bmm(Q, saved.states[:-1]).mul_(decays.b), S, saved.D, alpha=-1)
        ctx.spec, ctx.shape = spec, (B, H)
        ctx.save_for_backward(Q, K, K_tilde, eta_c, delta_c, S, *decays, *saved)
        return _token_major(O, B, H), saved.states[-1].view(A0.shape).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dO, dA_last):
        spec, (B, H) = ctx.spec, ctx.shape
        Q, K, K_tilde, eta, delta, S, *rest = ctx.saved_tensors
        decays, saved = _Decays(*rest[:4]), _HandOff(*rest[4:])
        count, _, C, _ = Q.shape
        dO = dO.reshape(B, count, C, H, -1).permute(1, 0, 3, 2, 4).contiguous().view(count, B * H, C, -1)
        R = _bmm(Q.transpose(-1, -2), decays.b * dO)
        F = _bmm(S.transpose(-1, -2), dO)
        dA, minus_dD, minus_de, d_eta, d_delta = _state_grads(
            spec, K, K_tilde, saved, eta, delta, decays, F, R, dA_last.reshape(B * H, *dA_last.shape[2:]),
            ctx.needs_input_grad[5])
        dQ, dK, d_log = _query_key_grads(spec, decays, Q, K, saved, dO, dA, minus_de, ctx.needs_input_grad[4])
        dV = eta * minus_dD if minus_de is None else minus_de  # dot: g = −v, dV = −η ⊙ dD; else dV = −de
        grads_qkv = (_token_major(x, B, H).transpose(1, 2) for x in (dQ, dK, dV))
        rates = (None if x is None else _rates_back(x, B, H) for x in (d_eta, d_log, d_delta))
        return (*grads_qkv, *rates, dA[0].view(dA_last.shape), None, None)


def fused_dual_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size, snapshot_every=None):
    """`minibatch.dual_scan` through `FusedDualScan`, one call per group of equal-length chunks; same layout and
    returns as `recurrent.recurrent_scan` (θ and snapshots are not used: gd / implicit, no snapshots).

    Autograd forms what the Function takes: the effective η (implicit: η/(1 + η‖k‖²)) and the
    cumulative log-decay ℓ_t = Σ_{j≤t} log α_j inside each chunk.
    """
    B, H = q.shape[:2]
    (A,) = A
    outputs = []
    for start, count, length in chunk_groups(q.shape[2], chunk_size):
        stop = start + count * length
        q_g, k_g, v_g, eta_g, alpha_g = (x[:, :, start:stop] for x in (q, k, v, eta, alpha))
        eta_g = optimizer.effective_rate(spec, eta_g, k_g)
        log_cumulative = log_rate(alpha_g).reshape(B, H, count, length).cumsum(-1).reshape(B, H, -1)
        delta_g = None if delta is None else delta[:, :, start:stop]
        o, A = FusedDualScan.apply(q_g, k_g, v_g, eta_g, log_cumulative, delta_g, A, spec, length)
        outputs.append(o.transpose(1, 2))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2), (A,), S, []
