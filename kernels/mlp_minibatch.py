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

The backward kernel recomputes the chunk and walks these lines in reverse, second derivatives included (LN's
backward differentiated w.r.t. Z, GELU''(h) = φ(h)(2 − h²)): `_inner_gradient_backward` is the derivation. It
returns the gradient of every input, rates and mix included; the host's torch ops that form the rates from α, θ
and the chunk's scales carry it on to them.

Every tile is held whole (C, D and F rounded up to powers of two ≥ 16, masked), so the kernel takes D·F ≤
`MAX_WEIGHT_TILE` (the shared memory of an H100) and chunks of at most `MAX_CHUNK` tokens; inputs may be float32,
bfloat16 or float16, and everything is computed in float32.
"""

import math

import torch
import triton
import triton.language as tl

from miras_lite import optimizer
from miras_lite.memory import LAYER_NORM_EPS
from miras_lite.ops.boundary import _chunk_end, _Chunks
from miras_lite.ops.minibatch import chunk_decays, chunk_groups
from miras_lite.ops.recurrent import exact_step
from miras_lite.retention import scaled_readout

from . import KernelLimit
from .common import (DOT_PRECISION, dot, dot_block, dtype_limit, huber_delta_slope, load_block, needs_grad, power,
                     separable_bias_gradient, separable_bias_slope, store_block, tuning_configs)

# D·F (each rounded up to a power of two) of one weight matrix whose kernels fit an H100's 227 KiB of shared memory,
# compiled for sm_90 (C = 16, momentum): D = 32 at E = 4 takes 64 KiB forward and 144 KiB backward; D = 64 at E = 4
# would take 256 KiB and 544 KiB.
MAX_WEIGHT_TILE = 32 * 128
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
def _load_weights(Wp, Up, SWp, SUp, i_bh, D, F, d_cols, d_ok, f_cols, f_ok, MOMENTUM: tl.constexpr):
    """(W, U, S_W, S_U) of this head; without momentum S_W, S_U are W, U (never read)."""
    W = _load_rows(Wp + i_bh * D * F, F, d_cols, d_ok, f_cols, F)
    U = _load_rows(Up + i_bh * F * D, D, f_cols, f_ok, d_cols, D)
    SW, SU = W, U
    if MOMENTUM:
        SW = _load_rows(SWp + i_bh * D * F, F, d_cols, d_ok, f_cols, F)
        SU = _load_rows(SUp + i_bh * F * D, D, f_cols, f_ok, d_cols, D)
    return W, U, SW, SU


@triton.jit
def _tiles(D, F, Cn, BC: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr):
    """(rows, rows_ok, feature cols, ok, hidden cols, ok) of one chunk."""
    rows, d_cols, f_cols = tl.arange(0, BC), tl.arange(0, BD), tl.arange(0, BF)
    return rows, rows < Cn, d_cols, d_cols < D, f_cols, f_cols < F


@triton.jit
def _load_chunk(q, k, v, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, i_bh, qkv_sbh, Cn, D, F, rows, rows_ok, d_cols,
                d_ok, f_cols, f_ok, MOMENTUM: tl.constexpr):
    """What a program reads besides the rates: ((Q, K, V), M, (W, U, S_W, S_U), (ρ_W, ρ_U), (b_C, γ_C, Θ))."""
    Q = _load_rows(q + i_bh * qkv_sbh, D, rows, rows_ok, d_cols, D)
    K = _load_rows(k + i_bh * qkv_sbh, D, rows, rows_ok, d_cols, D)
    V = _load_rows(v + i_bh * qkv_sbh, D, rows, rows_ok, d_cols, D)
    M = _load_rows(mix + i_bh * Cn * Cn, Cn, rows, rows_ok, rows, Cn)
    weights = _load_weights(Wp, Up, SWp, SUp, i_bh, D, F, d_cols, d_ok, f_cols, f_ok, MOMENTUM)
    rho_w = tl.load(rho_wp + i_bh * D + d_cols, mask=d_ok, other=0.0)
    rho_u = tl.load(rho_up + i_bh * F + f_cols, mask=f_ok, other=0.0)
    ends += i_bh * _N_ENDS
    return (Q, K, V), M, weights, (rho_w, rho_u), (tl.load(ends), tl.load(ends + 1), tl.load(ends + 2))


@triton.jit
def _inner_gradient(K, V, W, U, gradient_w, gradient_u, delta, d_ok, D, p, eps, robust,
                    BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, PRECISION: tl.constexpr):
    """The forward and inner gradient at the gradient point: (K W, H, A U, N, 1/σ, E, G, D_Z, D_Z Uᵀ, D_H)."""
    KW = dot(K, W, tl.float32, PRECISION)
    H = gradient_w[:, None] * KW
    AU = dot(_gelu(H), U, tl.float32, PRECISION)
    N, inv_std = _layer_norm(gradient_u[:, None] * AU, d_ok, D)
    E = K + N - V
    G = _bias_gradient(E, V, delta[:, None], p, eps, robust, BIAS, HUBER_MODE)
    DZ = _layer_norm_backward(G, N, inv_std, d_ok, D)
    DZ_Ut = dot(DZ, tl.trans(U), tl.float32, PRECISION)
    return KW, H, AU, N, inv_std, E, G, DZ, DZ_Ut, gradient_u[:, None] * DZ_Ut * _gelu_slope(H)


@triton.jit
def _update_inputs(K, A, rho_w, rho_u, simplex_scale, NATURAL: tl.constexpr):
    """(X_W, X_U): K and A, or their natural inputs (kl)."""
    if NATURAL:
        return _natural(K, rho_w, simplex_scale), _natural(A, rho_u, simplex_scale)
    return K, A


@triton.jit
def _dual_layer(X_in, W, S, X, scaled_grads, b, gamma, mix, MOMENTUM: tl.constexpr, PRECISION: tl.constexpr):
    """(the bracket b ⊙ (X_in W) + γ ⊙ (X_in S) − ((X_in Xᵀ) ⊙ M) ηD, X_in W, X_in S, X_in Xᵀ)."""
    XW = dot(X_in, W, tl.float32, PRECISION)
    scores = dot(X_in, tl.trans(X), tl.float32, PRECISION)
    bracket = b[:, None] * XW - dot(scores * mix, scaled_grads, tl.float32, PRECISION)
    XS = XW
    if MOMENTUM:
        XS = dot(X_in, S, tl.float32, PRECISION)
        bracket += gamma[:, None] * XS
    return bracket, XW, XS, scores


@triton.jit
def _end_weights(W, S, X, scaled_grads, mix_last, theta_mix_last, b_last, gamma_last, theta_prod_last,
                 MOMENTUM: tl.constexpr, PRECISION: tl.constexpr):
    """(W', S') = (b_C W + γ_C S − Xᵀ (m ⊙ ηD), Θ S − Xᵀ (μ ⊙ ηD)); S' = S without momentum."""
    W_end = b_last * W - dot(tl.trans(X), mix_last[:, None] * scaled_grads, tl.float32, PRECISION)
    S_end = S
    if MOMENTUM:
        W_end += gamma_last * S
        S_end = theta_prod_last * S - dot(tl.trans(X), theta_mix_last[:, None] * scaled_grads, tl.float32, PRECISION)
    return W_end, S_end


