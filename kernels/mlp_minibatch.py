"""Mini-batch chunk of the MLP memory in Triton: the dual form of docs/design.md §3-4 for M(x) = x + LN(GELU(x W) U).

Torch twins: `miras_lite/ops/minibatch.py` (`dual_scan`, the mini-batch rule for retention none / l2) and
`miras_lite/ops/boundary.py` (`boundary_scan`, the paper's boundary rule for lq and kl), whose chunks this kernel
computes; `mlp_minibatch_scan` and `mlp_boundary_scan` below walk the chunks as those do.

One kernel call is one chunk of C tokens for every (batch, head). With the chunk-start weights W [D, F], U [F, D]
(F = E·D), momentum S_W, S_U, and per-token rates η (step), b (retention from the chunk start), γ (weight of the
start momentum), r_W, r_U (gradient-point scales), s_W, s_U (read scales), δ (Huber threshold), and the step mix
M [C, C] (`optimizer.chunk_mix`):

    inner gradient at the gradient point P_t = (r_W,t W, r_U,t U):
        H = r_W ⊙ (K W),   A = GELU(H),   Z = r_U ⊙ (A U),   E = K + LN(Z) − V,   G = φ(E),
        D_Z = LN'(Z)ᵀ G,   D_H = r_U ⊙ (D_Z Uᵀ) ⊙ GELU'(H)        (∂ℓ/∂W = Kᵀ D_H, ∂ℓ/∂U = Aᵀ D_Z per token)
    update inputs X_W = K, X_U = A (kl: the natural inputs x̂ = ρ ⊙ (x − (ρ·x)/c_s) of `ops/boundary.py`),
    decayed dual read, layer by layer:
        H_q = s_W ⊙ (b ⊙ (Q W) + γ ⊙ (Q S_W) − ((Q X_Wᵀ) ⊙ M)(η ⊙ D_H)),   A_q = GELU(H_q),
        Z_q = s_U ⊙ (b ⊙ (A_q U) + γ ⊙ (A_q S_U) − ((A_q X_Uᵀ) ⊙ M)(η ⊙ D_Z)),   O = Q + LN(Z_q),
    chunk-end weights (m = M's last row, μ = L_θ's last row, Θ = Π θ):
        W' = b_C W + γ_C S_W − X_Wᵀ (m ⊙ η ⊙ D_H),   S_W' = Θ S_W − X_Wᵀ (μ ⊙ η ⊙ D_H),   and the same for U.

The weights are never held whole: each kernel loops over blocks of BF hidden units (W[:, f], U[f, :], BD·BF ≤
`WEIGHT_BLOCK`), and what crosses blocks is summed in the loop (A U and A·ρ_U for LN(Z) and the natural inputs;
A_q X_Uᵀ, A_q U, A_q S_U for the read's second layer). The forward takes two passes over the blocks (the inner
forward's sums, then the read and the end weights). The backward recomputes those and takes two more: one sums
what its later steps need from every block (the first read layer's scores against dY, dT U, X_U dU', Σ dX_U ⊙ ρ_U),
the other forms each block's weight gradients; between them, the gradient goes back through D_Z = LN'(Z)ᵀ G, LN
differentiated twice (`_inner_gradient_backward`). It returns the gradient of every input, rates and mix
included; the host's torch ops that form the rates from α, θ and the chunk's scales carry it on to them.

So a (batch, head) program needs on chip [C, D] tiles and a few [D, BF] weight blocks whatever E is. Compiled for
sm_90 with momentum and kl's natural inputs on: D = 64 with BF = 32 takes 37 KiB of shared memory forward and
70 KiB backward (BF = 64: 77 and 138 KiB), D = 128 with C = 32 and BF = 32 84 KiB and 152 KiB, within an H100's
227 KiB. The kernel takes D ≤ `MAX_D` and chunks of at most `MAX_CHUNK` tokens; inputs may be float32, bfloat16
or float16, and everything is computed in float32.
"""

import math

import torch
import triton
import triton.language as tl

from miras_lite.memory import LAYER_NORM_EPS
from miras_lite.ops.boundary import _chunk_end, _Chunks
from miras_lite.ops.minibatch import _grouped, chunk_groups
from miras_lite.ops.recurrent import exact_step
from miras_lite.retention import scaled_readout

from . import KernelLimit
from .common import (DOT_PRECISION, MIN_DOT_BLOCK, dot, dot_block, dtype_limit, huber_delta_slope, load_block,
                     separable_bias_gradient, separable_bias_slope, store_block)

WEIGHT_BLOCK = 2048  # BD·BF: the elements of one weight matrix's block of hidden units a loop step holds
MAX_D = 128  # feature columns (rounded up to a power of two) whose tiles fit, measured by compiling for sm_90
MAX_CHUNK = 32
RATES = ("eta", "b", "gamma", "theta_mix_last", "gradient_scale_w", "gradient_scale_u", "read_scale_w",
         "read_scale_u", "delta", "mix_last")  # the rows of the per-chunk `rates` tensor
ENDS = ("b_last", "gamma_last", "theta_prod_last")  # the per-chunk scalars
_INV_SQRT2 = tl.constexpr(1 / math.sqrt(2))
_INV_SQRT_2PI = tl.constexpr(1 / math.sqrt(2 * math.pi))
_LN_EPS = tl.constexpr(LAYER_NORM_EPS)
_N_RATES, _N_ENDS = tl.constexpr(len(RATES)), tl.constexpr(len(ENDS))


# ------------------------------------------------------------------------------------ device math


@triton.jit
def _gelu(h):
    return 0.5 * h * (1.0 + tl.math.erf(h * _INV_SQRT2))


@triton.jit
def _gelu_slope(h):
    """GELU'(h) = Φ(h) + h φ(h)."""
    return 0.5 * (1.0 + tl.math.erf(h * _INV_SQRT2)) + h * tl.exp(-0.5 * h * h) * _INV_SQRT_2PI


@triton.jit
def _gelu_curvature(h):
    """GELU''(h) = φ(h) (2 − h²)."""
    return tl.exp(-0.5 * h * h) * _INV_SQRT_2PI * (2.0 - h * h)


@triton.jit
def _layer_norm(z, cols_ok, D):
    """(n, 1/σ) of LayerNorm without gain over the D valid columns (n is 0 on the others)."""
    centred = tl.where(cols_ok[None, :], z - tl.sum(z, 1)[:, None] / D, 0.0)
    inv_std = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / D + _LN_EPS)
    return centred * inv_std[:, None], inv_std


@triton.jit
def _layer_norm_backward(g, n, inv_std, cols_ok, D):
    """LN'(z)ᵀ g = (1/σ)(g − mean(g) − n mean(g ⊙ n)); symmetric in g."""
    out = g - tl.sum(g, 1)[:, None] / D - n * (tl.sum(g * n, 1) / D)[:, None]
    return tl.where(cols_ok[None, :], out * inv_std[:, None], 0.0)


@triton.jit
def _inverse_norm(squared_norm):
    return 1.0 / tl.sqrt(tl.maximum(squared_norm, 1e-30))


