"""Mini-batch (chunked) scan of a linear memory in Triton: the dual form of DESIGN §4 and §7.

It computes what `miras_lite.chunked.chunked_scan` computes for linear memory, retention none / l2, the
gd optimiser and a column-separable bias (dot, l2, lp, huber coord), with the backward of
`miras_lite.fused_dual` as Triton kernels. Per chunk of C tokens and head, from the chunk-start
accumulator A0 (Dk×Dv), with ℓ the cumulative log-decay inside the chunk (ℓ_t = Σ_{j≤t} log α_j):

    b_t = e^{ℓ_t},   L_ti = e^{ℓ_t − ℓ_i} (i ≤ t, else 0),   w_i = e^{ℓ_last − ℓ_i},   β = e^{ℓ_last},
    K̃ = b ⊙ K (grad_at="retained") or K ("previous"),
    G = φ(K̃ A0 − V),   D = η ⊙ G,
    O = b ⊙ (Q A0) − ((Q Kᵀ) ⊙ L) D,
    A_end = β A0 − Kᵀ (w ⊙ D).

φ acts on each coordinate of the error alone, so every block of value columns is independent: one program
runs the chunks of one (batch, head, value-column block) in order, its slice of the state in registers.
The last chunk may be partial (T % C tokens): its missing rows are loaded as α = 1, η = 0, which makes it
the chunk of that length, as in `chunked_scan`. Inputs may be float32, bfloat16 or float16;
the state, decays and products are float32.

The backward is the reverse recursion of fused_dual, chunk by chunk from dA_next (the gradient of the
chunk-end state), with G recomputed from the saved chunk-start states:

    −dD = ((Q Kᵀ) ⊙ L)ᵀ dO + w ⊙ (K dA_next),   −dG = η ⊙ (−dD),   −dE = φ'(E) ⊙ (−dG),
    dA0 = β dA_next + Qᵀ (b ⊙ dO) − K̃ᵀ (−dE),   dV = −dE (dot: G = −V, dV = −dG),
    P = (dO Dᵀ) ⊙ L,   dQ = b ⊙ (dO A0ᵀ) − P K,   M = Pᵀ Q + (w ⊙ D) dA_nextᵀ,   dK̃ = −(−dE) A0ᵀ,
    dK = −M + c ⊙ dK̃   (c = b retained, 1 previous),   dη = Σ_j dD ⊙ G,   dδ = Σ_j dG ⊙ ∂G/∂δ,
    dℓ_t = q_t·dQ_t + k_t·M_t + [retained] k̃_t·dK̃_t,
    d log α_j = Σ_{t≥j} dℓ_t + ⟨A_end, dA_end⟩   (A_end scales as a whole with e^{ℓ_last}),   dα = d log α / α.

dQ, dK, dη, dα and dδ are sums over value columns: each column block writes its share, summed afterwards.
Dot products take float32 tiles at DOT_PRECISION; block sizes are powers of two ≥ 16 (tl.dot's minimum) with
masks, so C, Dk and Dv are arbitrary.
"""

import torch
import triton
import triton.language as tl

from . import KernelLimit, tuning_configs

BIASES = ("dot", "l2", "lp", "huber")
# float32 inputs: three tf32 products per dot (about float32 accuracy; "ieee" compiles several times slower)
DOT_PRECISION = {torch.float32: "tf32x3", torch.bfloat16: "tf32", torch.float16: "tf32"}
MIN_DOT_BLOCK = 16  # tl.dot needs every block dimension ≥ 16
MAX_STATE_BLOCK = 4096  # elements of the Dk×BV state slice a program holds (more spills registers on an H100)
MAX_CHUNK_TILE = 8192  # BC·BK: beyond it the backward needs more shared memory than an H100 has (227 KiB)