# -------------------------------------------------------------------------------------- kernels

_CONFIGS = [triton.Config({}, num_warps=warps, num_stages=stages) for warps in (4, 8) for stages in (1, 2)]
_KEY = ["BC", "BD", "BF", "BIAS", "HUBER_MODE", "MOMENTUM", "NATURAL"]


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _forward_kernel(
    q, k, v, rates, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, o, W_out, U_out, SW_out, SU_out,
    qkv_sbh, o_sbh, Cn, D, F, p, eps, robust, simplex_scale,
    BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, MOMENTUM: tl.constexpr, NATURAL: tl.constexpr,
    PRECISION: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
):
    """One (batch·head) program: the chunk's read O and end weights (module docstring)."""
    i_bh = tl.program_id(0).to(tl.int64)
    rows, rows_ok, d_cols, d_ok, f_cols, f_ok = _tiles(D, F, Cn, BC, BD, BF)
    (Q, K, V), M, (W, U, SW, SU), (rho_w, rho_u), (b_last, gamma_last, theta_prod_last) = _load_chunk(
        q, k, v, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, i_bh, qkv_sbh, Cn, D, F, rows, rows_ok, d_cols, d_ok,
        f_cols, f_ok, MOMENTUM)
    eta, b, gamma, theta_mix_last, gradient_w, gradient_u, read_w, read_u, delta, mix_last = _load_rates(
        rates + i_bh * _N_RATES * Cn, Cn, rows, rows_ok)

    _, H, _, _, _, _, _, DZ, _, DH = _inner_gradient(K, V, W, U, gradient_w, gradient_u, delta, d_ok, D, p, eps,
                                                    robust, BIAS, HUBER_MODE, PRECISION)
    X_w, X_u = _update_inputs(K, _gelu(H), rho_w, rho_u, simplex_scale, NATURAL)
    eta_DH, eta_DZ = eta[:, None] * DH, eta[:, None] * DZ
    bracket_w, _, _, _ = _dual_layer(Q, W, SW, X_w, eta_DH, b, gamma, M, MOMENTUM, PRECISION)
    A_q = _gelu(read_w[:, None] * bracket_w)
    bracket_u, _, _, _ = _dual_layer(A_q, U, SU, X_u, eta_DZ, b, gamma, M, MOMENTUM, PRECISION)
    O = Q + _layer_norm(read_u[:, None] * bracket_u, d_ok, D)[0]
    store_block(o + i_bh * o_sbh, D, rows, rows_ok, d_cols, D, O)

    W_end, SW_end = _end_weights(W, SW, X_w, eta_DH, mix_last, theta_mix_last, b_last, gamma_last, theta_prod_last,
                                 MOMENTUM, PRECISION)
    U_end, SU_end = _end_weights(U, SU, X_u, eta_DZ, mix_last, theta_mix_last, b_last, gamma_last, theta_prod_last,
                                 MOMENTUM, PRECISION)
    store_block(W_out + i_bh * D * F, F, d_cols, d_ok, f_cols, F, W_end)
    store_block(U_out + i_bh * F * D, D, f_cols, f_ok, d_cols, D, U_end)
    if MOMENTUM:
        store_block(SW_out + i_bh * D * F, F, d_cols, d_ok, f_cols, F, SW_end)
        store_block(SU_out + i_bh * F * D, D, f_cols, f_ok, d_cols, D, SU_end)


