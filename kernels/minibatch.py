"""Mini-batch (chunked) scan of a linear memory in Triton: the dual form of docs/design.md §4 and §7.

Torch twins: `miras_lite/ops/minibatch.py` (the dual form) and `miras_lite/ops/minibatch_fused.py` (its
hand-written backward, which the Triton backward follows). It computes the mini-batch rule for linear memory,
retention none / l2, the gd optimiser and a bias that acts on each coordinate alone (dot, l2, lp, huber coord).
Per chunk of C tokens and head, from the chunk-start accumulator A0 (Dk×Dv), with the cumulative log-decay
inside the chunk ℓ_t = Σ_{j≤t} log α_j:

    b_t = e^{ℓ_t},   L_ti = e^{ℓ_t − ℓ_i} (i ≤ t, else 0),   w_i = e^{ℓ_C − ℓ_i} = b_C / b_i,
    K̃ = b ⊙ K (grad_at="retained") or K ("previous"),
    E = K̃ A0 − V,   G = φ(E) (the bias gradient, one row g_t per token),   ηG = η ⊙ G,
    O = b ⊙ (Q A0) − ((Q Kᵀ) ⊙ L) ηG,
    A_end = b_C A0 − Kᵀ (w ⊙ ηG).

φ acts on each coordinate of the error alone, so every block of value columns is independent: one program
runs the chunks of one (batch, head, value-column block) in order, its slice of the state in registers.
The last chunk may be partial (T % C tokens): its missing rows are loaded as α = 1, η = 0, which makes it
the chunk of that length, as in the torch twin. Inputs may be float32, bfloat16 or float16; the state, decays
and products are float32.

The backward is the reverse recursion of `minibatch_fused.py`, chunk by chunk from dA_next (the gradient of the
chunk-end state), with G recomputed from the saved chunk-start states:

    −d(ηG) = ((Q Kᵀ) ⊙ L)ᵀ dO + w ⊙ (K dA_next),   −dG = η ⊙ (−d(ηG)),   −dE = φ'(E) ⊙ (−dG),
    dA0 = b_C dA_next + Qᵀ (b ⊙ dO) − K̃ᵀ (−dE),   dV = −dE (dot: G = −V, dV = −dG),
    R = (dO (ηG)ᵀ) ⊙ L,   dQ = b ⊙ (dO A0ᵀ) − R K,   dK_dual = −(Rᵀ Q + (w ⊙ ηG) dA_nextᵀ),   dK̃ = −(−dE) A0ᵀ,
    dK = dK_dual + c ⊙ dK̃   (c = b retained, 1 previous),   dη = Σ_j d(ηG) ⊙ G,   dδ = Σ_j dG ⊙ ∂G/∂δ,
    dℓ_t = q_t·dQ_t − k_t·dK_dual_t + [retained] k̃_t·dK̃_t,
    d log α_j = Σ_{t≥j} dℓ_t + ⟨A_end, dA_end⟩   (A_end scales as a whole with b_C = e^{ℓ_C}),   dα = d log α / α.

dQ, dK, dη, dα and dδ are sums over value columns: each column block writes its share, summed afterwards.
Dot products take float32 tiles at `common.DOT_PRECISION`; block sizes are powers of two ≥ 16 (tl.dot's
minimum) with masks, so C, Dk and Dv are arbitrary.
"""

import torch
import triton
import triton.language as tl

from . import KernelLimit
from .common import (DOT_PRECISION, MIN_DOT_BLOCK, block, decay_mask, dot, dot_block, dtype_limit,
                     huber_delta_slope, load_block, needs_grad, separable_bias_gradient, separable_bias_slope,
                     store_block, tuning_configs)

MAX_STATE_BLOCK = 4096  # elements of the Dk×BV state slice a program holds (more spills registers on an H100)
MAX_CHUNK_TILE = 8192  # BC·BK: beyond it the backward needs more shared memory than an H100 has (227 KiB)


# ------------------------------------------------------------------------------ device helpers


