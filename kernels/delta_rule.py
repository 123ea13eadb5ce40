"""The exact delta rule, chunk-parallel (WY / UT transform), forward and backward in Triton.

It computes the exact recurrence (`chunk_size=None`) of DESIGN §2 for linear memory, bias l2, optimizer gd or
implicit, retention none or l2 and both gradient points, which all share one form:

    W_t = α_t W_{t−1} + k_t u_tᵀ,   u_t = β_t (v_t − c_t k_t W_{t−1}),   o_t = q_t W_t,

with β_t = η_t (gd) or η_t / (1 + η_t ‖k_t‖²) (implicit, Longhorn) and c_t = α_t (grad_at="retained", so
gated_deltanet's W_t = α_t (I − β_t k_t k_tᵀ) W_{t−1} + β_t k_t v_tᵀ) or 1 ("previous").
`miras_lite.delta_rule` is the same algorithm in torch. Per chunk of C tokens with start memory W (Dk×Dv) and
in-chunk log-decays g_t = Σ_{j≤t} log α_j, gc_t = log(c_t) + g_{t−1} (so gc = g retained, g − log α previous)
and g_C = g of the chunk's last token:

    A = strictly-lower(diag(β) K Kᵀ ⊙ e^{gc_i − g_j}),   T = (I + A)⁻¹,
    WK = T diag(β e^{gc}) K,   WV = T diag(β) V                         `_ut_transform_fwd` (chunks in parallel)
    U = WV − WK W,   W ← e^{g_C} W + Kᵀ diag(e^{g_C − g}) U             `_state_pass_fwd`   (chunks in order)
    O = diag(e^g) Q W + ((Q Kᵀ) ⊙ D) U,   D_ij = e^{g_i − g_j} (i ≥ j)   `_output_fwd`       (chunks in parallel)

U holds the "pseudo-values" u_t. The backward mirrors the three stages in reverse: `_output_local_bwd` forms the
in-chunk part of dU, `_state_pass_bwd` carries dW back through the chunks (and completes dU), `_output_bwd` and
`_ut_transform_bwd` then differentiate each chunk's equations in parallel. β and the log-decays are formed in
torch (`rates_and_decays`), so autograd carries their gradients on to η and α.

Inputs may be float32, bfloat16 or float16: tl.dot multiplies operands rounded to the input dtype and accumulates
in float32 (IEEE float32 for float32 inputs; T is inverted in float32, TF32 for half inputs); the memory carried
from chunk to chunk stays float32. Saved for the backward: T (float32), WK, U and the chunk-start memories (input
dtype). The last chunk may be partial and Dk, Dv need not be powers of two: tiles are padded and masked.
"""

import torch
import triton
import triton.language as tl

from . import KernelLimit, interpreter_on, tuning_configs

DOT_PRECISION = {torch.float32: "ieee", torch.bfloat16: "tf32", torch.float16: "tf32"}
TRITON_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
MIN_DOT_BLOCK = 16  # tl.dot needs every block dimension ≥ 16
MAX_KEY_BLOCK = 256  # all Dk key columns of a chunk are held on chip
INTERPRETED = tl.constexpr(interpreter_on())


def unsupported(spec):
    """None when the exact delta-rule kernel computes `spec`'s exact recurrence, else why not."""
    if spec.memory != "linear":
        return "the delta-rule kernel covers linear memory only"
    if spec.bias != "l2":
        return f"the delta-rule kernel covers bias 'l2' only, not {spec.bias!r}"
    if spec.optimizer not in ("gd", "implicit"):
        return f"the delta-rule kernel covers optimizer gd / implicit, not {spec.optimizer!r}"
    if spec.retention not in ("none", "l2"):
        return f"the delta-rule kernel covers retention none / l2, not {spec.retention!r}"
    return None


def chunk_length():
    """Tokens per chunk: 64 on a GPU; 16 (the smallest tl.dot block) under the interpreter, so that small test
    sequences already span several chunks."""
    return MIN_DOT_BLOCK if interpreter_on() else 64


# ------------------------------------------------------------------------------ device helpers


