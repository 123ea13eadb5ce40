"""The exact delta rule, chunk-parallel (WY / UT transform), forward and backward in Triton.

Torch twin: `miras_lite/ops/delta_rule.py`. It computes the exact recurrence (`chunk_size=None`) of
docs/design.md §2 for linear memory, bias l2, optimizer gd or implicit, retention none or l2 and both gradient
points, which all share one form:

    W_t = α_t W_{t−1} + k_t u_tᵀ,   u_t = η̃_t (v_t − c_t k_t W_{t−1}),   o_t = q_t W_t,

with η̃_t = η_t (gd) or η_t / (1 + η_t ‖k_t‖²) (implicit, Longhorn) and c_t = α_t (grad_at="retained", so
gated_deltanet's W_t = α_t (I − η̃_t k_t k_tᵀ) W_{t−1} + η̃_t k_t v_tᵀ) or 1 ("previous"); U_t = k_t ⊗ u_t is the
step U of docs/design.md §2. Per chunk of C tokens with start memory W (Dk×Dv), the in-chunk cumulative
log-decay ℓ_t = Σ_{j≤t} log α_j, its value at the gradient point ℓᴾ_t = log c_t + ℓ_{t−1} (ℓ_t retained,
ℓ_t − log α_t previous) and ℓ_C = ℓ of the chunk's last token:

    Ψ = strictly-lower(diag(η̃) K Kᵀ ⊙ e^{ℓᴾ_i − ℓ_j}),   T_inv = (I + Ψ)⁻¹,
    K_solved = T_inv diag(η̃ e^{ℓᴾ}) K,   V_solved = T_inv diag(η̃) V        `_ut_transform_fwd` (chunks in parallel)
    U = V_solved − K_solved W,   W ← e^{ℓ_C} W + Kᵀ diag(e^{ℓ_C − ℓ}) U       `_state_pass_fwd`   (chunks in order)
    O = diag(e^ℓ) Q W + ((Q Kᵀ) ⊙ L) U,   L_ij = e^{ℓ_i − ℓ_j} (i ≥ j)       `_output_fwd`       (chunks in parallel)

U holds the rows u_t. The backward mirrors the three stages in reverse: `_output_local_bwd` forms the in-chunk
part of dU, `_state_pass_bwd` carries dW back through the chunks (and completes dU), `_output_bwd` and
`_ut_transform_bwd` then differentiate each chunk's equations in parallel. η̃ and the log-decays are formed in
torch (`rates_and_decays`), so autograd carries their gradients on to η and α.

Inputs may be float32, bfloat16 or float16: `common.dot` multiplies operands rounded to the input dtype at
`common.DOT_PRECISION` and accumulates in float32 (T_inv is formed in float32); the memory carried from chunk to
chunk stays float32. Saved for the backward: T_inv (float32), K_solved, U and the chunk-start memories (input
dtype). The last chunk may be partial and Dk, Dv need not be powers of two: tiles are padded and masked.
"""

import torch
import triton
import triton.language as tl

from . import KernelLimit
from .common import (DOT_PRECISION, MIN_DOT_BLOCK, TRITON_DTYPE, decay_mask, dot, dot_block, dtype_limit,
                     implicit_rate, interpreter_on, load_block, store_block, tuning_configs)

MAX_KEY_BLOCK = 256  # all Dk key columns of a chunk are held on chip


def chunk_length():
    """Tokens per chunk: 64 on a GPU; 16 (the smallest tl.dot block) under the interpreter, so that small test
    sequences already span several chunks."""
    return MIN_DOT_BLOCK if interpreter_on() else 64


# ------------------------------------------------------------------------------ device helpers