@triton.jit
def _bias_gradient(e, v, delta, p, eps, robust, BIAS: tl.constexpr, HUBER_MODE: tl.constexpr):
    """g = φ(e) of docs/design.md §2 step 2 for every bias; δ is [C, 1]."""
    if BIAS == "robust":
        g = e + robust * e * _inverse_norm(tl.sum(e * e, 1) + eps)[:, None]
    elif BIAS == "huber" and HUBER_MODE != "coord":
        squared_norm = tl.sum(e * e, 1)[:, None]
        if HUBER_MODE == "norm":
            outer = delta * e * _inverse_norm(squared_norm)
        else:
            outer = delta * e / tl.sqrt(e * e + eps)
        g = tl.where(squared_norm <= delta * delta, e, outer)
    else:
        g = separable_bias_gradient(e, v, delta, p, eps, BIAS)
    return g


@triton.jit
def _bias_backward(e, delta, dg, p, eps, robust, BIAS: tl.constexpr, HUBER_MODE: tl.constexpr):
    """(de, dδ) from dg for `_bias_gradient` (not dot, whose g = −v does not read e); dδ is [C]."""
    d_delta = tl.zeros([e.shape[0]], tl.float32)
    if BIAS == "robust":
        r = _inverse_norm(tl.sum(e * e, 1) + eps)[:, None]
        de = (1.0 + robust * r) * dg - robust * r * r * r * e * tl.sum(e * dg, 1)[:, None]
    elif BIAS == "huber" and HUBER_MODE != "coord":
        squared_norm = tl.sum(e * e, 1)[:, None]
        if HUBER_MODE == "norm":
            r = _inverse_norm(squared_norm)
            outer = delta * r * dg - delta * r * r * r * e * tl.sum(e * dg, 1)[:, None]
        else:
            r = 1.0 / tl.sqrt(e * e + eps)
            outer = delta * eps * r * r * r * dg
        inside = squared_norm <= delta * delta
        de = tl.where(inside, dg, outer)
        d_delta = tl.sum(tl.where(inside, 0.0, dg * e * r), 1)
    else:
        de = separable_bias_slope(e, delta, p, eps, BIAS) * dg
        if BIAS == "huber":
            d_delta = tl.sum(dg * huber_delta_slope(e, delta), 1)
    return de, d_delta


@triton.jit
def _natural(x, rho, simplex_scale):
    """x̂ = ρ ⊙ (x − (ρ·x)/c_s) per row."""
    return rho[None, :] * (x - (tl.sum(x * rho[None, :], 1) / simplex_scale)[:, None])


@triton.jit
def _natural_backward(x, rho, simplex_scale, dx_hat):
    """(dx, dρ) of `_natural` from dx̂."""
    along = tl.sum(dx_hat * rho[None, :], 1)[:, None] / simplex_scale
    d_rho = (tl.sum(dx_hat * (x - (tl.sum(x * rho[None, :], 1) / simplex_scale)[:, None]), 0)
             - tl.sum(along * x, 0))
    return rho[None, :] * (dx_hat - along), d_rho


# --------------------------------------------------------------------------------------- tiles


@triton.jit
def _load_rows(ptr, row_stride, rows, rows_ok, cols, n_cols):
    return load_block(ptr, row_stride, rows, rows_ok, cols, n_cols).to(tl.float32)


@triton.jit
def _rate(rates, i, Cn, rows, rows_ok):
    """Row i of this chunk's rates (`RATES`), 0 past the chunk."""
    return tl.load(rates + i * Cn + rows, mask=rows_ok, other=0.0)


@triton.jit
def _load_rates(rates, Cn, rows, rows_ok):
    """The rows of `RATES`, in order."""
    return (_rate(rates, 0, Cn, rows, rows_ok), _rate(rates, 1, Cn, rows, rows_ok), _rate(rates, 2, Cn, rows, rows_ok),
            _rate(rates, 3, Cn, rows, rows_ok), _rate(rates, 4, Cn, rows, rows_ok), _rate(rates, 5, Cn, rows, rows_ok),
            _rate(rates, 6, Cn, rows, rows_ok), _rate(rates, 7, Cn, rows, rows_ok), _rate(rates, 8, Cn, rows, rows_ok),
            _rate(rates, 9, Cn, rows, rows_ok))


@triton.jit
def _weight_blocks(Wp, Up, SWp, SUp, D, F, d_cols, d_ok, f_cols, f_ok, MOMENTUM: tl.constexpr):
    """Hidden block f of this head's (W, U, S_W, S_U): W[:, f], U[f, :]; without momentum S_W, S_U are W, U."""
    W = _load_rows(Wp, F, d_cols, d_ok, f_cols, F)
    U = _load_rows(Up, D, f_cols, f_ok, d_cols, D)
    SW, SU = W, U
    if MOMENTUM:
        SW = _load_rows(SWp, F, d_cols, d_ok, f_cols, F)
        SU = _load_rows(SUp, D, f_cols, f_ok, d_cols, D)
    return W, U, SW, SU


@triton.jit
def _store_weight_blocks(Wp, Up, SWp, SUp, D, F, d_cols, d_ok, f_cols, f_ok, W, U, SW, SU, MOMENTUM: tl.constexpr):
    store_block(Wp, F, d_cols, d_ok, f_cols, F, W)
    store_block(Up, D, f_cols, f_ok, d_cols, D, U)
    if MOMENTUM:
        store_block(SWp, F, d_cols, d_ok, f_cols, F, SW)
        store_block(SUp, D, f_cols, f_ok, d_cols, D, SU)


@triton.jit
def _load_chunk(q, k, v, rates, mix, ends, rho_wp, i_bh, qkv_sbh, Cn, D, BC: tl.constexpr, BD: tl.constexpr):
    """What a program reads besides the weights: (rows, rows_ok, d_cols, d_ok), (Q, K, V), the `RATES` rows, M,
    ρ_W and (b_C, γ_C, Θ)."""
    rows, d_cols = tl.arange(0, BC), tl.arange(0, BD)
    rows_ok, d_ok = rows < Cn, d_cols < D
    Q = _load_rows(q + i_bh * qkv_sbh, D, rows, rows_ok, d_cols, D)
    K = _load_rows(k + i_bh * qkv_sbh, D, rows, rows_ok, d_cols, D)
    V = _load_rows(v + i_bh * qkv_sbh, D, rows, rows_ok, d_cols, D)
    rates = _load_rates(rates + i_bh * _N_RATES * Cn, Cn, rows, rows_ok)
    M = _load_rows(mix + i_bh * Cn * Cn, Cn, rows, rows_ok, rows, Cn)
    rho_w = tl.load(rho_wp + i_bh * D + d_cols, mask=d_ok, other=0.0)
    ends += i_bh * _N_ENDS
    return ((rows, rows_ok, d_cols, d_ok), (Q, K, V), rates, M, rho_w,
            (tl.load(ends), tl.load(ends + 1), tl.load(ends + 2)))


# ---------------------------------------------------------------------------- chunk math, by hidden block
# Each function below that takes a hidden block f computes what depends on W[:, f], U[f, :] only; the sums over
# blocks (A U, the read's second layer, ...) are carried by the loops of the kernels.