@triton.jit
def _inner_gradient_backward(K, V, W, U, KW, H, AU, N, inv_std, E, G, DZ, DZ_Ut, DH, eta, gradient_w, gradient_u,
                             delta, d_eta_DH, d_eta_DZ, dX_w, dX_u, rho_w, rho_u, simplex_scale, d_ok, D, p, eps,
                             robust, BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, NATURAL: tl.constexpr,
                             PRECISION: tl.constexpr):
    """Gradients of K, V, W, U, η, r_W, r_U, δ, ρ_W, ρ_U from those of η ⊙ D_H, η ⊙ D_Z and the update inputs.

    D_H = r_U ⊙ T ⊙ GELU'(H) with T = D_Z Uᵀ;  D_Z = LN'(Z)ᵀ G = (1/σ)(G − mean G − N m), m = mean(G ⊙ N), whose
    derivative w.r.t. Z (for an upstream w) is −(1/σ)(mean(w ⊙ D_Z)) N + LN'(Z)ᵀ u,
    u = −(1/σ)(m w + mean(w ⊙ N) G);  then E = K + LN(Z) − V, Z = r_U ⊙ (A U), A = GELU(H), H = r_W ⊙ (K W).
    """
    A = _gelu(H)
    slope = _gelu_slope(H)
    if NATURAL:
        dK, d_rho_w = _natural_backward(K, rho_w, simplex_scale, dX_w)
        dA, d_rho_u = _natural_backward(A, rho_u, simplex_scale, dX_u)
    else:
        dK, dA, d_rho_w, d_rho_u = dX_w, dX_u, tl.sum(dX_w, 0) * 0.0, tl.sum(dX_u, 0) * 0.0
    d_eta = tl.sum(d_eta_DH * DH, 1) + tl.sum(d_eta_DZ * DZ, 1)
    dDH, dDZ = eta[:, None] * d_eta_DH, eta[:, None] * d_eta_DZ
    dT = dDH * gradient_u[:, None] * slope
    dH = dDH * gradient_u[:, None] * DZ_Ut * _gelu_curvature(H)
    d_gradient_u = tl.sum(dDH * DZ_Ut * slope, 1)
    dDZ += dot(dT, U, tl.float32, PRECISION)
    dU = dot(tl.trans(dT), DZ, tl.float32, PRECISION)
    dG = _layer_norm_backward(dDZ, N, inv_std, d_ok, D)
    m = tl.sum(G * N, 1)[:, None] / D
    u = -inv_std[:, None] * (m * dDZ + (tl.sum(dDZ * N, 1)[:, None] / D) * G)
    dZ = (-inv_std * tl.sum(dDZ * DZ, 1) / D)[:, None] * N + _layer_norm_backward(u, N, inv_std, d_ok, D)
    if BIAS == "dot":
        dV = -dG
        d_delta = tl.zeros(d_eta.shape, tl.float32)
    else:
        dE, d_delta = _bias_backward(E, delta[:, None], dG, p, eps, robust, BIAS, HUBER_MODE)
        dK += dE
        dV = -dE
        dZ += _layer_norm_backward(dE, N, inv_std, d_ok, D)
    dA += gradient_u[:, None] * dot(dZ, tl.trans(U), tl.float32, PRECISION)
    dU += dot(tl.trans(A), gradient_u[:, None] * dZ, tl.float32, PRECISION)
    d_gradient_u += tl.sum(dZ * AU, 1)
    dH += dA * slope
    dK += gradient_w[:, None] * dot(dH, tl.trans(W), tl.float32, PRECISION)
    dW = dot(tl.trans(K), gradient_w[:, None] * dH, tl.float32, PRECISION)
    return dK, dV, dW, dU, d_eta, tl.sum(dH * KW, 1), d_gradient_u, d_delta, d_rho_w, d_rho_u