@triton.jit
def _head_rows(ptr, bh, H, T, D, TOKEN_MAJOR: tl.constexpr):
    """(first row, row stride) of head bh (= b·H + h) of a [B, H, T, D] tensor stored head-major
    ([B, H, T, D] contiguous) or token-major ([B, T, H, D] contiguous)."""
    if TOKEN_MAJOR:
        first = ptr + (bh // H) * T * H * D + (bh % H) * D
        row_stride = H * D
    else:
        first = ptr + bh * T * D
        row_stride = D
    return first, row_stride


@triton.jit
def _load_tile(ptr, bh, H, T, D, t0, d0, BT: tl.constexpr, BD: tl.constexpr, TOKEN_MAJOR: tl.constexpr):
    """The [BT, BD] tile at token t0, column d0 of head bh, zero outside the tensor (in the tensor's dtype:
    products with float32 tiles are float32)."""
    first, stride = _head_rows(ptr, bh, H, T, D, TOKEN_MAJOR)
    t = t0 + tl.arange(0, BT)
    return load_block(first, stride, t, t < T, d0 + tl.arange(0, BD), D)


@triton.jit
def _store_tile(ptr, bh, H, T, D, t0, d0, x, BT: tl.constexpr, BD: tl.constexpr, TOKEN_MAJOR: tl.constexpr):
    first, stride = _head_rows(ptr, bh, H, T, D, TOKEN_MAJOR)
    t = t0 + tl.arange(0, BT)
    store_block(first, stride, t, t < T, d0 + tl.arange(0, BD), D, x)


@triton.jit
def _load_memory(ptr, Dk, Dv, v0, BK: tl.constexpr, BV: tl.constexpr):
    """Columns v0.. of the row-major Dk×Dv memory at ptr, zero outside it."""
    keys = tl.arange(0, BK)
    return load_block(ptr, Dv, keys, keys < Dk, v0 + tl.arange(0, BV), Dv)


@triton.jit
def _store_memory(ptr, Dk, Dv, v0, x, BK: tl.constexpr, BV: tl.constexpr):
    keys = tl.arange(0, BK)
    store_block(ptr, Dv, keys, keys < Dk, v0 + tl.arange(0, BV), Dv, x)


@triton.jit
def _chunk_ell(ell_ptr, bh, T, t0, BT: tl.constexpr):
    """(rows, valid, ℓ, ℓ_C) of the chunk at t0: ℓ = 0 past the sequence's end, ℓ_C = ℓ of its last token."""
    rows = tl.arange(0, BT)
    valid = t0 + rows < T
    ell = tl.load(ell_ptr + bh * T + t0 + rows, mask=valid, other=0.0)
    ell_last = tl.load(ell_ptr + bh * T + tl.minimum(t0 + BT, T) - 1)
    return rows, valid, ell, ell_last


@triton.jit
def _per_token(ptr, bh, T, t0, rows, valid):
    """A per-token float32 value (η̃, ℓᴾ, ...) of the chunk at t0, 0 past the sequence's end."""
    return tl.load(ptr + bh * T + t0 + rows, mask=valid, other=0.0)


@triton.jit
def _unit_lower_inverse(psi, BT: tl.constexpr, PRECISION: tl.constexpr):
    """(I + Ψ)⁻¹ for a strictly lower-triangular Ψ [BT, BT], in float32.

    With Ψ_d the four diagonal blocks of Ψ (BT/4 rows each), I + Ψ = (I + Ψ_d)(I + Z) with
    Z = (I + Ψ_d)⁻¹ (Ψ − Ψ_d) strictly block-lower, so Z⁴ = 0 and (I + Ψ)⁻¹ = (I − Z)(I + Z²)(I + Ψ_d)⁻¹.
    (I + Ψ_d)⁻¹ by forward substitution, one row of every block at a time: row i = e_i − Σ_{j<i} Ψ_ij (row j).
    """
    rows = tl.arange(0, BT)
    block_rows = BT // 4
    identity = (rows[:, None] == rows[None, :]).to(tl.float32)
    psi_d = tl.where(rows[:, None] // block_rows == rows[None, :] // block_rows, psi, 0.0)
    inverse = identity
    for r in range(1, block_rows):
        current = (rows % block_rows == r)[:, None]
        substituted = identity - dot(tl.where(current, psi_d, 0.0), inverse, tl.float32, PRECISION)
        inverse = tl.where(current, substituted, inverse)
    Z = dot(inverse, psi - psi_d, tl.float32, PRECISION)
    Z_squared = dot(Z, Z, tl.float32, PRECISION)
    return dot(identity - Z, dot(identity + Z_squared, inverse, tl.float32, PRECISION), tl.float32, PRECISION)


@triton.jit
def _chunk_scores(q, k, ell_ptr, H, T, Dk, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  TOKEN_MAJOR: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """The program of a (value block, chunk, head) grid: (v0, n, bh, t0, ℓ, Q) of its chunk and the causal, decayed
    scores (Q Kᵀ) ⊙ L, L_ij = e^{ℓ_i − ℓ_j} for i ≥ j."""
    v0, n, bh = tl.program_id(0) * BV, tl.program_id(1), tl.program_id(2).to(tl.int64)
    t0 = n * BT
    rows, valid, ell, _ = _chunk_ell(ell_ptr, bh, T, t0, BT)
    queries = _load_tile(q, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    causal = (rows[:, None] >= rows[None, :]) & valid[:, None]
    return v0, n, bh, t0, ell, queries, dot(queries, tl.trans(keys), DTYPE, PRECISION) * decay_mask(ell, ell, causal)


@triton.jit
def _ut_chunk(k, eta_eff_ptr, ell_ptr, ell_point_ptr, H, T, Dk, BT: tl.constexpr, BK: tl.constexpr,
              TOKEN_MAJOR: tl.constexpr):
    """The program of a (chunk, head) grid of the UT transform: (bh, t0, rows, valid, η̃, ℓᴾ, K, the strictly
    lower mask, Λ) of its chunk, Λ_ij = e^{ℓᴾ_i − ℓ_j} for i > j (0 elsewhere), so that Ψ = diag(η̃) (K Kᵀ ⊙ Λ)."""
    n, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t0 = n * BT
    rows, valid, ell, _ = _chunk_ell(ell_ptr, bh, T, t0, BT)
    eta_eff = _per_token(eta_eff_ptr, bh, T, t0, rows, valid)
    ell_point = _per_token(ell_point_ptr, bh, T, t0, rows, valid)
    keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    strictly_lower = (rows[:, None] > rows[None, :]) & valid[:, None]
    return bh, t0, rows, valid, eta_eff, ell_point, keys, strictly_lower, decay_mask(ell_point, ell, strictly_lower)


# ------------------------------------------------------------------------------------- forward

_CONFIGS = [triton.Config({"BV": bv}, num_warps=warps, num_stages=stages)
            for bv in (32, 64) for warps in (4, 2, 8) for stages in (2, 1, 3)]
_KEY = ["BT", "BK", "Dv", "DTYPE"]


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _ut_transform_fwd(k, v, eta_eff_ptr, ell_ptr, ell_point_ptr, t_inv, k_solved, v_solved, H, T, Dk, Dv,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                      DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk: T_inv = (I + strictly-lower(diag(η̃) K Kᵀ ⊙ e^{ℓᴾ_i − ℓ_j}))⁻¹,
    K_solved = T_inv diag(η̃ e^{ℓᴾ}) K, V_solved = T_inv diag(η̃) V."""
    bh, t0, _, _, eta_eff, ell_point, keys, _, decay = _ut_chunk(k, eta_eff_ptr, ell_ptr, ell_point_ptr, H, T, Dk,
                                                                 BT, BK, TOKEN_MAJOR)
    psi = eta_eff[:, None] * dot(keys, tl.trans(keys), DTYPE, PRECISION) * decay
    inverse = _unit_lower_inverse(psi, BT, PRECISION)
    _store_tile(t_inv, bh, H, T, BT, t0, 0, inverse, BT, BT, False)
    scaled_keys = keys * (eta_eff * tl.exp(ell_point))[:, None]
    _store_tile(k_solved, bh, H, T, Dk, t0, 0, dot(inverse, scaled_keys, DTYPE, PRECISION), BT, BK, TOKEN_MAJOR)
    for v0 in range(0, Dv, BV):
        values = _load_tile(v, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        v_solved_n = dot(inverse, values * eta_eff[:, None], DTYPE, PRECISION)
        _store_tile(v_solved, bh, H, T, Dv, t0, v0, v_solved_n, BT, BV, TOKEN_MAJOR)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _state_pass_fwd(k, k_solved, v_solved, ell_ptr, W0, states, u, W_end, H, T, Dk, Dv, N,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                    DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Chunk after chunk, on value columns v0..: store the start memory W_n, then
    U = V_solved − K_solved W_n and W_{n+1} = e^{ℓ_C} W_n + Kᵀ diag(e^{ℓ_C − ℓ}) U."""
    v0, bh = tl.program_id(0) * BV, tl.program_id(1).to(tl.int64)
    memory = _load_memory(W0 + bh * Dk * Dv, Dk, Dv, v0, BK, BV)
    for n in range(N):
        t0 = n * BT
        rows, valid, ell, ell_last = _chunk_ell(ell_ptr, bh, T, t0, BT)
        _store_memory(states + (bh * N + n) * Dk * Dv, Dk, Dv, v0, memory, BK, BV)
        k_solved_n = _load_tile(k_solved, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        v_solved_n = _load_tile(v_solved, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        u_n = v_solved_n - dot(k_solved_n, memory, DTYPE, PRECISION)
        _store_tile(u, bh, H, T, Dv, t0, v0, u_n, BT, BV, TOKEN_MAJOR)
        keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        write_keys = keys * tl.exp(ell_last - ell)[:, None]
        memory = memory * tl.exp(ell_last) + dot(tl.trans(write_keys), u_n, DTYPE, PRECISION)
    _store_memory(W_end + bh * Dk * Dv, Dk, Dv, v0, memory, BK, BV)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _output_fwd(q, k, u, ell_ptr, states, o, H, T, Dk, Dv, N,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk, value columns v0..: O = diag(e^ℓ) Q W_n + ((Q Kᵀ) ⊙ L) U, L_ij = e^{ℓ_i − ℓ_j} for i ≥ j."""
    v0, n, bh, t0, ell, queries, scores = _chunk_scores(q, k, ell_ptr, H, T, Dk, BT, BK, BV, TOKEN_MAJOR, DTYPE,
                                                        PRECISION)
    memory = _load_memory(states + (bh * N + n) * Dk * Dv, Dk, Dv, v0, BK, BV)
    u_n = _load_tile(u, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
    out = tl.exp(ell)[:, None] * dot(queries, memory, DTYPE, PRECISION) + dot(scores, u_n, DTYPE, PRECISION)
    _store_tile(o, bh, H, T, Dv, t0, v0, out, BT, BV, TOKEN_MAJOR)


# ------------------------------------------------------------------------------------ backward


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _output_local_bwd(q, k, ell_ptr, do, du_local, H, T, Dk, Dv,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                      DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk, value columns v0..: the part of dU that stays inside the chunk, ((Q Kᵀ) ⊙ L)ᵀ dO."""
    v0, _, bh, t0, _, _, scores = _chunk_scores(q, k, ell_ptr, H, T, Dk, BT, BK, BV, TOKEN_MAJOR, DTYPE, PRECISION)
    do_n = _load_tile(do, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
    _store_tile(du_local, bh, H, T, Dv, t0, v0, dot(tl.trans(scores), do_n, DTYPE, PRECISION), BT, BV, TOKEN_MAJOR)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _state_pass_bwd(q, k, k_solved, ell_ptr, do, du_local, dW_end, dstates, du, dW0, H, T, Dk, Dv, N,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                    DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Chunk after chunk in reverse, on value columns v0..: store dW_{n+1} (the end memory's gradient), then
    dU = ((Q Kᵀ) ⊙ L)ᵀ dO + diag(e^{ℓ_C − ℓ}) K dW_{n+1} (the first term from `_output_local_bwd`) and
    dW_n = e^{ℓ_C} dW_{n+1} + Qᵀ diag(e^ℓ) dO − K_solvedᵀ dU."""
    v0, bh = tl.program_id(0) * BV, tl.program_id(1).to(tl.int64)
    dmemory = _load_memory(dW_end + bh * Dk * Dv, Dk, Dv, v0, BK, BV)
    for i in range(N):
        n = N - 1 - i
        t0 = n * BT
        rows, valid, ell, ell_last = _chunk_ell(ell_ptr, bh, T, t0, BT)
        _store_memory(dstates + (bh * N + n) * Dk * Dv, Dk, Dv, v0, dmemory, BK, BV)
        keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        write_keys = keys * tl.exp(ell_last - ell)[:, None]
        du_n = (_load_tile(du_local, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
                + dot(write_keys, dmemory, DTYPE, PRECISION))
        _store_tile(du, bh, H, T, Dv, t0, v0, du_n, BT, BV, TOKEN_MAJOR)
        read_queries = _load_tile(q, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR) * tl.exp(ell)[:, None]
        do_n = _load_tile(do, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        k_solved_n = _load_tile(k_solved, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
        dmemory = (dmemory * tl.exp(ell_last) + dot(tl.trans(read_queries), do_n, DTYPE, PRECISION)
                   - dot(tl.trans(k_solved_n), du_n, DTYPE, PRECISION))
    _store_memory(dW0 + bh * Dk * Dv, Dk, Dv, v0, dmemory, BK, BV)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _output_bwd(q, k, u, ell_ptr, states, dstates, do, du, dq, dk, dell, dk_solved, H, T, Dk, Dv, N,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk: the gradients of O = diag(e^ℓ) Q W_n + ((Q Kᵀ) ⊙ L) U,
    W_{n+1} = e^{ℓ_C} W_n + Kᵀ diag(e^{ℓ_C − ℓ}) U and U = V_solved − K_solved W_n with respect to Q, K, ℓ and
    K_solved (dK_solved = −dU W_nᵀ); K and ℓ get the rest in `_ut_transform_bwd`. With
    dScores = (dO Uᵀ) ⊙ L and w = e^{ℓ_C − ℓ}:

    dQ = diag(e^ℓ) dO W_nᵀ + dScores K,   dK = dScoresᵀ Q + diag(w) U dW_{n+1}ᵀ,
    dℓ_t = e^{ℓ_t} q_t·(dO W_nᵀ)_t + Σ_j (dScores ⊙ Q Kᵀ)_tj − Σ_i (dScores ⊙ Q Kᵀ)_it − w_t k_t·(U dW_{n+1}ᵀ)_t,
    and the last token's ℓ_C also gets e^{ℓ_C} ⟨W_n, dW_{n+1}⟩ + Σ_t w_t k_t·(U dW_{n+1}ᵀ)_t."""
    n, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t0 = n * BT
    rows, valid, ell, ell_last = _chunk_ell(ell_ptr, bh, T, t0, BT)
    queries = _load_tile(q, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    keys = _load_tile(k, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    memory_ptr = states + (bh * N + n) * Dk * Dv
    dnext_ptr = dstates + (bh * N + n) * Dk * Dv
    do_memory = tl.zeros([BT, BK], tl.float32)
    do_u = tl.zeros([BT, BT], tl.float32)
    u_dnext = tl.zeros([BT, BK], tl.float32)
    dk_solved_n = tl.zeros([BT, BK], tl.float32)
    memory_dnext = tl.zeros([BK], tl.float32)
    for v0 in range(0, Dv, BV):
        memory = _load_memory(memory_ptr, Dk, Dv, v0, BK, BV)
        dnext = _load_memory(dnext_ptr, Dk, Dv, v0, BK, BV)
        do_n = _load_tile(do, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        u_n = _load_tile(u, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        du_n = _load_tile(du, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        do_memory += dot(do_n, tl.trans(memory), DTYPE, PRECISION)
        do_u += dot(do_n, tl.trans(u_n), DTYPE, PRECISION)
        u_dnext += dot(u_n, tl.trans(dnext), DTYPE, PRECISION)
        dk_solved_n -= dot(du_n, tl.trans(memory), DTYPE, PRECISION)
        memory_dnext += tl.sum(memory.to(tl.float32) * dnext, 1)
    causal = (rows[:, None] >= rows[None, :]) & valid[:, None]
    dscores = do_u * decay_mask(ell, ell, causal)
    write_decay = tl.exp(ell_last - ell)
    dq_n = tl.exp(ell)[:, None] * do_memory + dot(dscores, keys, DTYPE, PRECISION)
    dk_n = dot(tl.trans(dscores), queries, DTYPE, PRECISION) + write_decay[:, None] * u_dnext
    pair = dscores * dot(queries, tl.trans(keys), DTYPE, PRECISION)
    written = write_decay * tl.sum(keys * u_dnext, 1)
    dell_n = tl.exp(ell) * tl.sum(queries * do_memory, 1) + tl.sum(pair, 1) - tl.sum(pair, 0) - written
    last = rows == tl.minimum(BT, T - t0) - 1
    dell_n += tl.where(last, tl.sum(written, 0) + tl.exp(ell_last) * tl.sum(memory_dnext, 0), 0.0)
    _store_tile(dq, bh, H, T, Dk, t0, 0, dq_n, BT, BK, TOKEN_MAJOR)
    _store_tile(dk, bh, H, T, Dk, t0, 0, dk_n, BT, BK, TOKEN_MAJOR)
    _store_tile(dk_solved, bh, H, T, Dk, t0, 0, dk_solved_n, BT, BK, TOKEN_MAJOR)
    tl.store(dell + bh * T + t0 + rows, dell_n, mask=valid)


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _ut_transform_bwd(k, v, eta_eff_ptr, ell_ptr, ell_point_ptr, t_inv, dk_solved, du, dk_read, dell_read, dk, dv,
                      deta_eff, dell, dell_point, H, T, Dk, Dv,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TOKEN_MAJOR: tl.constexpr,
                      DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One chunk: the gradients of K_solved = T_inv diag(η̃ e^{ℓᴾ}) K, V_solved = T_inv diag(η̃) V
    (dV_solved = dU) and T_inv = (I + Ψ)⁻¹, Ψ_ij = η̃_i (k_i·k_j) e^{ℓᴾ_i − ℓ_j} (i > j), with respect to K, V,
    η̃, ℓ and ℓᴾ (dK and dℓ add to the parts `_output_bwd` wrote to dk_read, dell_read):
    dT_inv = dK_solved (diag(η̃ e^{ℓᴾ}) K)ᵀ + dU (diag(η̃) V)ᵀ,  dΨ = strictly-lower(−T_invᵀ dT_inv T_invᵀ),
    dK = diag(η̃ e^{ℓᴾ}) T_invᵀ dK_solved + (dΨ ⊙ η̃ Λ + (dΨ ⊙ η̃ Λ)ᵀ) K with Λ_ij = e^{ℓᴾ_i − ℓ_j},
    dV = diag(η̃) T_invᵀ dU."""
    bh, t0, rows, valid, eta_eff, ell_point, keys, strictly_lower, decay = _ut_chunk(
        k, eta_eff_ptr, ell_ptr, ell_point_ptr, H, T, Dk, BT, BK, TOKEN_MAJOR)
    inverse = _load_tile(t_inv, bh, H, T, BT, t0, 0, BT, BT, False)
    dk_solved_n = _load_tile(dk_solved, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR)
    key_scale = eta_eff * tl.exp(ell_point)
    dscaled_keys = dot(tl.trans(inverse), dk_solved_n, DTYPE, PRECISION)
    dinverse = dot(dk_solved_n, tl.trans(keys * key_scale[:, None]), DTYPE, PRECISION)
    deta_eff_n = tl.zeros([BT], tl.float32)
    for v0 in range(0, Dv, BV):
        values = _load_tile(v, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        du_n = _load_tile(du, bh, H, T, Dv, t0, v0, BT, BV, TOKEN_MAJOR)
        dinverse += dot(du_n, tl.trans(values * eta_eff[:, None]), DTYPE, PRECISION)
        dscaled_values = dot(tl.trans(inverse), du_n, DTYPE, PRECISION)
        _store_tile(dv, bh, H, T, Dv, t0, v0, dscaled_values * eta_eff[:, None], BT, BV, TOKEN_MAJOR)
        deta_eff_n += tl.sum(dscaled_values * values, 1)
    dkey_scale = tl.sum(dscaled_keys * keys, 1)
    deta_eff_n += dkey_scale * tl.exp(ell_point)
    dell_point_n = dkey_scale * key_scale
    dpsi = -dot(tl.trans(inverse), dot(dinverse, tl.trans(inverse), DTYPE, PRECISION), DTYPE, PRECISION)
    dpsi = tl.where(strictly_lower, dpsi, 0.0)
    kk = dot(keys, tl.trans(keys), DTYPE, PRECISION)
    deta_eff_n += tl.sum(dpsi * kk * decay, 1)
    pair = dpsi * eta_eff[:, None] * kk * decay
    dell_point_n += tl.sum(pair, 1)
    dkk = dpsi * eta_eff[:, None] * decay
    dk_n = (_load_tile(dk_read, bh, H, T, Dk, t0, 0, BT, BK, TOKEN_MAJOR) + dscaled_keys * key_scale[:, None]
            + dot(dkk + tl.trans(dkk), keys, DTYPE, PRECISION))
    _store_tile(dk, bh, H, T, Dk, t0, 0, dk_n, BT, BK, TOKEN_MAJOR)
    tl.store(deta_eff + bh * T + t0 + rows, deta_eff_n, mask=valid)
    tl.store(dell + bh * T + t0 + rows, _per_token(dell_read, bh, T, t0, rows, valid) - tl.sum(pair, 0), mask=valid)
    tl.store(dell_point + bh * T + t0 + rows, dell_point_n, mask=valid)


# ---------------------------------------------------------------------------------- host functions


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
    return dict(BT=chunk_length(), BK=dot_block(q.shape[-1]), TOKEN_MAJOR=token_major,
                DTYPE=TRITON_DTYPE[q.dtype], PRECISION=DOT_PRECISION[q.dtype])


def rates_and_decays(spec, k, eta, alpha, C):
    """(η̃, ℓ, ℓᴾ) [B, H, T] float32 for chunks of C tokens: η̃ = η (gd) or η / (1 + η ‖k‖²) (implicit),
    ℓ_t = Σ log α_j over the chunk's tokens j ≤ t, ℓᴾ = ℓ (grad_at="retained") or ℓ − log α ("previous")."""
    eta, log_alpha = eta.float(), alpha.float().log()
    eta_eff = implicit_rate.fn(eta, k.float().square().sum(-1)) if spec.optimizer == "implicit" else eta
    T = log_alpha.shape[-1]
    ell = torch.nn.functional.pad(log_alpha, (0, -T % C)).unflatten(-1, (-1, C)).cumsum(-1).flatten(-2)[..., :T]
    ell_point = ell if spec.grad_at == "retained" else ell - log_alpha
    return eta_eff.contiguous(), ell.contiguous(), ell_point.contiguous()


def forward(q, k, v, eta_eff, ell, ell_point, W0, token_major):
    """o [B, H, T, Dv], the float32 end memory and what the backward needs: (T_inv, K_solved, U, start memories)."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    meta = _meta(q, token_major)
    N = triton.cdiv(T, meta["BT"])
    t_inv = q.new_empty(B, H, T, meta["BT"], dtype=torch.float32)
    k_solved = _empty(k, Dk, token_major)
    v_solved, u, o = (_empty(v, Dv, token_major) for _ in range(3))
    states = q.new_empty(B, H, N, Dk, Dv)
    W_end = q.new_empty(B, H, Dk, Dv, dtype=torch.float32)
    _ut_transform_fwd[(N, B * H)](k, v, eta_eff, ell, ell_point, t_inv, k_solved, v_solved, H, T, Dk, Dv, **meta)
    _state_pass_fwd[lambda m: (triton.cdiv(Dv, m["BV"]), B * H)](k, k_solved, v_solved, ell, W0, states, u, W_end,
                                                                H, T, Dk, Dv, N, **meta)
    _output_fwd[lambda m: (triton.cdiv(Dv, m["BV"]), N, B * H)](q, k, u, ell, states, o, H, T, Dk, Dv, N, **meta)
    return o, W_end, (t_inv, k_solved, u, states)


def backward(q, k, v, eta_eff, ell, ell_point, t_inv, k_solved, u, states, do, dW_end, token_major):
    """Gradients (dq, dk, dv in the inputs' dtype; dη̃, dℓ, dℓᴾ, dW0 float32)."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    meta = _meta(q, token_major)
    N = triton.cdiv(T, meta["BT"])
    dstates = torch.empty_like(states)
    du_local, du = _empty(v, Dv, token_major), _empty(v, Dv, token_major)
    dW0 = q.new_empty(B, H, Dk, Dv, dtype=torch.float32)
    _output_local_bwd[lambda m: (triton.cdiv(Dv, m["BV"]), N, B * H)](q, k, ell, do, du_local, H, T, Dk, Dv, **meta)
    _state_pass_bwd[lambda m: (triton.cdiv(Dv, m["BV"]), B * H)](q, k, k_solved, ell, do, du_local, dW_end, dstates,
                                                                du, dW0, H, T, Dk, Dv, N, **meta)
    dq, dk, dv = _empty(q, Dk, token_major), _empty(k, Dk, token_major), _empty(v, Dv, token_major)
    dk_read, dk_solved = (_empty(k, Dk, token_major, torch.float32) for _ in range(2))
    dell_read, dell, deta_eff, dell_point = (torch.empty_like(ell) for _ in range(4))
    _output_bwd[(N, B * H)](q, k, u, ell, states, dstates, do, du, dq, dk_read, dell_read, dk_solved, H, T, Dk, Dv,
                            N, **meta)
    _ut_transform_bwd[(N, B * H)](k, v, eta_eff, ell, ell_point, t_inv, dk_solved, du, dk_read, dell_read, dk, dv,
                                  deta_eff, dell, dell_point, H, T, Dk, Dv, **meta)
    return dq, dk, dv, deta_eff, dell, dell_point, dW0


class DeltaRuleScan(torch.autograd.Function):
    """(q, k [B, H, T, Dk], v [B, H, T, Dv], η̃, ℓ, ℓᴾ [B, H, T] float32, W0 [B, H, Dk, Dv] float32)
    → (o [B, H, T, Dv], W_end float32), with the rates and decays of the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, eta_eff, ell, ell_point, W0):
        token_major = _token_major(q, k, v)
        q, k, v = (_in_layout(x, token_major) for x in (q, k, v))
        o, W_end, saved = forward(q, k, v, eta_eff, ell, ell_point, W0, token_major)
        ctx.token_major = token_major
        ctx.save_for_backward(q, k, v, eta_eff, ell, ell_point, *saved)
        return o, W_end

    @staticmethod
    def backward(ctx, do, dW_end):
        return backward(*ctx.saved_tensors, _in_layout(do, ctx.token_major), dW_end.contiguous(), ctx.token_major)


def limits(q, v, spec, chunk_size):
    """Why this kernel cannot take these inputs, or None: a chunk_size (it computes the exact recurrence only),
    a dtype other than float32 / bfloat16 / float16, or Dk > MAX_KEY_BLOCK."""
    if chunk_size is not None:
        return f"chunk_size: the delta-rule kernel computes the exact recurrence (None), not {chunk_size!r}"
    if (reason := dtype_limit(q)) is not None:
        return reason
    if q.shape[-1] > MAX_KEY_BLOCK:
        return (f"q: Dk={q.shape[-1]} is more key columns than the delta-rule kernel holds on chip "
                f"(at most {MAX_KEY_BLOCK})")
    return None


def delta_rule_scan(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size):
    """The exact recurrence of a delta-rule spec (l2 bias, gd / implicit, retention none / l2; see the module
    docstring) over q, k [B, H, T, Dk], v [B, H, T, Dv], η, α [B, H, T] from A0 [B, H, Dk, Dv].

    Returns o [B, H, T, Dv], A_end (A0's dtype) and S0 (no momentum). θ and δ are not read. Raises `KernelLimit`
    with the reason of `limits`.
    """
    if (reason := limits(q, v, spec, chunk_size)) is not None:
        raise KernelLimit(reason)
    eta_eff, ell, ell_point = rates_and_decays(spec, k, eta, alpha, chunk_length())
    o, W_end = DeltaRuleScan.apply(q, k, v, eta_eff, ell, ell_point, A0.float().contiguous())
    return o, W_end.to(A0.dtype), S0