def unsupported(spec):
    """None when this kernel computes the chunked scan for `spec`, else why not."""
    if spec.memory != "linear":
        return "the mini-batch kernel covers linear memory only"
    if spec.retention not in ("none", "l2"):
        return f"the mini-batch kernel covers retention none / l2, not {spec.retention!r}"
    if spec.optimizer != "gd":
        return f"the mini-batch kernel covers optimizer gd, not {spec.optimizer!r}"
    if spec.bias not in BIASES:
        return f"the mini-batch kernel covers bias {', '.join(BIASES)}, not {spec.bias!r}"
    if spec.bias == "huber" and spec.huber_mode != "coord":
        return f"the mini-batch kernel covers huber_mode 'coord' only, not {spec.huber_mode!r}"
    return None


# ------------------------------------------------------------------------------ device helpers


@triton.jit
def _load_rows(ptr, stride_t, t, valid, cols, n_cols):
    """x[t, cols] as float32, zero outside the chunk's valid rows and the n_cols columns."""
    mask = valid[:, None] & (cols[None, :] < n_cols)
    return tl.load(ptr + t[:, None] * stride_t + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, stride_t, t, valid, cols, n_cols, x):
    mask = valid[:, None] & (cols[None, :] < n_cols)
    tl.store(ptr + t[:, None] * stride_t + cols[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _state_tile(ptr, stride_k, rows, cols, Dk, Dv):
    """Pointers and mask of a [BK, BV] block of a row-major Dk×Dv state."""
    return ptr + rows[:, None] * stride_k + cols[None, :], (rows[:, None] < Dk) & (cols[None, :] < Dv)


@triton.jit
def _chunk_decays(alpha_ptr, stride_t, t, valid, rows):
    """(α, b, L, w, β) of one chunk from the cumulative log-decay ℓ; α = 1 on missing rows."""
    alpha = tl.load(alpha_ptr + t * stride_t, mask=valid, other=1.0).to(tl.float32)
    log_alpha = tl.log(alpha)
    log_cumulative = tl.cumsum(log_alpha, 0)
    log_last = tl.sum(log_alpha, 0)
    lower = rows[:, None] >= rows[None, :]
    L = tl.exp(tl.where(lower, log_cumulative[:, None] - log_cumulative[None, :], float("-inf")))
    return alpha, tl.exp(log_cumulative), L, tl.exp(log_last - log_cumulative), tl.exp(log_last)


@triton.jit
def _gradient_keys(K, b, RETAINED: tl.constexpr):
    """K̃ = b ⊙ K (retained: the gradient point is b_t A0) or K (previous), so that E = K̃ A0 − V."""
    if RETAINED:
        K = K * b[:, None]
    return K


@triton.jit
def _bias_gradient(E, V, delta, p, eps, BIAS: tl.constexpr):
    """G = φ(E), `miras_lite.bias.bias_gradient` for the column-separable biases (δ per row)."""
    if BIAS == "dot":
        G = -V
    elif BIAS == "l2":
        G = E
    elif BIAS == "lp":
        G = E * tl.exp(tl.log(E * E + eps) * ((p - 2.0) / 2.0))
    else:
        G = tl.minimum(tl.maximum(E, -delta[:, None]), delta[:, None])
    return G


@triton.jit
def _bias_slope(E, delta, p, eps, BIAS: tl.constexpr):
    """∂G/∂E on each coordinate (l2: 1; lp: (E² + ε)^{(p−4)/2} ((p−1) E² + ε); huber: [|E| ≤ δ])."""
    if BIAS == "lp":
        square = E * E
        slope = tl.exp(tl.log(square + eps) * ((p - 4.0) / 2.0)) * ((p - 1.0) * square + eps)
    elif BIAS == "huber":
        slope = (tl.abs(E) <= delta[:, None]).to(tl.float32)
    else:
        slope = tl.full(E.shape, 1.0, tl.float32)
    return slope


@triton.jit
def _load_delta(delta_ptr, stride_t, t, valid, delta_value, HAS_DELTA: tl.constexpr):
    """Per-token Huber threshold δ_t, or spec.delta everywhere."""
    if HAS_DELTA:
        delta = tl.load(delta_ptr + t * stride_t, mask=valid, other=1.0).to(tl.float32)
    else:
        delta = tl.full(t.shape, delta_value, tl.float32)
    return delta


@triton.jit
def _dot(x, y, PRECISION: tl.constexpr):
    """x @ y of float32 tiles, accumulated in float32, products at PRECISION ("ieee", "tf32x3" or "tf32")."""
    return tl.dot(x, y, input_precision=PRECISION)


@triton.jit
def _head(ptr, i_b, i_h, stride_b, stride_h):
    """`ptr` moved to batch i_b, head i_h."""
    return ptr + i_b * stride_b + i_h * stride_h


# ---------------------------------------------------------------------------------- chunk math


@triton.jit
def _read_and_hand_off(Q, K, V, rate, delta, b, L, w, beta, A0, p, eps,
                       BIAS: tl.constexpr, RETAINED: tl.constexpr, PRECISION: tl.constexpr):
    """O = b ⊙ (Q A0) − ((Q Kᵀ) ⊙ L) D and A_end = β A0 − Kᵀ (w ⊙ D), D = η ⊙ φ(K̃ A0 − V)."""
    E = _dot(_gradient_keys(K, b, RETAINED), A0, PRECISION) - V
    D = rate[:, None] * _bias_gradient(E, V, delta, p, eps, BIAS)
    scores = _dot(Q, tl.trans(K), PRECISION) * L
    O = b[:, None] * _dot(Q, A0, PRECISION) - _dot(scores, D, PRECISION)
    return O, beta * A0 - _dot(tl.trans(K), w[:, None] * D, PRECISION)


@triton.jit
def _update_grads(Q, K, V, dO, rate, delta, b, L, w, beta, A0, dA_next, p, eps, BIAS: tl.constexpr,
                  RETAINED: tl.constexpr, HAS_DELTA: tl.constexpr, PRECISION: tl.constexpr):
    """(D, −dE = dV (dot: −dG), dη, dδ, dA0) of one chunk from dO and dA_next:

    −dD = ((Q Kᵀ) ⊙ L)ᵀ dO + w ⊙ (K dA_next),  −dG = η ⊙ (−dD),  −dE = φ'(E) ⊙ (−dG),
    dA0 = β dA_next + Qᵀ (b ⊙ dO) − K̃ᵀ (−dE).
    """
    K_tilde = _gradient_keys(K, b, RETAINED)
    E = _dot(K_tilde, A0, PRECISION) - V
    G = _bias_gradient(E, V, delta, p, eps, BIAS)
    scores = _dot(Q, tl.trans(K), PRECISION) * L
    minus_dD = _dot(tl.trans(scores), dO, PRECISION) + w[:, None] * _dot(K, dA_next, PRECISION)
    minus_dG = rate[:, None] * minus_dD
    d_delta = tl.zeros(rate.shape, tl.float32)
    if BIAS == "huber" and HAS_DELTA:
        outside = (E > delta[:, None]).to(tl.float32) - (E < -delta[:, None]).to(tl.float32)
        d_delta = -tl.sum(minus_dG * outside, 1)
    dA0 = beta * dA_next + _dot(tl.trans(Q), b[:, None] * dO, PRECISION)
    minus_dE = minus_dG
    if BIAS != "dot":
        minus_dE = _bias_slope(E, delta, p, eps, BIAS) * minus_dG
        dA0 -= _dot(tl.trans(K_tilde), minus_dE, PRECISION)
    return rate[:, None] * G, minus_dE, -tl.sum(minus_dD * G, 1), d_delta, dA0


@triton.jit
def _query_key_grads(Q, K, D, minus_dE, dO, b, L, w, A0, dA_next,
                     BIAS: tl.constexpr, RETAINED: tl.constexpr, PRECISION: tl.constexpr):
    """dQ, dK and dℓ of one chunk (module docstring: P, M, dK̃)."""
    P = _dot(dO, tl.trans(D), PRECISION) * L
    dQ = b[:, None] * _dot(dO, tl.trans(A0), PRECISION) - _dot(P, K, PRECISION)
    M = _dot(tl.trans(P), Q, PRECISION) + _dot(w[:, None] * D, tl.trans(dA_next), PRECISION)
    dK = -M
    d_log = tl.sum(Q * dQ, 1) + tl.sum(K * M, 1)
    if BIAS != "dot":
        dK_tilde = -_dot(minus_dE, tl.trans(A0), PRECISION)
        dK += _gradient_keys(dK_tilde, b, RETAINED)
        if RETAINED:
            d_log += tl.sum(_gradient_keys(K, b, RETAINED) * dK_tilde, 1)
    return dQ, dK, d_log


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
    i_v, i_bh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    rows, keys, cols = tl.arange(0, BC), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    q, k = _head(q, i_b, i_h, q_sb, q_sh), _head(k, i_b, i_h, k_sb, k_sh)
    v, o = _head(v, i_b, i_h, v_sb, v_sh), _head(o, i_b, i_h, o_sb, o_sh)
    eta, alpha = _head(eta, i_b, i_h, eta_sb, eta_sh), _head(alpha, i_b, i_h, alpha_sb, alpha_sh)
    delta = _head(delta, i_b, i_h, delta_sb, delta_sh)
    start_tile, tile_mask = _state_tile(_head(A0, i_b, i_h, A0_sb, A0_sh), A0_sk, keys, cols, Dk, Dv)
    state_tile = _state_tile(_head(states, i_b, i_h, s_sb, s_sh), s_sk, keys, cols, Dk, Dv)[0]
    A = tl.load(start_tile, mask=tile_mask, other=0.0).to(tl.float32)
    count = tl.cdiv(T, C)
    for n in range(count):
        t = n * C + rows
        valid = (rows < C) & (t < T)
        if SAVE_STATES:
            tl.store(state_tile + n * s_sn, A, mask=tile_mask)
        Q, K = _load_rows(q, q_st, t, valid, keys, Dk), _load_rows(k, k_st, t, valid, keys, Dk)
        V = _load_rows(v, v_st, t, valid, cols, Dv)
        rate = tl.load(eta + t * eta_st, mask=valid, other=0.0).to(tl.float32)
        _, b, L, w, beta = _chunk_decays(alpha, alpha_st, t, valid, rows)
        delta_n = _load_delta(delta, delta_st, t, valid, delta_value, HAS_DELTA)
        O, A = _read_and_hand_off(Q, K, V, rate, delta_n, b, L, w, beta, A, p, eps, BIAS, RETAINED, PRECISION)
        _store_rows(o, o_st, t, valid, cols, Dv, O)
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
    i_v, i_bh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    rows, keys, cols = tl.arange(0, BC), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    q, k = _head(q, i_b, i_h, q_sb, q_sh), _head(k, i_b, i_h, k_sb, k_sh)
    v, dO = _head(v, i_b, i_h, v_sb, v_sh), _head(dO, i_b, i_h, dO_sb, dO_sh)
    eta, alpha = _head(eta, i_b, i_h, eta_sb, eta_sh), _head(alpha, i_b, i_h, alpha_sb, alpha_sh)
    delta = _head(delta, i_b, i_h, delta_sb, delta_sh)
    share = (i_v * B * H + i_bh) * T  # first row of this block's share in the partial-sum buffers
    dq, dk, dv = dq + share * Dk, dk + share * Dk, dv + i_bh * T * Dv
    d_eta, d_alpha, d_delta = d_eta + share, d_alpha + share, d_delta + share
    state_tile, tile_mask = _state_tile(_head(states, i_b, i_h, s_sb, s_sh), s_sk, keys, cols, Dk, Dv)
    end_tile = _state_tile(_head(dA_end, i_b, i_h, dA_sb, dA_sh), dA_sk, keys, cols, Dk, Dv)[0]
    count = tl.cdiv(T, C)
    dA = tl.load(end_tile, mask=tile_mask, other=0.0).to(tl.float32)
    A_next = tl.load(state_tile + count * s_sn, mask=tile_mask, other=0.0)
    for i in range(count):
        n = count - 1 - i
        t = n * C + rows
        valid = (rows < C) & (t < T)
        Q, K = _load_rows(q, q_st, t, valid, keys, Dk), _load_rows(k, k_st, t, valid, keys, Dk)
        V, dO_n = _load_rows(v, v_st, t, valid, cols, Dv), _load_rows(dO, dO_st, t, valid, cols, Dv)
        rate = tl.load(eta + t * eta_st, mask=valid, other=0.0).to(tl.float32)
        alpha_n, b, L, w, beta = _chunk_decays(alpha, alpha_st, t, valid, rows)
        delta_n = _load_delta(delta, delta_st, t, valid, delta_value, HAS_DELTA)
        A0 = tl.load(state_tile + n * s_sn, mask=tile_mask, other=0.0)
        D, minus_dE, d_eta_n, d_delta_n, dA_start = _update_grads(
            Q, K, V, dO_n, rate, delta_n, b, L, w, beta, A0, dA, p, eps, BIAS, RETAINED, HAS_DELTA, PRECISION)
        dQ, dK, d_log = _query_key_grads(Q, K, D, minus_dE, dO_n, b, L, w, A0, dA, BIAS, RETAINED, PRECISION)
        d_log_alpha = tl.cumsum(d_log, 0, reverse=True) + tl.sum(tl.sum(A_next * dA, 1), 0)
        _store_rows(dq, Dk, t, valid, keys, Dk, dQ)
        _store_rows(dk, Dk, t, valid, keys, Dk, dK)
        _store_rows(dv, Dv, t, valid, cols, Dv, minus_dE)  # dV = −dE (dot: G = −V, dV = −dG)
        tl.store(d_eta + t, d_eta_n, mask=valid)
        tl.store(d_alpha + t, d_log_alpha / alpha_n, mask=valid)
        if HAS_DELTA:
            tl.store(d_delta + t, d_delta_n, mask=valid)
        A_next, dA = A0, dA_start
    dA0_tile = _state_tile(dA0 + i_bh * Dk * Dv, Dv, keys, cols, Dk, Dv)[0]
    tl.store(dA0_tile, dA, mask=tile_mask)


# ------------------------------------------------------------------------------------- launches


def _blocks(C, Dk, Dv):
    """(BC, BK, BV): powers of two ≥ 16 covering the chunk, all keys and up to MAX_STATE_BLOCK / BK value columns."""
    block = lambda n: max(MIN_DOT_BLOCK, triton.next_power_of_2(n))  # noqa: E731
    BK = block(Dk)
    return block(C), BK, min(block(Dv), max(MIN_DOT_BLOCK, MAX_STATE_BLOCK // BK))


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


class MiniBatchScan(torch.autograd.Function):
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


def run(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size):
    """The kernels' common entry (see `kernels/__init__.py`): o [B, H, T, Dv], A_end and S0 (no momentum).

    θ is unused (gd has no momentum). Raises ValueError for a spec this kernel does not cover, a dtype
    other than float32 / bfloat16 / float16, or a chunk too large for on-chip memory.
    """
    if (reason := unsupported(spec)) is not None:
        raise ValueError(f"spec: {reason}")
    if q.dtype not in DOT_PRECISION:
        raise KernelLimit(f"q: dtype {q.dtype} is not supported by the Triton kernels; allowed: "
                         f"{', '.join(map(str, DOT_PRECISION))}")
    BC, BK, _ = _blocks(chunk_size, q.shape[-1], v.shape[-1])
    if BC * BK > MAX_CHUNK_TILE:
        raise KernelLimit(f"chunk_size: {chunk_size} with Dk={q.shape[-1]} is too large for the mini-batch kernel: "
                         f"C·Dk, each rounded up to a power of two, must be at most {MAX_CHUNK_TILE} "
                         "(e.g. C=64 with Dk=128); use a smaller chunk_size or backend='torch'")
    tensors = (q, k, v, eta, alpha, delta, A0)
    save_states = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
    o, A = MiniBatchScan.apply(*tensors, spec, chunk_size, save_states)
    return o, A, S0