@triton.jit
def _end_weights_backward(W, S, X, scaled_grads, dW_end, dS_end, mix_last, theta_mix_last, b_last, gamma_last,
                          theta_prod_last, MOMENTUM: tl.constexpr, PRECISION: tl.constexpr):
    """From dW', dS' of `_end_weights`: (dW, dS, d(ηD), dX, dm, dμ, d b_C, d γ_C, dΘ) (S terms: momentum only)."""
    X_dW = dot(X, dW_end, tl.float32, PRECISION)
    d_scaled = -mix_last[:, None] * X_dW
    dX = -dot(mix_last[:, None] * scaled_grads, tl.trans(dW_end), tl.float32, PRECISION)
    d_mix_last = -tl.sum(scaled_grads * X_dW, 1)
    d_b_last = tl.sum(tl.sum(W * dW_end, 1), 0)
    dW, dS = b_last * dW_end, dW_end * 0.0
    d_theta_mix_last = d_mix_last * 0.0
    d_gamma_last, d_theta_prod_last = d_b_last * 0.0, d_b_last * 0.0
    if MOMENTUM:
        X_dS = dot(X, dS_end, tl.float32, PRECISION)
        d_scaled -= theta_mix_last[:, None] * X_dS
        dX -= dot(theta_mix_last[:, None] * scaled_grads, tl.trans(dS_end), tl.float32, PRECISION)
        d_theta_mix_last = -tl.sum(scaled_grads * X_dS, 1)
        dS = gamma_last * dW_end + theta_prod_last * dS_end
        d_gamma_last = tl.sum(tl.sum(S * dW_end, 1), 0)
        d_theta_prod_last = tl.sum(tl.sum(S * dS_end, 1), 0)
    return dW, dS, d_scaled, dX, d_mix_last, d_theta_mix_last, d_b_last, d_gamma_last, d_theta_prod_last