@triton.jit
def _hidden_sums(K, Wp, Up, rho_up, gradient_w, simplex_scale, D, F, d_cols, d_ok, BC: tl.constexpr,
                 BD: tl.constexpr, BF: tl.constexpr, NATURAL: tl.constexpr, PRECISION: tl.constexpr):
    """The inner forward's sums over hidden blocks: (A U, A·ρ_U) with A = GELU(r_W ⊙ (K W))."""
    AU = tl.zeros([BC, BD], tl.float32)
    A_rho = tl.zeros([BC], tl.float32)
    for f0 in range(0, F, BF):
        f_cols = f0 + tl.arange(0, BF)
        f_ok = f_cols < F
        W = _load_rows(Wp, F, d_cols, d_ok, f_cols, F)
        U = _load_rows(Up, D, f_cols, f_ok, d_cols, D)
        A = _gelu(gradient_w[:, None] * dot(K, W, tl.float32, PRECISION))
        AU += dot(A, U, tl.float32, PRECISION)
        if NATURAL:
            A_rho += tl.sum(A * tl.load(rho_up + f_cols, mask=f_ok, other=0.0)[None, :], 1)
    return AU, A_rho


@triton.jit
def _inner_gradient(K, V, AU, gradient_u, delta, d_ok, D, p, eps, robust, BIAS: tl.constexpr,
                    HUBER_MODE: tl.constexpr):
    """The inner loss's gradient w.r.t. Z = r_U ⊙ (A U): (N, 1/σ, E, G, D_Z) with E = K + LN(Z) − V, G = φ(E)."""
    N, inv_std = _layer_norm(gradient_u[:, None] * AU, d_ok, D)
    E = K + N - V
    G = _bias_gradient(E, V, delta[:, None], p, eps, robust, BIAS, HUBER_MODE)
    return N, inv_std, E, G, _layer_norm_backward(G, N, inv_std, d_ok, D)


@triton.jit
def _hidden_block(Q, K, DZ, W, U, SW, scores_w, rho_u, A_rho, eta, b, gamma, gradient_w, gradient_u, read_w,
                  simplex_scale, NATURAL: tl.constexpr, MOMENTUM: tl.constexpr, PRECISION: tl.constexpr):
    """Block f of every [C, F] quantity of the chunk:
    (K W, H, GELU'(H), T = D_Z Uᵀ, D_H, η ⊙ D_H, Q W, Q S_W, the first read layer's bracket, H_q, A_q, A, X_U).

    H = r_W ⊙ (K W), D_H = r_U ⊙ T ⊙ GELU'(H), bracket = b ⊙ (Q W) + γ ⊙ (Q S_W) − ((Q X_Wᵀ) ⊙ M)(η ⊙ D_H),
    H_q = s_W ⊙ bracket, A_q = GELU(H_q); X_U = A = GELU(H), or kl's natural inputs of A (with A·ρ_U summed over
    every block)."""
    KW = dot(K, W, tl.float32, PRECISION)
    H = gradient_w[:, None] * KW
    slope = _gelu_slope(H)
    T = dot(DZ, tl.trans(U), tl.float32, PRECISION)
    DH = gradient_u[:, None] * T * slope
    eta_DH = eta[:, None] * DH
    QW = dot(Q, W, tl.float32, PRECISION)
    bracket = b[:, None] * QW - dot(scores_w, eta_DH, tl.float32, PRECISION)
    QSW = QW
    if MOMENTUM:
        QSW = dot(Q, SW, tl.float32, PRECISION)
        bracket += gamma[:, None] * QSW
    H_q = read_w[:, None] * bracket
    A = _gelu(H)
    X_u = A
    if NATURAL:
        X_u = rho_u[None, :] * (A - (A_rho / simplex_scale)[:, None])
    return KW, H, slope, T, DH, eta_DH, QW, QSW, bracket, H_q, _gelu(H_q), A, X_u


@triton.jit
def _read_sums(Q, K, X_w, DZ, eta_DZ, scores_w, rho_up, A_rho, eta, b, gamma, gradient_w, gradient_u, read_w,
               mix_last, theta_mix_last, b_last, gamma_last, theta_prod_last, Wp, Up, SWp, SUp, W_endp, U_endp,
               SW_endp, SU_endp, simplex_scale, D, F, d_cols, d_ok, BC: tl.constexpr, BD: tl.constexpr,
               BF: tl.constexpr, NATURAL: tl.constexpr, MOMENTUM: tl.constexpr, STORE_END: tl.constexpr,
               PRECISION: tl.constexpr):
    """The second read layer's sums over hidden blocks, (A_q X_Uᵀ, A_q U, A_q S_U), and, if STORE_END, each
    block of the chunk-end weights: W' = b_C W + γ_C S_W − X_Wᵀ (m ⊙ η ⊙ D_H), S_W' = Θ S_W − X_Wᵀ (μ ⊙ η ⊙ D_H),
    U' = b_C U + γ_C S_U − X_Uᵀ (m ⊙ η ⊙ D_Z), S_U' = Θ S_U − X_Uᵀ (μ ⊙ η ⊙ D_Z)."""
    scores_u = tl.zeros([BC, BC], tl.float32)
    AqU = tl.zeros([BC, BD], tl.float32)
    AqSU = tl.zeros([BC, BD], tl.float32)
    for f0 in range(0, F, BF):
        f_cols = f0 + tl.arange(0, BF)
        f_ok = f_cols < F
        W, U, SW, SU = _weight_blocks(Wp, Up, SWp, SUp, D, F, d_cols, d_ok, f_cols, f_ok, MOMENTUM)
        rho_u = tl.load(rho_up + f_cols, mask=f_ok, other=0.0)
        _, _, _, _, _, eta_DH, _, _, _, _, A_q, _, X_u = _hidden_block(
            Q, K, DZ, W, U, SW, scores_w, rho_u, A_rho, eta, b, gamma, gradient_w, gradient_u, read_w, simplex_scale,
            NATURAL, MOMENTUM, PRECISION)
        scores_u += dot(A_q, tl.trans(X_u), tl.float32, PRECISION)
        AqU += dot(A_q, U, tl.float32, PRECISION)
        if MOMENTUM:
            AqSU += dot(A_q, SU, tl.float32, PRECISION)
        if STORE_END:
            W_end = b_last * W - dot(tl.trans(X_w), mix_last[:, None] * eta_DH, tl.float32, PRECISION)
            U_end = b_last * U - dot(tl.trans(X_u), mix_last[:, None] * eta_DZ, tl.float32, PRECISION)
            SW_end, SU_end = W_end, U_end
            if MOMENTUM:
                W_end += gamma_last * SW
                U_end += gamma_last * SU
                SW_end = theta_prod_last * SW - dot(tl.trans(X_w), theta_mix_last[:, None] * eta_DH, tl.float32,
                                                    PRECISION)
                SU_end = theta_prod_last * SU - dot(tl.trans(X_u), theta_mix_last[:, None] * eta_DZ, tl.float32,
                                                    PRECISION)
            _store_weight_blocks(W_endp, U_endp, SW_endp, SU_endp, D, F, d_cols, d_ok, f_cols, f_ok, W_end, U_end,
                                 SW_end, SU_end, MOMENTUM)
    return scores_u, AqU, AqSU


# -------------------------------------------------------------------------------------- kernels

# The launch: compiled for sm_90 at D = 64, every choice of warps and BF keeps all 255 registers and spills, least
# with 8 warps and BF = 32 (0.4 KiB per thread forward, 1.7 KiB backward; 4 warps or BF = 64 spill 2-3x more); no
# autotuning, as each configuration tried costs a compile of the backward (here, on a CPU, 10-40 s per variant).
LAUNCH = dict(num_warps=8, num_stages=1)