@triton.jit
def _tile(ptr, bh, H, T, D, t0, d0, BT: tl.constexpr, BD: tl.constexpr, TOKEN_MAJOR: tl.constexpr):
    """Pointers and mask of the [BT, BD] tile at token t0, column d0 of head bh (= b·H + h) of a [B, H, T, D] tensor
    stored head-major ([B, H, T, D] contiguous) or token-major ([B, T, H, D] contiguous)."""
    if TOKEN_MAJOR:
        base = ptr + (bh // H) * T * H * D + (bh % H) * D
        row_stride = H * D
    else:
        base = ptr + bh * T * D
        row_stride = D
    t = t0 + tl.arange(0, BT)
    d = d0 + tl.arange(0, BD)
    return base + t[:, None] * row_stride + d[None, :], (t[:, None] < T) & (d[None, :] < D)


@triton.jit
def _load_tile(ptr, bh, H, T, D, t0, d0, BT: tl.constexpr, BD: tl.constexpr, TOKEN_MAJOR: tl.constexpr):
    """The [BT, BD] tile of `_tile`, zero outside the tensor (in the tensor's dtype: products with float32 tiles
    are float32)."""
    pointers, mask = _tile(ptr, bh, H, T, D, t0, d0, BT, BD, TOKEN_MAJOR)
    return tl.load(pointers, mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, bh, H, T, D, t0, d0, x, BT: tl.constexpr, BD: tl.constexpr, TOKEN_MAJOR: tl.constexpr):
    pointers, mask = _tile(ptr, bh, H, T, D, t0, d0, BT, BD, TOKEN_MAJOR)
    tl.store(pointers, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _memory(ptr, Dk, Dv, v0, BK: tl.constexpr, BV: tl.constexpr):
    """Pointers and mask of columns v0.. of the row-major Dk×Dv memory at ptr."""
    rows = tl.arange(0, BK)
    cols = v0 + tl.arange(0, BV)
    return ptr + rows[:, None] * Dv + cols[None, :], (rows[:, None] < Dk) & (cols[None, :] < Dv)


@triton.jit
def _load_memory(ptr, Dk, Dv, v0, BK: tl.constexpr, BV: tl.constexpr):
    pointers, mask = _memory(ptr, Dk, Dv, v0, BK, BV)
    return tl.load(pointers, mask=mask, other=0.0)


@triton.jit
def _store_memory(ptr, Dk, Dv, v0, x, BK: tl.constexpr, BV: tl.constexpr):
    pointers, mask = _memory(ptr, Dk, Dv, v0, BK, BV)
    tl.store(pointers, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mm(a, b, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b on operands rounded to the input dtype, accumulated in float32."""
    a, b = a.to(DTYPE), b.to(DTYPE)
    if INTERPRETED:  # the interpreter multiplies bfloat16 operands as raw integers: same products in float32
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _decay(g_rows, g_cols, keep):
    """e^{g_rows[i] − g_cols[j]} where keep[i, j], else 0 (masked before the exp, so it cannot overflow)."""
    return tl.exp(tl.where(keep, g_rows[:, None] - g_cols[None, :], float("-inf")))


@triton.jit
def _chunk_decays(g_ptr, bh, T, t0, BT: tl.constexpr):
    """(rows, valid, g, g_C) of the chunk at t0: g = 0 past the sequence's end, g_C = g of its last token."""
    rows = tl.arange(0, BT)
    valid = t0 + rows < T
    g = tl.load(g_ptr + bh * T + t0 + rows, mask=valid, other=0.0)
    g_last = tl.load(g_ptr + bh * T + tl.minimum(t0 + BT, T) - 1)
    return rows, valid, g, g_last


@triton.jit
def _decayed_scores(q, k, bh, H, T, Dk, t0, rows, valid, g, BT: tl.constexpr, BK: tl.constexpr,
                    TOKEN_MAJOR: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """The chunk's queries Q and its causal, decayed scores (Q Kᵀ) ⊙ D, D_ij = e^{g_i − g_j} for i ≥ j."""
    queries = _load_tile(q, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    causal = (rows[:, None] >= rows[None, :]) & valid[:, None]
    return queries, _mm(queries, tl.trans(keys), DTYPE, PRECISION) * _decay(g, g, causal)


@triton.jit
def _rate(ptr, bh, T, t0, rows, valid):
    """A per-token float32 rate of the chunk at t0, 0 past the sequence's end."""
    return tl.load(ptr + bh * T + t0 + rows, mask=valid, other=0.0)


@triton.jit
def _unit_lower_inverse(A, BT: tl.constexpr, PRECISION: tl.constexpr):
    """(I + A)⁻¹ for a strictly lower-triangular A [BT, BT].

    With D = I + (the four diagonal blocks of A, BT/4 rows each) and L = I + A − D (the blocks below them),
    I + A = D (I + N) with N = D⁻¹ L strictly block-lower, so N⁴ = 0 and (I + A)⁻¹ = (I − N)(I + N²) D⁻¹.
    D⁻¹ by forward substitution, one row of every block at a time: row i = e_i − Σ_{j<i} A_ij (row j).
    """
    rows = tl.arange(0, BT)
    block = BT // 4
    identity = (rows[:, None] == rows[None, :]).to(tl.float32)
    diagonal = tl.where(rows[:, None] // block == rows[None, :] // block, A, 0.0)
    inverse = identity
    for r in range(1, block):
        current = (rows % block == r)[:, None]
        substituted = identity - tl.dot(tl.where(current, diagonal, 0.0), inverse, input_precision=PRECISION)
        inverse = tl.where(current, substituted, inverse)
    N = tl.dot(inverse, A - diagonal, input_precision=PRECISION)
    N_squared = tl.dot(N, N, input_precision=PRECISION)
    return tl.dot(identity - N, tl.dot(identity + N_squared, inverse, input_precision=PRECISION),
                  input_precision=PRECISION)


# ------------------------------------------------------------------------------------- forward

_CONFIGS = [triton.Config({"BV": bv}, num_warps=warps, num_stages=stages)
            for bv in (32, 64) for warps in (4, 2, 8) for stages in (2, 1, 3)]
_KEY = ["BT", "BK", "Dv", "DTYPE"]


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _ut_transform_fwd(k, v, beta_ptr, g_ptr, gc_ptr, t_matrix, wk, wv, H, T, Dk, Dv,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                      DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk: T = (I + strictly-lower(diag(β) K Kᵀ ⊙ e^{gc_i − g_j}))⁻¹, WK = T diag(β e^{gc}) K,
    WV = T diag(β) V."""
    n, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t0 = n * BT
    rows, valid, g, _ = _chunk_decays(g_ptr, bh, T, t0, BT)
    beta, gc = _rate(beta_ptr, bh, T, t0, rows, valid), _rate(gc_ptr, bh, T, t0, rows, valid)
    keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    strictly_lower = (rows[:, None] > rows[None, :]) & valid[:, None]
    A = beta[:, None] * _mm(keys, tl.trans(keys), DTYPE, PRECISION) * _decay(gc, g, strictly_lower)
    inverse = _unit_lower_inverse(A, BT, PRECISION)
    _store_tile(t_matrix, bh, H, T, BT, t0, 0, inverse, BT, BT, False)
    scaled_keys = keys * (beta * tl.exp(gc))[:, None]
    _store_tile(wk, bh, H, T, Dk, t0, 0, _mm(inverse, scaled_keys, DTYPE, PRECISION), BT, BK, TOKEN_MAJOR)
    for v0 in range(0, Dv, BV):
        values = _load_tile(v, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        wv_n = _mm(inverse, values * beta[:, None], DTYPE, PRECISION)
        _store_tile(wv, bh, H, T, Dv, t0, v0, wv_n, BT, BV, TOKEN_MAJOR)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _state_pass_fwd(k, wk, wv, g_ptr, W0, states, u, W_end, H, T, Dk, Dv, N,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                    DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Chunk after chunk, on value columns v0..: store the start memory W_n, then
    U = WV − WK W_n and W_{n+1} = e^{g_C} W_n + Kᵀ diag(e^{g_C − g}) U."""
    v0, bh = tl.program_id(0) * BV, tl.program_id(1).to(tl.int64)
    memory = _load_memory(W0 + bh * Dk * Dv, Dk, Dv, v0, BK, BV)
    for n in range(N):
        t0 = n * BT
        rows, valid, g, g_last = _chunk_decays(g_ptr, bh, T, t0, BT)
        _store_memory(states + (bh * N + n) * Dk * Dv, Dk, Dv, v0, memory, BK, BV)
        wk_n = _load_tile(wk, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        wv_n = _load_tile(wv, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        u_n = wv_n - _mm(wk_n, memory, DTYPE, PRECISION)
        _store_tile(u, bh, H, T, Dv, t0, v0, u_n, BT, BV, TOKEN_MAJOR)
        keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        write_keys = keys * tl.exp(g_last - g)[:, None]
        memory = memory * tl.exp(g_last) + _mm(tl.trans(write_keys), u_n, DTYPE, PRECISION)
    _store_memory(W_end + bh * Dk * Dv, Dk, Dv, v0, memory, BK, BV)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _output_fwd(q, k, u, g_ptr, states, o, H, T, Dk, Dv, N,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk, value columns v0..: O = diag(e^g) Q W_n + ((Q Kᵀ) ⊙ D) U, D_ij = e^{g_i − g_j} for i ≥ j."""
    v0, n, bh = tl.program_id(0) * BV, tl.program_id(1), tl.program_id(2).to(tl.int64)
    t0 = n * BT
    rows, valid, g, _ = _chunk_decays(g_ptr, bh, T, t0, BT)
    queries, scores = _decayed_scores(q, k, bh, H, T, Dk, t0, rows, valid, g, BT, BK, TOKEN_MAJOR, DTYPE, PRECISION)
    memory = _load_memory(states + (bh * N + n) * Dk * Dv, Dk, Dv, v0, BK, BV)
    u_n = _load_tile(u, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
    out = tl.exp(g)[:, None] * _mm(queries, memory, DTYPE, PRECISION) + _mm(scores, u_n, DTYPE, PRECISION)
    _store_tile(o, bh, H, T, Dv, t0, v0, out, BT, BV, TOKEN_MAJOR)


# ------------------------------------------------------------------------------------ backward


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _output_local_bwd(q, k, g_ptr, do, du_local, H, T, Dk, Dv,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                      DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk, value columns v0..: the part of dU that stays inside the chunk, ((Q Kᵀ) ⊙ D)ᵀ dO."""
    v0, n, bh = tl.program_id(0) * BV, tl.program_id(1), tl.program_id(2).to(tl.int64)
    t0 = n * BT
    rows, valid, g, _ = _chunk_decays(g_ptr, bh, T, t0, BT)
    _, scores = _decayed_scores(q, k, bh, H, T, Dk, t0, rows, valid, g, BT, BK, TOKEN_MAJOR, DTYPE, PRECISION)
    do_n = _load_tile(do, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
    _store_tile(du_local, bh, H, T, Dv, t0, v0, _mm(tl.trans(scores), do_n, DTYPE, PRECISION), BT, BV, TOKEN_MAJOR)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _state_pass_bwd(q, k, wk, g_ptr, do, du_local, dW_end, dstates, du, dW0, H, T, Dk, Dv, N,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                    DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Chunk after chunk in reverse, on value columns v0..: store dW_{n+1} (the end memory's gradient), then
    dU = ((Q Kᵀ) ⊙ D)ᵀ dO + diag(e^{g_C − g}) K dW_{n+1} (the first term from `_output_local_bwd`) and
    dW_n = e^{g_C} dW_{n+1} + Qᵀ diag(e^g) dO − WKᵀ dU."""
    v0, bh = tl.program_id(0) * BV, tl.program_id(1).to(tl.int64)
    dmemory = _load_memory(dW_end + bh * Dk * Dv, Dk, Dv, v0, BK, BV)
    for i in range(N):
        n = N - 1 - i
        t0 = n * BT
        rows, valid, g, g_last = _chunk_decays(g_ptr, bh, T, t0, BT)
        _store_memory(dstates + (bh * N + n) * Dk * Dv, Dk, Dv, v0, dmemory, BK, BV)
        keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        write_keys = keys * tl.exp(g_last - g)[:, None]
        du_n = (_load_tile(du_local, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
                + _mm(write_keys, dmemory, DTYPE, PRECISION))
        _store_tile(du, bh, H, T, Dv, t0, v0, du_n, BT, BV, TOKEN_MAJOR)
        read_queries = _load_tile(q, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR) * tl.exp(g)[:, None]
        do_n = _load_tile(do, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        wk_n = _load_tile(wk, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        dmemory = (dmemory * tl.exp(g_last) + _mm(tl.trans(read_queries), do_n, DTYPE, PRECISION)
                   - _mm(tl.trans(wk_n), du_n, DTYPE, PRECISION))
    _store_memory(dW0 + bh * Dk * Dv, Dk, Dv, v0, dmemory, BK, BV)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _output_bwd(q, k, u, g_ptr, states, dstates, do, du, dq, dk, dg, dwk, H, T, Dk, Dv, N,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk: the gradients of O = diag(e^g) Q W_n + ((Q Kᵀ) ⊙ D) U,
    W_{n+1} = e^{g_C} W_n + Kᵀ diag(e^{g_C − g}) U and U = WV − WK W_n with respect to Q, K, g and WK
    (dWK = −dU W_nᵀ); K and g get the rest in `_ut_transform_bwd`. With dS = (dO Uᵀ) ⊙ D and w = e^{g_C − g}:

    dQ = diag(e^g) dO W_nᵀ + dS K,   dK = dSᵀ Q + diag(w) U dW_{n+1}ᵀ,
    dg_t = e^{g_t} q_t·(dO W_nᵀ)_t + Σ_j (dS ⊙ Q Kᵀ)_tj − Σ_i (dS ⊙ Q Kᵀ)_it − w_t k_t·(U dW_{n+1}ᵀ)_t,
    and the last token's g_C also gets e^{g_C} ⟨W_n, dW_{n+1}⟩ + Σ_t w_t k_t·(U dW_{n+1}ᵀ)_t."""
    n, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t0 = n * BT
    rows, valid, g, g_last = _chunk_decays(g_ptr, bh, T, t0, BT)
    queries = _load_tile(q, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    memory_ptr = states + (bh * N + n) * Dk * Dv
    dnext_ptr = dstates + (bh * N + n) * Dk * Dv
    do_memory = tl.zeros([BT, BK], tl.float32)
    do_u = tl.zeros([BT, BT], tl.float32)
    u_dnext = tl.zeros([BT, BK], tl.float32)
    dwk_n = tl.zeros([BT, BK], tl.float32)
    memory_dnext = tl.zeros([BK], tl.float32)
    for v0 in range(0, Dv, BV):
        memory = _load_memory(memory_ptr, Dk, Dv, v0, BK, BV)
        dnext = _load_memory(dnext_ptr, Dk, Dv, v0, BK, BV)
        do_n = _load_tile(do, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        u_n = _load_tile(u, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        du_n = _load_tile(du, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        do_memory += _mm(do_n, tl.trans(memory), DTYPE, PRECISION)
        do_u += _mm(do_n, tl.trans(u_n), DTYPE, PRECISION)
        u_dnext += _mm(u_n, tl.trans(dnext), DTYPE, PRECISION)
        dwk_n -= _mm(du_n, tl.trans(memory), DTYPE, PRECISION)
        memory_dnext += tl.sum(memory.to(tl.float32) * dnext, 1)
    causal = (rows[:, None] >= rows[None, :]) & valid[:, None]
    dscores = do_u * _decay(g, g, causal)
    write_decay = tl.exp(g_last - g)
    dq_n = tl.exp(g)[:, None] * do_memory + _mm(dscores, keys, DTYPE, PRECISION)
    dk_n = _mm(tl.trans(dscores), queries, DTYPE, PRECISION) + write_decay[:, None] * u_dnext
    pair = dscores * _mm(queries, tl.trans(keys), DTYPE, PRECISION)
    written = write_decay * tl.sum(keys * u_dnext, 1)
    dg_n = tl.exp(g) * tl.sum(queries * do_memory, 1) + tl.sum(pair, 1) - tl.sum(pair, 0) - written
    last = rows == tl.minimum(BT, T - t0) - 1
    dg_n += tl.where(last, tl.sum(written, 0) + tl.exp(g_last) * tl.sum(memory_dnext, 0), 0.0)
    _store_tile(dq, bh, H, T, Dk, t0, 0, dq_n, BT, BK, TOKEN_MAJOR)
    _store_tile(dk, bh, H, T, Dk, t0, 0, dk_n, BT, BK, TOKEN_MAJOR)
    _store_tile(dwk, bh, H, T, Dk, t0, 0, dwk_n, BT, BK, TOKEN_MAJOR)
    tl.store(dg + bh * T + t0 + rows, dg_n, mask=valid)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _ut_transform_bwd(k, v, beta_ptr, g_ptr, gc_ptr, t_matrix, dwk, du, dk_read, dg_read, dk, dv, dbeta, dg, dgc,
                      H, T, Dk, Dv,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                      DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk: the gradients of WK = T diag(β e^{gc}) K, WV = T diag(β) V (dWV = dU) and T = (I + A)⁻¹,
    A_ij = β_i (k_i·k_j) e^{gc_i − g_j} (i > j), with respect to K, V, β, g and gc (dK and dg add to the parts
    `_output_bwd` wrote to dk_read, dg_read):
    dT = dWK (diag(β e^{gc}) K)ᵀ + dU (diag(β) V)ᵀ,  dA = strictly-lower(−Tᵀ dT Tᵀ),
    dK = diag(β e^{gc}) Tᵀ dWK + (dA ⊙ β E + (dA ⊙ β E)ᵀ) K with E_ij = e^{gc_i − g_j},
    dV = diag(β) Tᵀ dU."""
    n, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t0 = n * BT
    rows, valid, g, _ = _chunk_decays(g_ptr, bh, T, t0, BT)
    beta, gc = _rate(beta_ptr, bh, T, t0, rows, valid), _rate(gc_ptr, bh, T, t0, rows, valid)
    keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    inverse = _load_tile(t_matrix, bh, H, T, BT, t0, 0, BT, BT, False)
    dwk_n = _load_tile(dwk, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    key_scale = beta * tl.exp(gc)
    dscaled_keys = _mm(tl.trans(inverse), dwk_n, DTYPE, PRECISION)
    dinverse = _mm(dwk_n, tl.trans(keys * key_scale[:, None]), DTYPE, PRECISION)
    dbeta_n = tl.zeros([BT], tl.float32)
    for v0 in range(0, Dv, BV):
        values = _load_tile(v, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        du_n = _load_tile(du, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        dinverse += _mm(du_n, tl.trans(values * beta[:, None]), DTYPE, PRECISION)
        dscaled_values = _mm(tl.trans(inverse), du_n, DTYPE, PRECISION)
        _store_tile(dv, bh, H, T, Dv, t0, v0, dscaled_values * beta[:, None], BT, BV, TOKEN_MAJOR)
        dbeta_n += tl.sum(dscaled_values * values, 1)
    dkey_scale = tl.sum(dscaled_keys * keys, 1)
    dbeta_n += dkey_scale * tl.exp(gc)
    dgc_n = dkey_scale * key_scale
    strictly_lower = (rows[:, None] > rows[None, :]) & valid[:, None]
    dA = -_mm(tl.trans(inverse), _mm(dinverse, tl.trans(inverse), DTYPE, PRECISION), DTYPE, PRECISION)
    dA = tl.where(strictly_lower, dA, 0.0)
    decay = _decay(gc, g, strictly_lower)
    kk = _mm(keys, tl.trans(keys), DTYPE, PRECISION)
    dbeta_n += tl.sum(dA * kk * decay, 1)
    pair = dA * beta[:, None] * kk * decay
    dgc_n += tl.sum(pair, 1)
    dkk = dA * beta[:, None] * decay
    dk_n = (_load_tile(dk_read, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR) + dscaled_keys * key_scale[:, None]
            + _mm(dkk + tl.trans(dkk), keys, DTYPE, PRECISION))
    _store_tile(dk, bh, H, T, Dk, t0, 0, dk_n, BT, BK, TOKEN_MAJOR)
    tl.store(dbeta + bh * T + t0 + rows, dbeta_n, mask=valid)
    tl.store(dg + bh * T + t0 + rows, _rate(dg_read, bh, T, t0, rows, valid) - tl.sum(pair, 0), mask=valid)
    tl.store(dgc + bh * T + t0 + rows, dgc_n, mask=valid)


# ------------------------------------------------------------------------------------- launches


def _token_major(*xs):
    """True when every [B, H, T, D] tensor is a view of a contiguous [B, T, H, D] one (as memory_scan passes)."""
    return all(x.transpose(1, 2).is_contiguous() for x in xs)


def _in_layout(x, token_major):
    return x.transpose(1, 2).contiguous().transpose(1, 2) if token_major else x.contiguous()


def _empty(like, D, token_major, dtype=None):
    """An uninitialised [B, H, T, D] tensor in the chosen layout."""
    B, H, T = like.shape[:3]
    dtype = dtype or like.dtype
    if token_major:
        return like.new_empty(B, T, H, D, dtype=dtype).transpose(1, 2)
    return like.new_empty(B, H, T, D, dtype=dtype)


def _meta(q, token_major):
    """The compile-time arguments every kernel takes."""
    return dict(BT=chunk_length(), BK=max(MIN_DOT_BLOCK, triton.next_power_of_2(q.shape[-1])), TOKEN_MAJOR=token_major,
                DTYPE=TRITON_DTYPE[q.dtype], PRECISION=DOT_PRECISION[q.dtype])


def forward(q, k, v, beta, g, gc, W0, token_major):
    """o [B, H, T, Dv], the float32 end memory and what the backward needs: (T matrices, WK, U, start memories)."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    meta = _meta(q, token_major)
    N = triton.cdiv(T, meta["BT"])
    t_matrix = q.new_empty(B, H, T, meta["BT"], dtype=torch.float32)
    wk = _empty(k, Dk, token_major)
    wv, u, o = (_empty(v, Dv, token_major) for _ in range(3))
    states = q.new_empty(B, H, N, Dk, Dv)
    W_end = q.new_empty(B, H, Dk, Dv, dtype=torch.float32)
    _ut_transform_fwd[(N, B * H)](k, v, beta, g, gc, t_matrix, wk, wv, H, T, Dk, Dv, **meta)
    _state_pass_fwd[lambda m: (triton.cdiv(Dv, m["BV"]), B * H)](k, wk, wv, g, W0, states, u, W_end, H, T, Dk, Dv, N,
                                                                **meta)
    _output_fwd[lambda m: (triton.cdiv(Dv, m["BV"]), N, B * H)](q, k, u, g, states, o, H, T, Dk, Dv, N, **meta)
    return o, W_end, (t_matrix, wk, u, states)


def backward(q, k, v, beta, g, gc, t_matrix, wk, u, states, do, dW_end, token_major):
    """Gradients (dq, dk, dv in the inputs' dtype; dβ, dg, dgc, dW0 float32)."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    meta = _meta(q, token_major)
    N = triton.cdiv(T, meta["BT"])
    dstates = torch.empty_like(states)
    du_local, du = _empty(v, Dv, token_major), _empty(v, Dv, token_major)
    dW0 = q.new_empty(B, H, Dk, Dv, dtype=torch.float32)
    _output_local_bwd[lambda m: (triton.cdiv(Dv, m["BV"]), N, B * H)](q, k, g, do, du_local, H, T, Dk, Dv, **meta)
    _state_pass_bwd[lambda m: (triton.cdiv(Dv, m["BV"]), B * H)](q, k, wk, g, do, du_local, dW_end, dstates, du, dW0,
                                                                H, T, Dk, Dv, N, **meta)
    dq, dk, dv = _empty(q, Dk, token_major), _empty(k, Dk, token_major), _empty(v, Dv, token_major)
    dk_read, dwk = (_empty(k, Dk, token_major, torch.float32) for _ in range(2))
    dg_read, dg, dbeta, dgc = (torch.empty_like(g) for _ in range(4))
    _output_bwd[(N, B * H)](q, k, u, g, states, dstates, do, du, dq, dk_read, dg_read, dwk, H, T, Dk, Dv, N, **meta)
    _ut_transform_bwd[(N, B * H)](k, v, beta, g, gc, t_matrix, dwk, du, dk_read, dg_read, dk, dv, dbeta, dg, dgc,
                                  H, T, Dk, Dv, **meta)
    return dq, dk, dv, dbeta, dg, dgc, dW0


class ChunkDeltaRule(torch.autograd.Function):
    """(q, k [B, H, T, Dk], v [B, H, T, Dv], β, g, gc [B, H, T] float32, W0 [B, H, Dk, Dv] float32)
    → (o [B, H, T, Dv], W_end float32), with the rates and decays of the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, gc, W0):
        token_major = _token_major(q, k, v)
        q, k, v = (_in_layout(x, token_major) for x in (q, k, v))
        o, W_end, saved = forward(q, k, v, beta, g, gc, W0, token_major)
        ctx.token_major = token_major
        ctx.save_for_backward(q, k, v, beta, g, gc, *saved)
        return o, W_end

    @staticmethod
    def backward(ctx, do, dW_end):
        return backward(*ctx.saved_tensors, _in_layout(do, ctx.token_major), dW_end.contiguous(), ctx.token_major)


def rates_and_decays(spec, k, eta, alpha, C):
    """(β, g, gc) [B, H, T] float32 for chunks of C tokens: β = η (gd) or η / (1 + η ‖k‖²) (implicit),
    g_t = Σ log α_j over the chunk's tokens j ≤ t, gc = g (grad_at="retained") or g − log α ("previous")."""
    eta, log_alpha = eta.float(), alpha.float().log()
    beta = eta / (1.0 + eta * k.float().square().sum(-1)) if spec.optimizer == "implicit" else eta
    T = log_alpha.shape[-1]
    g = torch.nn.functional.pad(log_alpha, (0, -T % C)).unflatten(-1, (-1, C)).cumsum(-1).flatten(-2)[..., :T]
    gc = g if spec.grad_at == "retained" else g - log_alpha
    return beta.contiguous(), g.contiguous(), gc.contiguous()


def run(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size):
    """The kernels' common entry (see `kernels/__init__.py`): o [B, H, T, Dv], A_end and S0 (no momentum).

    θ and δ are unused. Raises ValueError for a spec this kernel does not cover, a chunk_size (it computes the
    exact recurrence only), a dtype other than float32 / bfloat16 / float16 or Dk > 256.
    """
    if (reason := unsupported(spec)) is not None:
        raise ValueError(f"spec: {reason}")
    if chunk_size is not None:
        raise ValueError(f"chunk_size: the delta-rule kernel computes the exact recurrence (None), not {chunk_size!r}")
    if q.dtype not in DOT_PRECISION:
        raise KernelLimit(f"q: dtype {q.dtype} is not supported by the Triton kernels; allowed: "
                         f"{', '.join(map(str, DOT_PRECISION))}")
    if q.shape[-1] > MAX_KEY_BLOCK:
        raise KernelLimit(f"q: Dk={q.shape[-1]} is more key columns than the delta-rule kernel holds on chip "
                         f"(at most {MAX_KEY_BLOCK})")
    beta, g, gc = rates_and_decays(spec, k, eta, alpha, chunk_length())
    o, W_end = ChunkDeltaRule.apply(q, k, v, beta, g, gc, A0.float().contiguous())
    return o, W_end.to(A0.dtype), S0