@triton.jit
def _dual_layer_backward(X_in, W, S, X, scaled_grads, scores, XW, XS, Y, b, gamma, mix,
                         MOMENTUM: tl.constexpr, PRECISION: tl.constexpr):
    """From Y, the gradient of `_dual_layer`'s bracket: (dX_in, dW, dS, d(ηD), dX, dM, db, dγ)."""
    R = dot(Y, tl.trans(scaled_grads), tl.float32, PRECISION)
    dX_in = b[:, None] * dot(Y, tl.trans(W), tl.float32, PRECISION) - dot(R * mix, X, tl.float32, PRECISION)
    dX = -dot(tl.trans(R * mix), X_in, tl.float32, PRECISION)
    dW = dot(tl.trans(X_in), b[:, None] * Y, tl.float32, PRECISION)
    d_scaled = -dot(tl.trans(scores * mix), Y, tl.float32, PRECISION)
    d_b = tl.sum(Y * XW, 1)
    dS, d_gamma = dW * 0.0, d_b * 0.0
    if MOMENTUM:
        dX_in += gamma[:, None] * dot(Y, tl.trans(S), tl.float32, PRECISION)
        dS = dot(tl.trans(X_in), gamma[:, None] * Y, tl.float32, PRECISION)
        d_gamma = tl.sum(Y * XS, 1)
    return dX_in, dW, dS, d_scaled, dX, -R * scores, d_b, d_gamma