@triton.jit
def _chunk_forward(q, k, v, rates, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, W_endp, U_endp, SW_endp, SU_endp,
                   i_bh, qkv_sbh, Cn, D, F, p, eps, robust, simplex_scale, BIAS: tl.constexpr,
                   HUBER_MODE: tl.constexpr, MOMENTUM: tl.constexpr, NATURAL: tl.constexpr, STORE_END: tl.constexpr,
                   PRECISION: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr):
    """The chunk's forward for program i_bh, in two passes over hidden blocks (and the end weights if STORE_END);
    returns what the backward also needs, in groups."""
    tiles, (Q, K, V), rates, M, rho_w, ends_ = _load_chunk(q, k, v, rates, mix, ends, rho_wp, i_bh, qkv_sbh, Cn, D,
                                                           BC, BD)
    rows, rows_ok, d_cols, d_ok = tiles
    eta, b, gamma, theta_mix_last, gradient_w, gradient_u, read_w, read_u, delta, mix_last = rates
    b_last, gamma_last, theta_prod_last = ends_
    head_w, head_u = i_bh * D * F, i_bh * F * D
    AU, A_rho = _hidden_sums(K, Wp + head_w, Up + head_u, rho_up + i_bh * F, gradient_w, simplex_scale, D, F, d_cols,
                             d_ok, BC, BD, BF, NATURAL, PRECISION)
    N, inv_std, E, G, DZ = _inner_gradient(K, V, AU, gradient_u, delta, d_ok, D, p, eps, robust, BIAS, HUBER_MODE)
    X_w = K
    if NATURAL:
        X_w = _natural(K, rho_w, simplex_scale)
    raw_scores_w = dot(Q, tl.trans(X_w), tl.float32, PRECISION)
    eta_DZ = eta[:, None] * DZ
    raw_scores_u, AqU, AqSU = _read_sums(
        Q, K, X_w, DZ, eta_DZ, raw_scores_w * M, rho_up + i_bh * F, A_rho, eta, b, gamma, gradient_w, gradient_u,
        read_w, mix_last, theta_mix_last, b_last, gamma_last, theta_prod_last, Wp + head_w, Up + head_u,
        SWp + head_w, SUp + head_u, W_endp + head_w, U_endp + head_u, SW_endp + head_w, SU_endp + head_u,
        simplex_scale, D, F, d_cols, d_ok, BC, BD, BF, NATURAL, MOMENTUM, STORE_END, PRECISION)
    bracket_u = b[:, None] * AqU - dot(raw_scores_u * M, eta_DZ, tl.float32, PRECISION)
    if MOMENTUM:
        bracket_u += gamma[:, None] * AqSU
    return (tiles, (Q, K, V), rates, M, rho_w, ends_, (AU, A_rho, N, inv_std, E, G, DZ, eta_DZ),
            (X_w, raw_scores_w, raw_scores_u, AqU, AqSU, bracket_u))


@triton.jit
def _forward_kernel(
    q, k, v, rates, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, o, W_endp, U_endp, SW_endp, SU_endp,
    qkv_sbh, o_sbh, Cn, D, F, p, eps, robust, simplex_scale,
    BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, MOMENTUM: tl.constexpr, NATURAL: tl.constexpr,
    PRECISION: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
):
    """One (batch·head) program: the chunk's read O = Q + LN(s_U ⊙ bracket_U) and end weights (module docstring)."""
    i_bh = tl.program_id(0).to(tl.int64)
    tiles, (Q, _, _), rates, _, _, _, _, (_, _, _, _, _, bracket_u) = _chunk_forward(
        q, k, v, rates, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, W_endp, U_endp, SW_endp, SU_endp, i_bh, qkv_sbh,
        Cn, D, F, p, eps, robust, simplex_scale, BIAS, HUBER_MODE, MOMENTUM, NATURAL, True, PRECISION, BC, BD, BF)
    rows, rows_ok, d_cols, d_ok = tiles
    read_u = rates[7]
    O = Q + _layer_norm(read_u[:, None] * bracket_u, d_ok, D)[0]
    store_block(o + i_bh * o_sbh, D, rows, rows_ok, d_cols, D, O)


@triton.jit
def _block_gradients(Q, K, X_w, DZ, eta_DZ, W, U, SW, SU, dW_end, dU_end, dSW_end, dSU_end, scores_w, rho_u,
                     A_rho, Y2, R2, eta, b, gamma, gradient_w, gradient_u, read_w, mix_last, theta_mix_last,
                     simplex_scale, NATURAL: tl.constexpr, MOMENTUM: tl.constexpr, PRECISION: tl.constexpr):
    """Hidden block f of the backward, up to what needs sums over every block: the block's forward
    (`_hidden_block`), then Y1 (the gradient of the first read layer's bracket), d(η ⊙ D_H), dT (of T = D_Z Uᵀ),
    the part of dH that comes through D_H, dX_U, and the partial sums (dH_q ⊙ bracket, X_W dW', X_W dS_W')."""
    KW, H, slope, T, DH, eta_DH, QW, QSW, bracket, H_q, A_q, A, X_u = _hidden_block(
        Q, K, DZ, W, U, SW, scores_w, rho_u, A_rho, eta, b, gamma, gradient_w, gradient_u, read_w, simplex_scale,
        NATURAL, MOMENTUM, PRECISION)
    dA_q = b[:, None] * dot(Y2, tl.trans(U), tl.float32, PRECISION) - dot(R2, X_u, tl.float32, PRECISION)
    dX_u = -(dot(tl.trans(R2), A_q, tl.float32, PRECISION)
             + dot(mix_last[:, None] * eta_DZ, tl.trans(dU_end), tl.float32, PRECISION))
    X_dW = dot(X_w, dW_end, tl.float32, PRECISION)
    d_eta_DH = -mix_last[:, None] * X_dW
    X_dSW = X_dW
    if MOMENTUM:
        dA_q += gamma[:, None] * dot(Y2, tl.trans(SU), tl.float32, PRECISION)
        dX_u -= dot(theta_mix_last[:, None] * eta_DZ, tl.trans(dSU_end), tl.float32, PRECISION)
        X_dSW = dot(X_w, dSW_end, tl.float32, PRECISION)
        d_eta_DH -= theta_mix_last[:, None] * X_dSW
    dH_q = dA_q * _gelu_slope(H_q)
    Y1 = read_w[:, None] * dH_q
    d_eta_DH -= dot(tl.trans(scores_w), Y1, tl.float32, PRECISION)
    dDH = eta[:, None] * d_eta_DH
    dT = dDH * gradient_u[:, None] * slope
    dH = dDH * gradient_u[:, None] * T * _gelu_curvature(H)
    return (KW, slope, T, DH, eta_DH, QW, QSW, bracket, A_q, A, X_u), (Y1, dH_q, d_eta_DH, dDH, dT, dH, dX_u, X_dW,
                                                                        X_dSW)