@triton.jit
def _program(H, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """This (value block, batch·head) program: (i_v, i_bh, i_b, i_h) and the aranges of its chunk rows, key
    columns and value columns."""
    i_v, i_bh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    return i_v, i_bh, i_bh // H, i_bh % H, tl.arange(0, BC), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)


@triton.jit
def _head(ptr, i_b, i_h, stride_b, stride_h):
    """`ptr` moved to batch i_b, head i_h."""
    return ptr + i_b * stride_b + i_h * stride_h


@triton.jit
def _chunk_decays(alpha_ptr, stride_t, t, valid, rows):
    """(α, b, L, w, b_C) of one chunk from the cumulative log-decay ℓ; α = 1 on missing rows."""
    alpha = tl.load(alpha_ptr + t * stride_t, mask=valid, other=1.0).to(tl.float32)
    log_alpha = tl.log(alpha)
    ell = tl.cumsum(log_alpha, 0)
    ell_last = tl.sum(log_alpha, 0)
    L = decay_mask(ell, ell, rows[:, None] >= rows[None, :])
    return alpha, tl.exp(ell), L, tl.exp(ell_last - ell), tl.exp(ell_last)


@triton.jit
def _load_chunk(q, k, v, eta, alpha, delta, q_st, k_st, v_st, eta_st, alpha_st, delta_st, n, T, C, Dk, Dv,
                rows, keys, cols, delta_value, HAS_DELTA: tl.constexpr):
    """Chunk n of this program's head, float32: (t, valid, Q, K, V, η, α, b, L, w, b_C, δ), zero (α = 1, δ = 1)
    on the rows past the chunk or the sequence; δ_t per token, or spec.delta everywhere."""
    t = n * C + rows
    valid = (rows < C) & (t < T)
    Q = load_block(q, q_st, t, valid, keys, Dk).to(tl.float32)
    K = load_block(k, k_st, t, valid, keys, Dk).to(tl.float32)
    V = load_block(v, v_st, t, valid, cols, Dv).to(tl.float32)
    eta_n = tl.load(eta + t * eta_st, mask=valid, other=0.0).to(tl.float32)
    alpha_n, b, L, write_decay, b_last = _chunk_decays(alpha, alpha_st, t, valid, rows)
    if HAS_DELTA:
        delta_n = tl.load(delta + t * delta_st, mask=valid, other=1.0).to(tl.float32)
    else:
        delta_n = tl.full(t.shape, delta_value, tl.float32)
    return t, valid, Q, K, V, eta_n, alpha_n, b, L, write_decay, b_last, delta_n


@triton.jit
def _gradient_keys(K, b, RETAINED: tl.constexpr):
    """K̃ = b ⊙ K (retained: the gradient point is b_t A0) or K (previous), so that E = K̃ A0 − V."""
    if RETAINED:
        K = K * b[:, None]
    return K


# ---------------------------------------------------------------------------------- chunk math


@triton.jit
def _read_and_hand_off(Q, K, V, eta_n, delta, b, L, write_decay, b_last, A0, p, eps,
                       BIAS: tl.constexpr, RETAINED: tl.constexpr, PRECISION: tl.constexpr):
    """O = b ⊙ (Q A0) − ((Q Kᵀ) ⊙ L) ηG and A_end = b_C A0 − Kᵀ (w ⊙ ηG), ηG = η ⊙ φ(K̃ A0 − V)."""
    E = dot(_gradient_keys(K, b, RETAINED), A0, tl.float32, PRECISION) - V
    eta_G = eta_n[:, None] * separable_bias_gradient(E, V, delta[:, None], p, eps, BIAS)
    scores = dot(Q, tl.trans(K), tl.float32, PRECISION) * L
    O = b[:, None] * dot(Q, A0, tl.float32, PRECISION) - dot(scores, eta_G, tl.float32, PRECISION)
    return O, b_last * A0 - dot(tl.trans(K), write_decay[:, None] * eta_G, tl.float32, PRECISION)


@triton.jit
def _update_grads(Q, K, V, dO, eta_n, delta, b, L, write_decay, b_last, A0, dA_next, p, eps, BIAS: tl.constexpr,
                  RETAINED: tl.constexpr, HAS_DELTA: tl.constexpr, PRECISION: tl.constexpr):
    """(ηG, −dE = dV (dot: −dG), dη, dδ, dA0) of one chunk from dO and dA_next:

    −d(ηG) = ((Q Kᵀ) ⊙ L)ᵀ dO + w ⊙ (K dA_next),  −dG = η ⊙ (−d(ηG)),  −dE = φ'(E) ⊙ (−dG),
    dA0 = b_C dA_next + Qᵀ (b ⊙ dO) − K̃ᵀ (−dE).
    """
    K_tilde = _gradient_keys(K, b, RETAINED)
    E = dot(K_tilde, A0, tl.float32, PRECISION) - V
    G = separable_bias_gradient(E, V, delta[:, None], p, eps, BIAS)
    scores = dot(Q, tl.trans(K), tl.float32, PRECISION) * L
    minus_d_eta_G = (dot(tl.trans(scores), dO, tl.float32, PRECISION)
                     + write_decay[:, None] * dot(K, dA_next, tl.float32, PRECISION))
    minus_dG = eta_n[:, None] * minus_d_eta_G
    d_delta = tl.zeros(eta_n.shape, tl.float32)
    if BIAS == "huber" and HAS_DELTA:
        d_delta = -tl.sum(minus_dG * huber_delta_slope(E, delta[:, None]), 1)
    dA0 = b_last * dA_next + dot(tl.trans(Q), b[:, None] * dO, tl.float32, PRECISION)
    minus_dE = minus_dG
    if BIAS != "dot":
        minus_dE = separable_bias_slope(E, delta[:, None], p, eps, BIAS) * minus_dG
        dA0 -= dot(tl.trans(K_tilde), minus_dE, tl.float32, PRECISION)
    return eta_n[:, None] * G, minus_dE, -tl.sum(minus_d_eta_G * G, 1), d_delta, dA0


@triton.jit
def _query_key_grads(Q, K, eta_G, minus_dE, dO, b, L, write_decay, A0, dA_next,
                     BIAS: tl.constexpr, RETAINED: tl.constexpr, PRECISION: tl.constexpr):
    """dQ, dK and dℓ of one chunk (module docstring: R, dK_dual, dK̃)."""
    R = dot(dO, tl.trans(eta_G), tl.float32, PRECISION) * L
    dQ = b[:, None] * dot(dO, tl.trans(A0), tl.float32, PRECISION) - dot(R, K, tl.float32, PRECISION)
    dK_dual = -(dot(tl.trans(R), Q, tl.float32, PRECISION)
                + dot(write_decay[:, None] * eta_G, tl.trans(dA_next), tl.float32, PRECISION))
    dK = dK_dual
    d_ell = tl.sum(Q * dQ, 1) - tl.sum(K * dK_dual, 1)
    if BIAS != "dot":
        dK_tilde = -dot(minus_dE, tl.trans(A0), tl.float32, PRECISION)
        dK += _gradient_keys(dK_tilde, b, RETAINED)
        if RETAINED:
            d_ell += tl.sum(_gradient_keys(K, b, RETAINED) * dK_tilde, 1)
    return dQ, dK, d_ell


# -------------------------------------------------------------------------------------- kernels

_CONFIGS = [triton.Config({}, num_warps=warps, num_stages=stages) for warps in (4, 8) for stages in (1, 2)]


@triton.autotune(configs=tuning_configs(_CONFIGS), key=["BC", "BK", "BV", "BIAS", "RETAINED"])
@triton.jit
def _forward_kernel(
    q, k, v, eta, alpha, delta, A0, o, states,
    q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st, o_sb, o_sh, o_st,
    eta_sb, eta_sh, eta_st, alpha_sb, alpha_sh, alpha_st, delta_sb, delta_sh, delta_st,
    A0_sb, A0_sh, A0_sk, s_sb, s_sh, s_sn, s_sk,
    H, T, Dk, Dv, C, p, eps, delta_value,
    BIAS: tl.constexpr, RETAINED: tl.constexpr, HAS_DELTA: tl.constexpr, SAVE_STATES: tl.constexpr,
    PRECISION: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One (value block, batch·head) program: chunk after chunk, read O and hand A on to the next chunk.

    Writes the chunk-start states (if SAVE_STATES) and then the end state into `states` [B, H, N+1 or 1, Dk, Dv].
    """
    i_v, i_bh, i_b, i_h, rows, keys, cols = _program(H, BC, BK, BV)
    q, k = _head(q, i_b, i_h, q_sb, q_sh), _head(k, i_b, i_h, k_sb, k_sh)
    v, o = _head(v, i_b, i_h, v_sb, v_sh), _head(o, i_b, i_h, o_sb, o_sh)
    eta, alpha = _head(eta, i_b, i_h, eta_sb, eta_sh), _head(alpha, i_b, i_h, alpha_sb, alpha_sh)
    delta = _head(delta, i_b, i_h, delta_sb, delta_sh)
    start_tile, tile_mask = block(_head(A0, i_b, i_h, A0_sb, A0_sh), A0_sk, keys, keys < Dk, cols, Dv)
    state_tile = block(_head(states, i_b, i_h, s_sb, s_sh), s_sk, keys, keys < Dk, cols, Dv)[0]
    A = tl.load(start_tile, mask=tile_mask, other=0.0).to(tl.float32)
    count = tl.cdiv(T, C)
    for n in range(count):
        if SAVE_STATES:
            tl.store(state_tile + n * s_sn, A, mask=tile_mask)
        t, valid, Q, K, V, eta_n, _, b, L, write_decay, b_last, delta_n = _load_chunk(
            q, k, v, eta, alpha, delta, q_st, k_st, v_st, eta_st, alpha_st, delta_st, n, T, C, Dk, Dv,
            rows, keys, cols, delta_value, HAS_DELTA)
        O, A = _read_and_hand_off(Q, K, V, eta_n, delta_n, b, L, write_decay, b_last, A, p, eps, BIAS, RETAINED,
                                  PRECISION)
        store_block(o, o_st, t, valid, cols, Dv, O)
    tl.store(state_tile + (count if SAVE_STATES else 0) * s_sn, A, mask=tile_mask)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=["BC", "BK", "BV", "BIAS", "RETAINED"])
@triton.jit
def _backward_kernel(
    q, k, v, eta, alpha, delta, states, dO, dA_end,
    dq, dk, dv, d_eta, d_alpha, d_delta, dA0,
    q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st, dO_sb, dO_sh, dO_st,
    eta_sb, eta_sh, eta_st, alpha_sb, alpha_sh, alpha_st, delta_sb, delta_sh, delta_st,
    s_sb, s_sh, s_sn, s_sk, dA_sb, dA_sh, dA_sk,
    B, H, T, Dk, Dv, C, p, eps, delta_value,
    BIAS: tl.constexpr, RETAINED: tl.constexpr, HAS_DELTA: tl.constexpr,
    PRECISION: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One (value block, batch·head) program, chunks in reverse order, from the saved chunk-start states.

    dv is [B, H, T, Dv]; dq, dk [NV, B, H, T, Dk] and d_eta, d_alpha, d_delta [NV, B, H, T] get this value
    block's share of sums over value columns; dA0 [B, H, Dk, Dv].
    """
    i_v, i_bh, i_b, i_h, rows, keys, cols = _program(H, BC, BK, BV)
    q, k = _head(q, i_b, i_h, q_sb, q_sh), _head(k, i_b, i_h, k_sb, k_sh)
    v, dO = _head(v, i_b, i_h, v_sb, v_sh), _head(dO, i_b, i_h, dO_sb, dO_sh)
    eta, alpha = _head(eta, i_b, i_h, eta_sb, eta_sh), _head(alpha, i_b, i_h, alpha_sb, alpha_sh)
    delta = _head(delta, i_b, i_h, delta_sb, delta_sh)
    share = (i_v * B * H + i_bh) * T  # first row of this block's share in the partial-sum buffers
    dq, dk, dv = dq + share * Dk, dk + share * Dk, dv + i_bh * T * Dv
    d_eta, d_alpha, d_delta = d_eta + share, d_alpha + share, d_delta + share
    state_tile, tile_mask = block(_head(states, i_b, i_h, s_sb, s_sh), s_sk, keys, keys < Dk, cols, Dv)
    end_tile = block(_head(dA_end, i_b, i_h, dA_sb, dA_sh), dA_sk, keys, keys < Dk, cols, Dv)[0]
    count = tl.cdiv(T, C)
    dA = tl.load(end_tile, mask=tile_mask, other=0.0).to(tl.float32)
    A_next = tl.load(state_tile + count * s_sn, mask=tile_mask, other=0.0)
    for i in range(count):
        n = count - 1 - i
        t, valid, Q, K, V, eta_n, alpha_n, b, L, write_decay, b_last, delta_n = _load_chunk(
            q, k, v, eta, alpha, delta, q_st, k_st, v_st, eta_st, alpha_st, delta_st, n, T, C, Dk, Dv,
            rows, keys, cols, delta_value, HAS_DELTA)
        dO_n = load_block(dO, dO_st, t, valid, cols, Dv).to(tl.float32)
        A0 = tl.load(state_tile + n * s_sn, mask=tile_mask, other=0.0)
        eta_G, minus_dE, d_eta_n, d_delta_n, dA_start = _update_grads(
            Q, K, V, dO_n, eta_n, delta_n, b, L, write_decay, b_last, A0, dA, p, eps, BIAS, RETAINED, HAS_DELTA,
            PRECISION)
        dQ, dK, d_ell = _query_key_grads(Q, K, eta_G, minus_dE, dO_n, b, L, write_decay, A0, dA, BIAS, RETAINED,
                                         PRECISION)
        d_log_alpha = tl.cumsum(d_ell, 0, reverse=True) + tl.sum(tl.sum(A_next * dA, 1), 0)
        store_block(dq, Dk, t, valid, keys, Dk, dQ)
        store_block(dk, Dk, t, valid, keys, Dk, dK)
        store_block(dv, Dv, t, valid, cols, Dv, minus_dE)  # dV = −dE (dot: G = −V, dV = −dG)
        tl.store(d_eta + t, d_eta_n, mask=valid)
        tl.store(d_alpha + t, d_log_alpha / alpha_n, mask=valid)
        if HAS_DELTA:
            tl.store(d_delta + t, d_delta_n, mask=valid)
        A_next, dA = A0, dA_start
    dA0_tile = block(dA0 + i_bh * Dk * Dv, Dv, keys, keys < Dk, cols, Dv)[0]
    tl.store(dA0_tile, dA, mask=tile_mask)


# ---------------------------------------------------------------------------------- host functions


def _blocks(C, Dk, Dv):
    """(BC, BK, BV): powers of two ≥ 16 covering the chunk, all keys and up to MAX_STATE_BLOCK / BK value columns."""
    BK = dot_block(Dk)
    return dot_block(C), BK, min(dot_block(Dv), max(MIN_DOT_BLOCK, MAX_STATE_BLOCK // BK))


def _rows_strides(x):
    """(batch, head, token) strides of a [B, H, T, D] tensor whose rows are contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


def _unit_last(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _common_args(spec, delta):
    return dict(p=float(spec.p), eps=float(spec.eps), delta_value=float(spec.delta), BIAS=spec.bias,
                RETAINED=spec.grad_at == "retained", HAS_DELTA=delta is not None)


def forward(q, k, v, eta, alpha, delta, A0, spec, chunk_size, save_states):
    """o [B, H, T, Dv] (q's dtype) and the float32 states [B, H, N+1 or 1, Dk, Dv]: the chunk starts (if
    `save_states`), then the end state."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    BC, BK, BV = _blocks(chunk_size, Dk, Dv)
    count = triton.cdiv(T, chunk_size)
    o = q.new_empty(B, H, T, Dv)
    states = q.new_empty(B, H, count + 1 if save_states else 1, Dk, Dv, dtype=torch.float32)
    rates = delta if delta is not None else eta
    grid = (triton.cdiv(Dv, BV), B * H)
    _forward_kernel[grid](
        q, k, v, eta, alpha, rates, A0, o, states,
        *_rows_strides(q), *_rows_strides(k), *_rows_strides(v), *_rows_strides(o),
        *eta.stride(), *alpha.stride(), *rates.stride(),
        A0.stride(0), A0.stride(1), A0.stride(2), *states.stride()[:4],
        H, T, Dk, Dv, chunk_size, **_common_args(spec, delta), SAVE_STATES=save_states,
        PRECISION=DOT_PRECISION[q.dtype], BC=BC, BK=BK, BV=BV,
    )
    return o, states


def backward(q, k, v, eta, alpha, delta, states, dO, dA_end, spec, chunk_size):
    """Gradients (dq, dk, dv, dη, dα, dδ or None, dA0) in float32 from the saved states and dO, dA_end."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    BC, BK, BV = _blocks(chunk_size, Dk, Dv)
    blocks_v = triton.cdiv(Dv, BV)
    dq, dk = (q.new_empty(blocks_v, B, H, T, Dk, dtype=torch.float32) for _ in range(2))
    dv = q.new_empty(B, H, T, Dv, dtype=torch.float32)
    d_eta, d_alpha, d_delta = (q.new_empty(blocks_v, B, H, T, dtype=torch.float32) for _ in range(3))
    dA0 = q.new_empty(B, H, Dk, Dv, dtype=torch.float32)
    rates = delta if delta is not None else eta
    _backward_kernel[(blocks_v, B * H)](
        q, k, v, eta, alpha, rates, states, dO, dA_end,
        dq, dk, dv, d_eta, d_alpha, d_delta, dA0,
        *_rows_strides(q), *_rows_strides(k), *_rows_strides(v), *_rows_strides(dO),
        *eta.stride(), *alpha.stride(), *rates.stride(),
        *states.stride()[:4], dA_end.stride(0), dA_end.stride(1), dA_end.stride(2),
        B, H, T, Dk, Dv, chunk_size, **_common_args(spec, delta),
        PRECISION=DOT_PRECISION[q.dtype], BC=BC, BK=BK, BV=BV,
    )
    return dq.sum(0), dk.sum(0), dv, d_eta.sum(0), d_alpha.sum(0), d_delta.sum(0) if delta is not None else None, dA0


class MinibatchScan(torch.autograd.Function):
    """(q, k, v [B, H, T, D], η, α, δ or None [B, H, T], A0 [B, H, Dk, Dv], spec, C, save_states) →
    (o [B, H, T, Dv], A_end); without `save_states` (no gradient needed) only the end state is kept."""

    @staticmethod
    def forward(ctx, q, k, v, eta, alpha, delta, A0, spec, chunk_size, save_states):
        q, k, v, A0 = (_unit_last(x) for x in (q, k, v, A0))
        o, states = forward(q, k, v, eta, alpha, delta, A0, spec, chunk_size, save_states)
        ctx.spec, ctx.chunk_size, ctx.dtypes = spec, chunk_size, (q.dtype, A0.dtype)
        ctx.save_for_backward(q, k, v, eta, alpha, delta, states)
        return o, states[:, :, -1].to(A0.dtype, copy=True)

    @staticmethod
    def backward(ctx, dO, dA_end):
        q, k, v, eta, alpha, delta, states = ctx.saved_tensors
        *grads, dA0 = backward(
            q, k, v, eta, alpha, delta, states, _unit_last(dO), _unit_last(dA_end), ctx.spec, ctx.chunk_size)
        dtype, state_dtype = ctx.dtypes
        return (*(None if x is None else x.to(dtype) for x in grads), dA0.to(state_dtype), None, None, None)


def limits(q, v, spec, chunk_size):
    """Why this kernel cannot take these inputs, or None: no chunk_size (it computes the mini-batch rule), a dtype
    other than float32 / bfloat16 / float16, or a chunk too large for on-chip memory (C·Dk > MAX_CHUNK_TILE, each
    rounded up to a power of two)."""
    if chunk_size is None:
        return "chunk_size: the mini-batch kernel computes chunks of chunk_size tokens, not None (the exact recurrence)"
    if (reason := dtype_limit(q)) is not None:
        return reason
    if dot_block(chunk_size) * dot_block(q.shape[-1]) > MAX_CHUNK_TILE:
        return (f"chunk_size: {chunk_size} with Dk={q.shape[-1]} is too large for the mini-batch kernel: "
                f"C·Dk, each rounded up to a power of two, must be at most {MAX_CHUNK_TILE} "
                "(e.g. C=64 with Dk=128); use a smaller chunk_size or backend='torch'")
    return None


def minibatch_scan(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size):
    """The mini-batch rule (docs/design.md §4) in chunks of chunk_size tokens over q, k [B, H, T, Dk],
    v [B, H, T, Dv], η, α [B, H, T] (δ: per-token Huber threshold or None for spec.delta) from A0 [B, H, Dk, Dv].

    Returns o [B, H, T, Dv], A_end (A0's dtype) and S0 (gd has no momentum). θ is not read. Raises
    `KernelLimit` with the reason of `limits`.
    """
    if (reason := limits(q, v, spec, chunk_size)) is not None:
        raise KernelLimit(reason)
    tensors = (q, k, v, eta, alpha, delta, A0)
    o, A = MinibatchScan.apply(*tensors, spec, chunk_size, needs_grad(*tensors))
    return o, A, S0