@triton.autotune(configs=tuning_configs(_CONFIGS), key=_KEY)
@triton.jit
def _backward_kernel(
    q, k, v, rates, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, dO, dW_endp, dU_endp, dSW_endp, dSU_endp,
    dq, dk, dv, d_rates, d_mix, d_ends, dWp, dUp, dSWp, dSUp, d_rho_wp, d_rho_up,
    qkv_sbh, o_sbh, Cn, D, F, p, eps, robust, simplex_scale,
    BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, MOMENTUM: tl.constexpr, NATURAL: tl.constexpr,
    PRECISION: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
):
    """One (batch·head) program: recompute the chunk, then every input's gradient from dO and the end weights'."""
    i_bh = tl.program_id(0).to(tl.int64)
    rows, rows_ok, d_cols, d_ok, f_cols, f_ok = _tiles(D, F, Cn, BC, BD, BF)
    (Q, K, V), M, (W, U, SW, SU), (rho_w, rho_u), (b_last, gamma_last, theta_prod_last) = _load_chunk(
        q, k, v, mix, ends, Wp, Up, SWp, SUp, rho_wp, rho_up, i_bh, qkv_sbh, Cn, D, F, rows, rows_ok, d_cols, d_ok,
        f_cols, f_ok, MOMENTUM)
    eta, b, gamma, theta_mix_last, gradient_w, gradient_u, read_w, read_u, delta, mix_last = _load_rates(
        rates + i_bh * _N_RATES * Cn, Cn, rows, rows_ok)
    dO_n = _load_rows(dO + i_bh * o_sbh, D, rows, rows_ok, d_cols, D)
    dW_end, dU_end, dSW_end, dSU_end = _load_weights(dW_endp, dU_endp, dSW_endp, dSU_endp, i_bh, D, F, d_cols, d_ok,
                                                     f_cols, f_ok, MOMENTUM)

    # the forward again
    KW, H, AU, N, inv_std, E, G, DZ, DZ_Ut, DH = _inner_gradient(K, V, W, U, gradient_w, gradient_u, delta, d_ok, D,
                                                                 p, eps, robust, BIAS, HUBER_MODE, PRECISION)
    X_w, X_u = _update_inputs(K, _gelu(H), rho_w, rho_u, simplex_scale, NATURAL)
    eta_DH, eta_DZ = eta[:, None] * DH, eta[:, None] * DZ
    bracket_w, QW, QSW, scores_w = _dual_layer(Q, W, SW, X_w, eta_DH, b, gamma, M, MOMENTUM, PRECISION)
    H_q = read_w[:, None] * bracket_w
    A_q = _gelu(H_q)
    bracket_u, AqU, AqSU, scores_u = _dual_layer(A_q, U, SU, X_u, eta_DZ, b, gamma, M, MOMENTUM, PRECISION)
    N_q, inv_std_q = _layer_norm(read_u[:, None] * bracket_u, d_ok, D)

    # the chunk-end weights
    dW, dSW, d_eta_DH, dX_w, d_mix_last, d_theta_mix_last, d_b_last, d_gamma_last, d_theta_prod_last = (
        _end_weights_backward(W, SW, X_w, eta_DH, dW_end, dSW_end, mix_last, theta_mix_last, b_last, gamma_last,
                              theta_prod_last, MOMENTUM, PRECISION))
    dU, dSU, d_eta_DZ, dX_u, d_mix_last_u, d_theta_mix_last_u, d_b_last_u, d_gamma_last_u, d_theta_prod_last_u = (
        _end_weights_backward(U, SU, X_u, eta_DZ, dU_end, dSU_end, mix_last, theta_mix_last, b_last, gamma_last,
                              theta_prod_last, MOMENTUM, PRECISION))
    # the read: O = Q + LN(s_U ⊙ bracket_U(A_q)), A_q = GELU(s_W ⊙ bracket_W(Q))
    dZ_q = _layer_norm_backward(dO_n, N_q, inv_std_q, d_ok, D)
    d_read_u = tl.sum(dZ_q * bracket_u, 1)
    dA_q, dU_read, dSU_read, d_eta_DZ_read, dX_u_read, d_mix_u, d_b, d_gamma = _dual_layer_backward(
        A_q, U, SU, X_u, eta_DZ, scores_u, AqU, AqSU, read_u[:, None] * dZ_q, b, gamma, M, MOMENTUM, PRECISION)
    dH_q = dA_q * _gelu_slope(H_q)
    d_read_w = tl.sum(dH_q * bracket_w, 1)
    dQ, dW_read, dSW_read, d_eta_DH_read, dX_w_read, d_mix_w, d_b_w, d_gamma_w = _dual_layer_backward(
        Q, W, SW, X_w, eta_DH, scores_w, QW, QSW, read_w[:, None] * dH_q, b, gamma, M, MOMENTUM, PRECISION)
    # the inner gradient
    dK, dV, dW_inner, dU_inner, d_eta, d_gradient_w, d_gradient_u, d_delta, d_rho_w, d_rho_u = (
        _inner_gradient_backward(K, V, W, U, KW, H, AU, N, inv_std, E, G, DZ, DZ_Ut, DH, eta, gradient_w,
                                 gradient_u, delta, d_eta_DH + d_eta_DH_read, d_eta_DZ + d_eta_DZ_read,
                                 dX_w + dX_w_read, dX_u + dX_u_read, rho_w, rho_u, simplex_scale, d_ok, D, p, eps,
                                 robust, BIAS, HUBER_MODE, NATURAL, PRECISION))

    row_base = i_bh * Cn * D  # the gradients are [B, H, C, D], contiguous
    store_block(dq + row_base, D, rows, rows_ok, d_cols, D, dQ + dO_n)
    store_block(dk + row_base, D, rows, rows_ok, d_cols, D, dK)
    store_block(dv + row_base, D, rows, rows_ok, d_cols, D, dV)
    d_rates += i_bh * _N_RATES * Cn
    tl.store(d_rates + rows, d_eta, mask=rows_ok)
    tl.store(d_rates + Cn + rows, d_b + d_b_w, mask=rows_ok)
    tl.store(d_rates + 2 * Cn + rows, d_gamma + d_gamma_w, mask=rows_ok)
    tl.store(d_rates + 3 * Cn + rows, d_theta_mix_last + d_theta_mix_last_u, mask=rows_ok)
    tl.store(d_rates + 4 * Cn + rows, d_gradient_w, mask=rows_ok)
    tl.store(d_rates + 5 * Cn + rows, d_gradient_u, mask=rows_ok)
    tl.store(d_rates + 6 * Cn + rows, d_read_w, mask=rows_ok)
    tl.store(d_rates + 7 * Cn + rows, d_read_u, mask=rows_ok)
    tl.store(d_rates + 8 * Cn + rows, d_delta, mask=rows_ok)
    tl.store(d_rates + 9 * Cn + rows, d_mix_last + d_mix_last_u, mask=rows_ok)
    store_block(d_mix + i_bh * Cn * Cn, Cn, rows, rows_ok, rows, Cn, d_mix_u + d_mix_w)
    d_ends += i_bh * _N_ENDS
    tl.store(d_ends, d_b_last + d_b_last_u)
    tl.store(d_ends + 1, d_gamma_last + d_gamma_last_u)
    tl.store(d_ends + 2, d_theta_prod_last + d_theta_prod_last_u)
    store_block(dWp + i_bh * D * F, F, d_cols, d_ok, f_cols, F, dW + dW_read + dW_inner)
    store_block(dUp + i_bh * F * D, D, f_cols, f_ok, d_cols, D, dU + dU_read + dU_inner)
    if MOMENTUM:
        store_block(dSWp + i_bh * D * F, F, d_cols, d_ok, f_cols, F, dSW + dSW_read)
        store_block(dSUp + i_bh * F * D, D, f_cols, f_ok, d_cols, D, dSU + dSU_read)
    if NATURAL:
        tl.store(d_rho_wp + i_bh * D + d_cols, d_rho_w, mask=d_ok)
        tl.store(d_rho_up + i_bh * F + f_cols, d_rho_u, mask=f_ok)