@triton.jit
def _block_backward(f0, Wp, Up, SWp, SUp, dW_endp, dU_endp, dSW_endp, dSU_endp, rho_up, D, F, d_cols, d_ok, Q, K,
                    X_w, DZ, eta_DZ, scores_w, A_rho, Y2, R2, eta, b, gamma, gradient_w, gradient_u, read_w, mix_last,
                    theta_mix_last, simplex_scale, BF: tl.constexpr, NATURAL: tl.constexpr, MOMENTUM: tl.constexpr,
                    PRECISION: tl.constexpr):
    """The hidden block from unit f0 on, read, and `_block_gradients` of it: ((W, U, S_W, S_U), their end weights'
    gradients, (its columns, their mask, ρ_U), then `_block_gradients`' two groups)."""
    f_cols = f0 + tl.arange(0, BF)
    f_ok = f_cols < F
    weights = _weight_blocks(Wp, Up, SWp, SUp, D, F, d_cols, d_ok, f_cols, f_ok, MOMENTUM)
    d_ends = _weight_blocks(dW_endp, dU_endp, dSW_endp, dSU_endp, D, F, d_cols, d_ok, f_cols, f_ok, MOMENTUM)
    rho_u = tl.load(rho_up + f_cols, mask=f_ok, other=0.0)
    W, U, SW, SU = weights
    dW_end, dU_end, dSW_end, dSU_end = d_ends
    forward, backward = _block_gradients(Q, K, X_w, DZ, eta_DZ, W, U, SW, SU, dW_end, dU_end, dSW_end, dSU_end,
                                         scores_w, rho_u, A_rho, Y2, R2, eta, b, gamma, gradient_w, gradient_u, read_w,
                                         mix_last, theta_mix_last, simplex_scale, NATURAL, MOMENTUM, PRECISION)
    return weights, d_ends, (f_cols, f_ok, rho_u), forward, backward


@triton.jit
def _inner_gradient_backward(K, V, N, inv_std, E, G, DZ, dDZ, delta, d_ok, D, p, eps, robust, BIAS: tl.constexpr,
                             HUBER_MODE: tl.constexpr):
    """(dZ, dK, dV, dδ) from dD_Z, through D_Z = LN'(Z)ᵀ G = (1/σ)(G − mean G − N m), m = mean(G ⊙ N), and
    E = K + LN(Z) − V, G = φ(E). D_Z's derivative w.r.t. Z, for an upstream w, is −(1/σ) mean(w ⊙ D_Z) N + LN'(Z)ᵀ u
    with u = −(1/σ)(m w + mean(w ⊙ N) G) (LN differentiated twice)."""
    dG = _layer_norm_backward(dDZ, N, inv_std, d_ok, D)
    m = tl.sum(G * N, 1)[:, None] / D
    u = -inv_std[:, None] * (m * dDZ + (tl.sum(dDZ * N, 1)[:, None] / D) * G)
    dZ = (-inv_std * tl.sum(dDZ * DZ, 1) / D)[:, None] * N + _layer_norm_backward(u, N, inv_std, d_ok, D)
    if BIAS == "dot":  # G = −V does not read E
        return dZ, dG * 0.0, -dG, tl.sum(dG, 1) * 0.0
    dE, d_delta = _bias_backward(E, delta[:, None], dG, p, eps, robust, BIAS, HUBER_MODE)
    return dZ + _layer_norm_backward(dE, N, inv_std, d_ok, D), dE, -dE, d_delta