# ---------------------------------------------------------------------------------- host functions


def _blocks(C, D, F):
    return dot_block(C), dot_block(D), dot_block(F)


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
        BC=BC, BD=BD, BF=BF,
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
        BC=BC, BD=BD, BF=BF,
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


def _chunk(spec, q, k, v, decays, weights, momenta, gradient_scales, read_scales, rho=None):
    """`MLPChunk` on one chunk with its `ChunkDecays`: (o, end weights, end momenta)."""
    rates, ends = _chunk_rates(decays, gradient_scales, read_scales, spec)
    out = MLPChunk.apply(q, k, v, rates, decays.mix.float(), ends, *weights, *(momenta or (None, None)),
                         *(rho or (None, None)), spec)
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
    B, H, T, _ = q.shape
    q, k, v, weights, momenta = _start(spec, q, k, v, A0, S0)
    outputs = []
    for start, count, length in chunk_groups(T, chunk_size):
        def chunks(x):
            return None if x is None else x[:, :, start:start + count * length].reshape(B, H, count, length,
                                                                                      *x.shape[3:])

        decays = chunk_decays(spec, None, chunks(k), *(_float(chunks(x)) for x in (eta, alpha, theta, delta)))
        ones = torch.ones_like(decays.b)
        point = decays.b if spec.grad_at == "retained" else ones
        rates, ends = _chunk_rates(decays, (point, point), (ones, ones), spec)
        per_chunk = zip(*(x.unbind(2) for x in (chunks(q), chunks(k), chunks(v), rates, decays.mix.float(), ends)))
        for q_n, k_n, v_n, rates_n, mix_n, ends_n in per_chunk:
            out = MLPChunk.apply(q_n, k_n, v_n, rates_n, mix_n, ends_n, *weights, *(momenta or (None, None)),
                                 None, None, spec)
            outputs.append(out[0])
            weights, momenta = tuple(out[1:3]), (tuple(out[3:5]) if momenta is not None else None)
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
        after = []
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
            o, V_last, momenta = _chunk(spec, group.q[:, :, n], k_n, v_n, decays, tuple(V_j.float() for V_j in V0),
                                        momenta, point, scales, rho)
            outputs.append(o)
            A = tuple(A_j.to(dtype) for A_j in _chunk_end(spec, V_last))
            S = S if momenta is None else tuple(S_j.to(dtype) for S_j in momenta)
    return torch.cat(outputs, dim=2), A, S


def limits(q, v, spec, chunk_size):
    """Why this kernel cannot take these inputs, or None: no chunk_size (it computes chunks), a dtype other than
    float32 / bfloat16 / float16, or weights too large to hold on chip (D·F > MAX_WEIGHT_TILE, each rounded up to a
    power of two)."""
    if chunk_size is None:
        return "chunk_size: the MLP-memory kernel computes chunks of chunk_size tokens, not None (the exact recurrence)"
    if (reason := dtype_limit(q)) is not None:
        return reason
    D = q.shape[-1]
    if dot_block(D) * dot_block(spec.expansion * D) > MAX_WEIGHT_TILE:
        return (f"q: D={D} with expansion {spec.expansion} gives weights of {D}×{spec.expansion * D}, more than the "
                f"MLP-memory kernel holds on chip (D·F ≤ {MAX_WEIGHT_TILE}, e.g. D=32 at expansion 4); use "
                "backend='torch'")
    if dot_block(chunk_size) > MAX_CHUNK:
        return f"chunk_size: the MLP-memory kernel takes chunks of at most {MAX_CHUNK} tokens, not {chunk_size}"
    return None