@triton.jit
def _backward_kernel(
    q, k, v, rates, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, dO, dW_endp, dU_endp, dSW_endp, dSU_endp,
    dq, dk, dv, d_rates, d_mix, d_ends, dWp, dUp, dSWp, dSUp, d_rho_wp, d_rho_up,
    qkv_sbh, o_sbh, Cn, D, F, p, eps, robust, simplex_scale,
    BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, MOMENTUM: tl.constexpr, NATURAL: tl.constexpr,
    PRECISION: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
):
    """One (batch·head) program: the forward again, then every input's gradient from dO and the end weights', in
    two more passes over hidden blocks: the first sums what crosses blocks (the first read layer's scores, dT U,
    X_U dU', kl's Σ dX_U ⊙ ρ_U), the second forms each block's weight gradients."""
    i_bh = tl.program_id(0).to(tl.int64)
    (tiles, (Q, K, V), rates_, M, rho_w, ends_, (AU, A_rho, N, inv_std, E, G, DZ, eta_DZ),
     (X_w, raw_scores_w, raw_scores_u, AqU, AqSU, bracket_u)) = _chunk_forward(
        q, k, v, rates, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, Wp, Up, SWp, SUp, i_bh, qkv_sbh, Cn, D, F, p,
        eps, robust, simplex_scale, BIAS, HUBER_MODE, MOMENTUM, NATURAL, False, PRECISION, BC, BD, BF)
    rows, rows_ok, d_cols, d_ok = tiles
    eta, b, gamma, theta_mix_last, gradient_w, gradient_u, read_w, read_u, delta, mix_last = rates_
    b_last, gamma_last, theta_prod_last = ends_
    head_w, head_u = i_bh * D * F, i_bh * F * D
    Wp, Up, SWp, SUp = Wp + head_w, Up + head_u, SWp + head_w, SUp + head_u
    dW_endp, dU_endp, dSW_endp, dSU_endp = dW_endp + head_w, dU_endp + head_u, dSW_endp + head_w, dSU_endp + head_u
    dWp, dUp, dSWp, dSUp = dWp + head_w, dUp + head_u, dSWp + head_w, dSUp + head_u
    rho_up, d_rho_up = rho_up + i_bh * F, d_rho_up + i_bh * F
    scores_w = raw_scores_w * M

    # the read's second layer: O = Q + LN(s_U ⊙ bracket_U)
    dO_n = _load_rows(dO + i_bh * o_sbh, D, rows, rows_ok, d_cols, D)
    N_q, inv_std_q = _layer_norm(read_u[:, None] * bracket_u, d_ok, D)
    dZ_q = _layer_norm_backward(dO_n, N_q, inv_std_q, d_ok, D)
    d_read_u = tl.sum(dZ_q * bracket_u, 1)
    Y2 = read_u[:, None] * dZ_q
    raw_R2 = dot(Y2, tl.trans(eta_DZ), tl.float32, PRECISION)
    R2 = raw_R2 * M
    d_mix_n = -raw_R2 * raw_scores_u
    d_b = tl.sum(Y2 * AqU, 1)
    d_gamma = tl.sum(Y2 * AqSU, 1)
    d_eta_DZ = -dot(tl.trans(raw_scores_u * M), Y2, tl.float32, PRECISION)

    # pass 3: the sums over hidden blocks
    raw_R1 = tl.zeros([BC, BC], tl.float32)
    dQ = dO_n
    dX_w = tl.zeros([BC, BD], tl.float32)
    X_dU = tl.zeros([BC, BD], tl.float32)
    X_dSU = tl.zeros([BC, BD], tl.float32)
    dT_U = tl.zeros([BC, BD], tl.float32)
    along, d_read_w, d_mix_last, d_theta_mix_last = (tl.zeros([BC], tl.float32), tl.zeros([BC], tl.float32),
                                                     tl.zeros([BC], tl.float32), tl.zeros([BC], tl.float32))
    d_eta, d_gradient_u = tl.zeros([BC], tl.float32), tl.zeros([BC], tl.float32)
    d_b_last, d_gamma_last, d_theta_prod_last = 0.0, 0.0, 0.0
    for f0 in range(0, F, BF):
        (W, U, SW, SU), (dW_end, dU_end, dSW_end, dSU_end), (_, _, rho_u), forward, backward = _block_backward(
            f0, Wp, Up, SWp, SUp, dW_endp, dU_endp, dSW_endp, dSU_endp, rho_up, D, F, d_cols, d_ok, Q, K, X_w, DZ,
            eta_DZ, scores_w, A_rho, Y2, R2, eta, b, gamma, gradient_w, gradient_u, read_w, mix_last, theta_mix_last,
            simplex_scale, BF, NATURAL, MOMENTUM, PRECISION)
        _, slope, T, DH, eta_DH, QW, QSW, bracket, _, _, X_u = forward
        Y1, dH_q, d_eta_DH, dDH, dT, _, dX_u, X_dW, X_dSW = backward
        d_read_w += tl.sum(dH_q * bracket, 1)
        raw_R1 += dot(Y1, tl.trans(eta_DH), tl.float32, PRECISION)
        dQ += b[:, None] * dot(Y1, tl.trans(W), tl.float32, PRECISION)
        d_b += tl.sum(Y1 * QW, 1)
        dX_w -= dot(mix_last[:, None] * eta_DH, tl.trans(dW_end), tl.float32, PRECISION)
        d_mix_last -= tl.sum(eta_DH * X_dW, 1)
        X_dU += dot(X_u, dU_end, tl.float32, PRECISION)
        d_b_last += tl.sum(tl.sum(W * dW_end, 1), 0) + tl.sum(tl.sum(U * dU_end, 1), 0)
        if MOMENTUM:
            dQ += gamma[:, None] * dot(Y1, tl.trans(SW), tl.float32, PRECISION)
            d_gamma += tl.sum(Y1 * QSW, 1)
            dX_w -= dot(theta_mix_last[:, None] * eta_DH, tl.trans(dSW_end), tl.float32, PRECISION)
            d_theta_mix_last -= tl.sum(eta_DH * X_dSW, 1)
            X_dSU += dot(X_u, dSU_end, tl.float32, PRECISION)
            d_gamma_last += tl.sum(tl.sum(SW * dW_end, 1), 0) + tl.sum(tl.sum(SU * dU_end, 1), 0)
            d_theta_prod_last += tl.sum(tl.sum(SW * dSW_end, 1), 0) + tl.sum(tl.sum(SU * dSU_end, 1), 0)
        d_eta += tl.sum(d_eta_DH * DH, 1)
        d_gradient_u += tl.sum(dDH * T * slope, 1)
        dT_U += dot(dT, U, tl.float32, PRECISION)
        if NATURAL:
            along += tl.sum(dX_u * rho_u[None, :], 1)

    # what those sums give: the first read layer's scores, d(η ⊙ D_Z), then back through the inner gradient
    d_eta_DZ -= mix_last[:, None] * X_dU
    d_mix_last -= tl.sum(eta_DZ * X_dU, 1)
    if MOMENTUM:
        d_eta_DZ -= theta_mix_last[:, None] * X_dSU
        d_theta_mix_last -= tl.sum(eta_DZ * X_dSU, 1)
    R1 = raw_R1 * M
    d_mix_n -= raw_R1 * raw_scores_w
    dQ -= dot(R1, X_w, tl.float32, PRECISION)
    dX_w -= dot(tl.trans(R1), Q, tl.float32, PRECISION)
    d_eta += tl.sum(d_eta_DZ * DZ, 1)
    dZ, dK, dV, d_delta = _inner_gradient_backward(K, V, N, inv_std, E, G, DZ, dT_U + eta[:, None] * d_eta_DZ,
                                                   delta, d_ok, D, p, eps, robust, BIAS, HUBER_MODE)
    d_gradient_u += tl.sum(dZ * AU, 1)
    if NATURAL:
        dK_x, d_rho_w = _natural_backward(K, rho_w, simplex_scale, dX_w)
        dK += dK_x
        tl.store(d_rho_wp + i_bh * D + d_cols, d_rho_w, mask=d_ok)
    else:
        dK += dX_w

    # pass 4: each hidden block's weight gradients
    d_gradient_w = tl.zeros([BC], tl.float32)
    for f0 in range(0, F, BF):
        (W, U, _, _), (dW_end, dU_end, dSW_end, dSU_end), (f_cols, f_ok, rho_u), forward, backward = _block_backward(
            f0, Wp, Up, SWp, SUp, dW_endp, dU_endp, dSW_endp, dSU_endp, rho_up, D, F, d_cols, d_ok, Q, K, X_w, DZ,
            eta_DZ, scores_w, A_rho, Y2, R2, eta, b, gamma, gradient_w, gradient_u, read_w, mix_last, theta_mix_last,
            simplex_scale, BF, NATURAL, MOMENTUM, PRECISION)
        KW, slope, _, _, _, _, _, _, A_q, A, _ = forward
        Y1, _, _, _, dT, dH, dX_u, _, _ = backward
        if NATURAL:  # dA and dρ_U of X_U = ρ_U ⊙ (A − (A·ρ_U)/c_s), with A·ρ_U and Σ dX_U ⊙ ρ_U over every block
            centred = A - (A_rho / simplex_scale)[:, None]
            dA = rho_u[None, :] * (dX_u - (along / simplex_scale)[:, None])
            d_rho_u = tl.sum(dX_u * centred, 0) - tl.sum((along / simplex_scale)[:, None] * A, 0)
            tl.store(d_rho_up + f_cols, d_rho_u, mask=f_ok)
        else:
            dA = dX_u
        dA += gradient_u[:, None] * dot(dZ, tl.trans(U), tl.float32, PRECISION)
        dH += dA * slope
        dK += gradient_w[:, None] * dot(dH, tl.trans(W), tl.float32, PRECISION)
        d_gradient_w += tl.sum(dH * KW, 1)
        dW = (b_last * dW_end + dot(tl.trans(Q), b[:, None] * Y1, tl.float32, PRECISION)
              + dot(tl.trans(K), gradient_w[:, None] * dH, tl.float32, PRECISION))
        dU = (b_last * dU_end + dot(tl.trans(A_q), b[:, None] * Y2, tl.float32, PRECISION)
              + dot(tl.trans(dT), DZ, tl.float32, PRECISION)
              + dot(tl.trans(A), gradient_u[:, None] * dZ, tl.float32, PRECISION))
        dSW, dSU = dW, dU
        if MOMENTUM:
            dSW = gamma_last * dW_end + theta_prod_last * dSW_end + dot(tl.trans(Q), gamma[:, None] * Y1, tl.float32,
                                                                       PRECISION)
            dSU = gamma_last * dU_end + theta_prod_last * dSU_end + dot(tl.trans(A_q), gamma[:, None] * Y2,
                                                                       tl.float32, PRECISION)
        _store_weight_blocks(dWp, dUp, dSWp, dSUp, D, F, d_cols, d_ok, f_cols, f_ok, dW, dU, dSW, dSU, MOMENTUM)

    row_base = i_bh * Cn * D  # the gradients are [B, H, C, D], contiguous
    store_block(dq + row_base, D, rows, rows_ok, d_cols, D, dQ)
    store_block(dk + row_base, D, rows, rows_ok, d_cols, D, dK)
    store_block(dv + row_base, D, rows, rows_ok, d_cols, D, dV)
    d_rates += i_bh * _N_RATES * Cn
    tl.store(d_rates + rows, d_eta, mask=rows_ok)
    tl.store(d_rates + Cn + rows, d_b, mask=rows_ok)
    tl.store(d_rates + 2 * Cn + rows, d_gamma, mask=rows_ok)
    tl.store(d_rates + 3 * Cn + rows, d_theta_mix_last, mask=rows_ok)
    tl.store(d_rates + 4 * Cn + rows, d_gradient_w, mask=rows_ok)
    tl.store(d_rates + 5 * Cn + rows, d_gradient_u, mask=rows_ok)
    tl.store(d_rates + 6 * Cn + rows, d_read_w, mask=rows_ok)
    tl.store(d_rates + 7 * Cn + rows, d_read_u, mask=rows_ok)
    tl.store(d_rates + 8 * Cn + rows, d_delta, mask=rows_ok)
    tl.store(d_rates + 9 * Cn + rows, d_mix_last, mask=rows_ok)
    store_block(d_mix + i_bh * Cn * Cn, Cn, rows, rows_ok, rows, Cn, d_mix_n)
    d_ends += i_bh * _N_ENDS
    tl.store(d_ends, d_b_last)
    tl.store(d_ends + 1, d_gamma_last)
    tl.store(d_ends + 2, d_theta_prod_last)


# ---------------------------------------------------------------------------------- host functions


def _blocks(C, D, F):
    """(BC, BD, BF): the chunk, the feature columns and a block of hidden units with BD·BF ≤ WEIGHT_BLOCK."""
    BD = dot_block(D)
    return dot_block(C), BD, min(dot_block(F), max(MIN_DOT_BLOCK, WEIGHT_BLOCK // BD))


def _flags(spec, momentum, natural, dtype):
    return dict(p=float(spec.p), eps=float(spec.eps), robust=float(spec.robust_delta),
                simplex_scale=float(spec.simplex_scale), BIAS=spec.bias, HUBER_MODE=spec.huber_mode,
                MOMENTUM=momentum, NATURAL=natural, PRECISION=DOT_PRECISION[dtype])


def _rows_layout(*tensors):
    """The tensors (each [B, H, C, D]) with unit column and D row strides and one shared (batch·head) stride."""
    tensors = [x if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1] and x.stride(0) == x.shape[1] * x.stride(1)
               else x.contiguous() for x in tensors]
    if len({x.stride(1) for x in tensors}) > 1:
        tensors = [x.contiguous() for x in tensors]
    return tensors


def _sizes(q, W):
    B, H, Cn, D = q.shape
    return B, H, Cn, D, W.shape[-1]


def chunk_forward(q, k, v, rates, mix, ends, weights, momenta, rho, spec):
    """One chunk for every (batch, head): o [B, H, C, D] (q's dtype) and the float32 end weights and momenta
    (momenta None: gd). Tensors as in `MLPChunk`."""
    B, H, Cn, D, F = _sizes(q, weights[0])
    o = q.new_empty(B, H, Cn, D)
    ends_out = tuple(torch.empty_like(x) for x in weights)
    momenta_out = None if momenta is None else tuple(torch.empty_like(x) for x in momenta)
    S, S_out = momenta or weights, momenta_out or ends_out
    rho_w, rho_u = rho or (rates, rates)
    BC, BD, BF = _blocks(Cn, D, F)
    _forward_kernel[(B * H,)](
        q, k, v, rates, mix, ends, *weights, *S, rho_w, rho_u, o, *ends_out, *S_out,
        q.stride(1), o.stride(1), Cn, D, F, **_flags(spec, momenta is not None, rho is not None, q.dtype),
        BC=BC, BD=BD, BF=BF, **LAUNCH,
    )
    return o, ends_out, momenta_out


def chunk_backward(q, k, v, rates, mix, ends, weights, momenta, rho, spec, dO, d_ends_out, d_momenta_out):
    """Float32 gradients (dq, dk, dv, d rates, d mix, d ends, d weights, d momenta or None, dρ or None) of
    `chunk_forward` from those of its outputs."""
    B, H, Cn, D, F = _sizes(q, weights[0])
    dq, dk, dv = (q.new_empty(B, H, Cn, D, dtype=torch.float32) for _ in range(3))
    d_rates, d_mix, d_ends = torch.empty_like(rates), torch.empty_like(mix), torch.empty_like(ends)
    d_weights = tuple(torch.empty_like(x) for x in weights)
    d_momenta = None if momenta is None else tuple(torch.empty_like(x) for x in momenta)
    d_rho = None if rho is None else tuple(torch.empty_like(x) for x in rho)
    S, dS_out, dS = momenta or weights, d_momenta_out or d_ends_out, d_momenta or d_weights
    rho_w, rho_u = rho or (rates, rates)
    d_rho_w, d_rho_u = d_rho or (d_rates, d_rates)
    BC, BD, BF = _blocks(Cn, D, F)
    _backward_kernel[(B * H,)](
        q, k, v, rates, mix, ends, *weights, *S, rho_w, rho_u, dO, *d_ends_out, *dS_out,
        dq, dk, dv, d_rates, d_mix, d_ends, *d_weights, *dS, d_rho_w, d_rho_u,
        q.stride(1), dO.stride(1), Cn, D, F, **_flags(spec, momenta is not None, rho is not None, q.dtype),
        BC=BC, BD=BD, BF=BF, **LAUNCH,
    )
    return dq, dk, dv, d_rates, d_mix, d_ends, d_weights, d_momenta, d_rho


class MLPChunk(torch.autograd.Function):
    """One chunk: (q, k, v [B, H, C, D], rates [B, H, len(RATES), C], mix [B, H, C, C], ends [B, H, len(ENDS)],
    W [B, H, D, F], U [B, H, F, D], S_W, S_U (momentum) or None, ρ_W [B, H, D], ρ_U [B, H, F] (kl) or None, spec)
    → (o, W', U'[, S_W', S_U']). Rates, mix, ends, weights and ρ are float32."""

    @staticmethod
    def forward(ctx, q, k, v, rates, mix, ends, W, U, SW, SU, rho_w, rho_u, spec):
        q, k, v = _rows_layout(q, k, v)
        rates, mix, ends, W, U = (x.contiguous() for x in (rates, mix, ends, W, U))
        momenta = None if SW is None else (SW.contiguous(), SU.contiguous())
        rho = None if rho_w is None else (rho_w.contiguous(), rho_u.contiguous())
        o, ends_out, momenta_out = chunk_forward(q, k, v, rates, mix, ends, (W, U), momenta, rho, spec)
        ctx.spec, ctx.momentum, ctx.natural = spec, momenta is not None, rho is not None
        ctx.save_for_backward(q, k, v, rates, mix, ends, W, U, *(momenta or ()), *(rho or ()))
        return (o, *ends_out, *(momenta_out or ()))

    @staticmethod
    def backward(ctx, dO, dW_end, dU_end, *d_momenta_out):
        q, k, v, rates, mix, ends, W, U, *rest = ctx.saved_tensors
        momenta = tuple(rest[:2]) if ctx.momentum else None
        rho = tuple(rest[-2:]) if ctx.natural else None
        d_momenta_out = tuple(x.contiguous() for x in d_momenta_out) if ctx.momentum else None
        dq, dk, dv, d_rates, d_mix, d_ends, (dW, dU), d_momenta, d_rho = chunk_backward(
            q, k, v, rates, mix, ends, (W, U), momenta, rho, ctx.spec, dO.contiguous(),
            (dW_end.contiguous(), dU_end.contiguous()), d_momenta_out)
        dtype = q.dtype
        return (dq.to(dtype), dk.to(dtype), dv.to(dtype), d_rates, d_mix, d_ends, dW, dU,
                *(d_momenta or (None, None)), *(d_rho or (None, None)), None)


def _chunk_rates(decays, gradient_scales, read_scales, spec):
    """The `RATES` rows [..., len(RATES), C] and `ENDS` [..., len(ENDS)] of chunks with `ChunkDecays` decays and
    per-weight gradient-point and read scales ([..., C] or broadcastable)."""
    b = decays.b
    zeros = torch.zeros_like(b)
    momentum = decays.gamma is not None
    gamma = decays.gamma if momentum else zeros
    delta = decays.delta.squeeze(-1) if decays.delta is not None else torch.full_like(b, spec.delta)
    rows = (decays.eta, b, gamma, decays.theta_mix_last if momentum else zeros, *gradient_scales, *read_scales, delta,
            decays.mix[..., -1, :])
    rates = torch.stack([x.expand_as(b) for x in rows], dim=-2).float()
    ends = torch.stack([b[..., -1], gamma[..., -1], decays.theta_prod_last if momentum else zeros[..., -1]], dim=-1)
    return rates, ends.float()


def _apply(spec, q, k, v, rates, mix, ends, weights, momenta, rho=None):
    """`MLPChunk` on one chunk: (o, end weights, end momenta or None)."""
    out = MLPChunk.apply(q, k, v, rates, mix, ends, *weights, *(momenta or (None, None)), *(rho or (None, None)), spec)
    return out[0], tuple(out[1:3]), tuple(out[3:5]) if momenta is not None else None


def _float(rate):
    """A rate in float32 (None stays None): the decays of half-precision rates would lose digits."""
    return None if rate is None else rate.float()


def _start(spec, q, k, v, A0, S0):
    """q, k, v in the kernel's layout and the float32 start weights and momenta (None: gd)."""
    q, k, v = _rows_layout(q, k, v)
    weights = tuple(A_j.float() for A_j in A0)
    return q, k, v, weights, tuple(S_j.float() for S_j in S0) if spec.optimizer == "momentum" else None


def _state(spec, weights, momenta, A0, S0):
    """The end state in the dtype of the start state."""
    A = tuple(W.to(A_j.dtype) for W, A_j in zip(weights, A0))
    return A, S0 if momenta is None else tuple(S.to(S_j.dtype) for S, S_j in zip(momenta, S0))


def mlp_minibatch_scan(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size):
    """The mini-batch rule (docs/design.md §4) of an MLP memory with retention none / l2, chunk by chunk as
    `ops.minibatch.dual_scan`: q, k, v [B, H, T, D], rates [B, H, T] (θ, δ may be None), A0 = (W_in, W_out),
    S0 their momenta, all [B, H, ...]. Returns o [B, H, T, D], A_end, S_end. Raises `KernelLimit` (`limits`)."""
    if (reason := limits(q, v, spec, chunk_size)) is not None:
        raise KernelLimit(reason)
    q, k, v, weights, momenta = _start(spec, q, k, v, A0, S0)
    outputs = []
    for group in _grouped(spec, q, k, v, *(_float(x) for x in (eta, alpha, theta, delta)), chunk_size):
        decays = group.decays
        ones = torch.ones_like(decays.b)
        point = decays.b if spec.grad_at == "retained" else ones
        rates, ends = _chunk_rates(decays, (point, point), (ones, ones), spec)
        tensors = (group.q, group.k, group.v, rates, decays.mix.float(), ends)
        for q_n, k_n, v_n, rates_n, mix_n, ends_n in zip(*(x.unbind(2) for x in tensors)):
            o, weights, momenta = _apply(spec, q_n, k_n, v_n, rates_n, mix_n, ends_n, weights, momenta)
            outputs.append(o)
    return torch.cat(outputs, dim=2), *_state(spec, weights, momenta, A0, S0)


def mlp_boundary_scan(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size):
    """The boundary rule (`ops/boundary.py`) of an MLP memory with retention lq or kl: each chunk's lag token takes
    the exact step in torch, the rest of the chunk is one `MLPChunk` from the lag token's read-out V0, with the
    read and gradient-point scale c (lq) or the natural inputs of ρ, V0's row means (kl). Same arguments and
    returns as `mlp_minibatch_scan`."""
    if (reason := limits(q, v, spec, chunk_size)) is not None:
        raise KernelLimit(reason)
    q, k, v = _rows_layout(q, k, v)
    eta, alpha, theta, delta = (_float(x) for x in (eta, alpha, theta, delta))
    dtype = A0[0].dtype
    A, S = A0, S0
    outputs = []
    for start, count, length in chunk_groups(q.shape[2], chunk_size):
        group = _Chunks(spec, (q, k, v, eta, alpha, theta, delta), start, count, length)
        for n in range(count):
            o_lag, A, S, (V0, c) = exact_step(spec, group.lag[n], A, S, scaled_readout(spec, A))
            outputs.append(o_lag.to(q.dtype).unsqueeze(2))
            A, S = (tuple(x.to(dtype) for x in state) for state in (A, S))
            if group.after is None:
                continue
            k_n, v_n, decays = group.after[n]
            scales = (torch.ones_like(decays.b),) * 2 if c is None else tuple(c_j.expand_as(decays.b) for c_j in c)
            point = tuple(s * decays.b for s in scales) if spec.grad_at == "retained" else scales
            rho = tuple(V_j.float().mean(-1) for V_j in V0) if spec.retention == "kl" else None
            momenta = tuple(S_j.float() for S_j in S) if spec.optimizer == "momentum" else None
            rates, ends = _chunk_rates(decays, point, scales, spec)
            o, V_last, momenta = _apply(spec, group.q[:, :, n], k_n, v_n, rates, decays.mix.float(), ends,
                                        tuple(V_j.float() for V_j in V0), momenta, rho)
            outputs.append(o)
            A = tuple(A_j.to(dtype) for A_j in _chunk_end(spec, V_last))
            S = S if momenta is None else tuple(S_j.to(dtype) for S_j in momenta)
    return torch.cat(outputs, dim=2), A, S


def limits(q, v, spec, chunk_size):
    """Why this kernel cannot take these inputs, or None: no chunk_size (it computes chunks), a dtype other than
    float32 / bfloat16 / float16, more than `MAX_D` features per head or chunks of more than `MAX_CHUNK` tokens
    (each rounded up to a power of two: what was checked to fit an H100's shared memory)."""
    if chunk_size is None:
        return "chunk_size: the MLP-memory kernel computes chunks of chunk_size tokens, not None (the exact recurrence)"
    if (reason := dtype_limit(q)) is not None:
        return reason
    if dot_block(q.shape[-1]) > MAX_D:
        return (f"q: the MLP-memory kernel takes at most {MAX_D} features per head, not D={q.shape[-1]}; use "
                "backend='torch'")
    if dot_block(chunk_size) > MAX_CHUNK:
        return f"chunk_size: the MLP-memory kernel takes chunks of at most {MAX_CHUNK} tokens, not {chunk_size}"
    return None
