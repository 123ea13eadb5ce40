"""The exact recurrence of a linear memory (docs/design.md §2) as one fused Triton scan, forward and backward.

Torch twin: `miras_lite/ops/recurrent.py` (the token loop). One program per (batch, head), and per block of
value columns where the spec allows, keeps the accumulator A (and the momentum S) on chip for the whole
sequence. Per token t:

    P   = W_{t−1} (grad_at="previous")  or  N(α_t A_{t−1}) ("retained")
    e   = k_t P − v_t,    g = φ(e) (the bias gradient; the implicit step uses g = e)
    η̃   = η_t,  or Longhorn's η_t / (1 + η_t‖k_t‖²) for the implicit step
    U   = −η̃ k_t ⊗ g,  or with momentum  S_t = θ_t S_{t−1} − η̃ k_t ⊗ g,  U = S_t
    A_t = S_γ(α_t A_{t−1} + U) (elastic) or α_t A_{t−1} + U,   W_t = N(A_t),   o_t = q_t W_t

S_γ is the elastic soft threshold, N the lq / kl read-out (identity otherwise). Everything is computed in
float32 (float64 for float64 inputs) whatever the input dtype.

Columns of the state evolve independently unless a norm couples them: ‖e‖ over Dv (huber norm / mixture,
robust) or the whole-matrix q-norm (lq). Separable specs split Dv into blocks of `MAX_VALUE_BLOCK`
columns; the others hold the whole [Dk, Dv] state in one program (blocks padded to powers of two).

Backward (reverse time): the forward stores (A, S) every `checkpoint_every` tokens; the backward reruns
each segment from its checkpoint into a per-program scratch buffer of `checkpoint_every` states, then
walks it backwards carrying dA, dS and dW (the adjoint of W_{t−1} through the next gradient point).
Memory for the backward: the inputs, T/C checkpoints of (A, S) per (batch, head) in float32, and a scratch of
C states per (batch, head) while it runs: O(T·D + T/C·Dk·Dv + C·Dk·Dv). dq, dk and the rate gradients are
summed over value blocks by torch afterwards (one partial row per block keeps the result deterministic).
"""

import torch
import triton
import triton.language as tl

from . import KernelLimit
from .common import (dtype_limit, huber_delta_slope, implicit_rate, implicit_rate_slopes, load_block, needs_grad,
                     power, separable_bias_gradient, separable_bias_slope, sign, store_block, tuning_configs)

CHECKPOINT_EVERY = 64
MAX_VALUE_BLOCK = 32
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
AUTOTUNE_KEY = ["BK", "BV", "BIAS", "HUBER_MODE", "RETENTION", "OPTIMIZER", "GRAD_AT"]
WARP_CONFIGS = [triton.Config({}, num_warps=w) for w in (4, 8, 16, 2)]  # 16: a whole 128×128 state


def column_separable(spec):
    """True when the columns of the state evolve independently (no norm over Dv or over the matrix), so that
    blocks of value columns can run in separate programs."""
    row_norm = spec.bias == "robust" or (spec.bias == "huber" and spec.huber_mode != "coord")
    return not row_norm and spec.retention != "lq"


# ------------------------------------------------------------------------------------ math helpers


@triton.jit
def _q_norm(A, Q_EXP: tl.constexpr, EPS: tl.constexpr):
    """max(‖A‖_q, ε) over the whole matrix."""
    return tl.maximum(power(tl.sum(tl.sum(power(tl.abs(A), Q_EXP), 1), 0), 1.0 / Q_EXP), EPS)


@triton.jit
def _readout(A, rows_ok, RETENTION: tl.constexpr, Q_EXP: tl.constexpr, SCALE: tl.constexpr, EPS: tl.constexpr):
    """W = N(A): A / max(‖A‖_q, ε)^{q−2} (lq), c·softmax over the key axis (kl), A otherwise."""
    if RETENTION == "lq":
        W = A * power(_q_norm(A, Q_EXP, EPS), 2.0 - Q_EXP)
    elif RETENTION == "kl":
        logits = tl.where(rows_ok[:, None], A, float("-inf"))
        z = tl.exp(logits - tl.max(logits, 0)[None, :])
        W = SCALE * z / tl.sum(z, 0)[None, :]
    else:
        W = A
    return W


@triton.jit
def _readout_vjp(A, W, dW, RETENTION: tl.constexpr, Q_EXP: tl.constexpr, SCALE: tl.constexpr, EPS: tl.constexpr):
    """dA = N'(A)ᵀ dW.

    lq (n = ‖A‖_q > ε):  dW n^{2−q} + (2−q) n^{2−2q} ⟨dW, A⟩ sign(A)|A|^{q−1}   (n ≤ ε: dW ε^{2−q})
    kl:                  W ⊙ (dW − Σ_keys (dW ⊙ W) / c)
    """
    if RETENTION == "lq":
        n = _q_norm(A, Q_EXP, EPS)
        along_norm = tl.where(n > EPS, (2.0 - Q_EXP) * power(n, 2.0 - 2.0 * Q_EXP) * tl.sum(tl.sum(dW * A, 1), 0), 0.0)
        dA = dW * power(n, 2.0 - Q_EXP) + along_norm * sign(A) * power(tl.abs(A), Q_EXP - 1.0)
    elif RETENTION == "kl":
        dA = W * (dW - tl.sum(dW * W, 0)[None, :] / SCALE)
    else:
        dA = dW
    return dA


@triton.jit
def _soft_threshold(Z, GAMMA: tl.constexpr):
    """S_γ(Z) = sign(Z)·max(|Z| − γ, 0)."""
    gamma = tl.full([], GAMMA, Z.dtype)  # a constexpr float would enter the arithmetic as float32
    return tl.where(tl.abs(Z) > gamma, Z - gamma * sign(Z), 0.0)


@triton.jit
def _bias_gradient(e, v, delta, BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, P_EXP: tl.constexpr,
                   ROBUST_DELTA: tl.constexpr, EPS: tl.constexpr):
    """g = φ(e) of docs/design.md §2 step 2 (norms over the value axis)."""
    if BIAS == "robust":
        g = e + ROBUST_DELTA * e * tl.rsqrt(tl.sum(e * e, 0) + EPS)
    elif BIAS == "huber" and HUBER_MODE != "coord":
        squared_norm = tl.sum(e * e, 0)
        if HUBER_MODE == "norm":
            # the floor only guards the branch that is not taken (outside means ‖e‖ > δ > 0)
            tail = delta * e * tl.rsqrt(tl.maximum(squared_norm, 1e-30))
        else:
            tail = delta * e * tl.rsqrt(e * e + EPS)
        g = tl.where(squared_norm <= delta * delta, e, tail)
    else:
        g = separable_bias_gradient(e, v, delta, P_EXP, EPS, BIAS)
    return g


@triton.jit
def _bias_vjp(e, v, delta, dg, BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, P_EXP: tl.constexpr,
              ROBUST_DELTA: tl.constexpr, EPS: tl.constexpr):
    """(de, dv, dδ) = the adjoint of g = φ(e, v, δ) applied to dg (dv: only φ's direct use of v)."""
    ddelta = tl.zeros([], e.dtype)
    dv = tl.zeros_like(e)
    if BIAS == "dot":
        de = tl.zeros_like(e)
        dv = -dg
    elif BIAS == "robust":
        r2 = tl.sum(e * e, 0) + EPS
        de = dg + ROBUST_DELTA * tl.rsqrt(r2) * (dg - e * tl.sum(e * dg, 0) / r2)
    elif BIAS == "huber" and HUBER_MODE == "norm":
        squared_norm = tl.sum(e * e, 0)
        outside = squared_norm > delta * delta
        inv_norm = tl.rsqrt(tl.maximum(squared_norm, 1e-30))
        e_dot_dg = tl.sum(e * dg, 0)
        de = tl.where(outside, delta * inv_norm * (dg - e * e_dot_dg * inv_norm * inv_norm), dg)
        ddelta = tl.where(outside, e_dot_dg * inv_norm, 0.0)
    elif BIAS == "huber" and HUBER_MODE == "mixture":
        outside = tl.sum(e * e, 0) > delta * delta
        inv_smooth = tl.rsqrt(e * e + EPS)
        de = tl.where(outside, dg * delta * EPS * inv_smooth * inv_smooth * inv_smooth, dg)
        ddelta = tl.where(outside, tl.sum(dg * e * inv_smooth, 0), 0.0)
    else:  # l2, lp, huber coord: coordinate by coordinate
        de = dg * separable_bias_slope(e, delta, P_EXP, EPS, BIAS)
        if BIAS == "huber":
            ddelta = tl.sum(dg * huber_delta_slope(e, delta), 0)
    return de, dv, ddelta


@triton.jit
def _step_size(eta, k, OPTIMIZER: tl.constexpr):
    """η̃ = η, or η / (1 + η‖k‖²) for the implicit step."""
    if OPTIMIZER == "implicit":
        eta_eff = implicit_rate(eta, tl.sum(k * k, 0))
    else:
        eta_eff = eta
    return eta_eff


@triton.jit
def _step(A, S, W, k, v, eta, alpha, theta, delta, rows_ok, cols_ok,
          BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, RETENTION: tl.constexpr, OPTIMIZER: tl.constexpr,
          GRAD_AT: tl.constexpr, P_EXP: tl.constexpr, Q_EXP: tl.constexpr, ROBUST_DELTA: tl.constexpr,
          GAMMA: tl.constexpr, SCALE: tl.constexpr, EPS: tl.constexpr):
    """One token: (A_t, S_t, W_t) from (A_{t−1}, S_{t−1}, W_{t−1}), plus the gradient point P, e and g."""
    if GRAD_AT == "previous":
        P = W
    else:
        P = _readout(alpha * A, rows_ok, RETENTION, Q_EXP, SCALE, EPS)
    e = tl.where(cols_ok, tl.sum(k[:, None] * P, 0) - v, 0.0)
    if OPTIMIZER == "implicit":
        g = e
    else:
        g = _bias_gradient(e, v, delta, BIAS, HUBER_MODE, P_EXP, ROBUST_DELTA, EPS)
    U = -_step_size(eta, k, OPTIMIZER) * (k[:, None] * g[None, :])
    if OPTIMIZER == "momentum":
        S = theta * S + U
        U = S
    A = alpha * A + U
    if RETENTION == "elastic":
        A = _soft_threshold(A, GAMMA)
    return A, S, _readout(A, rows_ok, RETENTION, Q_EXP, SCALE, EPS), P, e, g


@triton.jit
def _token_adjoint(A_prev, S_prev, q, k, v, do, eta, alpha, theta, delta, dA, dS, dW, rows_ok, cols_ok,
                   BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, RETENTION: tl.constexpr, OPTIMIZER: tl.constexpr,
                   GRAD_AT: tl.constexpr, P_EXP: tl.constexpr, Q_EXP: tl.constexpr, ROBUST_DELTA: tl.constexpr,
                   GAMMA: tl.constexpr, SCALE: tl.constexpr, EPS: tl.constexpr):
    """Token t backwards: recompute the step from (A_{t−1}, S_{t−1}), then carry the adjoints (dA, dS, dW) of
    (A_t, S_t, W_t) to those of (A_{t−1}, S_{t−1}, W_{t−1}), with this token's input and rate gradients."""
    W_prev = _readout(A_prev, rows_ok, RETENTION, Q_EXP, SCALE, EPS)
    A, _, W, P, e, g = _step(A_prev, S_prev, W_prev, k, v, eta, alpha, theta, delta, rows_ok, cols_ok, BIAS,
                             HUBER_MODE, RETENTION, OPTIMIZER, GRAD_AT, P_EXP, Q_EXP, ROBUST_DELTA, GAMMA, SCALE, EPS)
    # o_t = q_t W_t
    dq = tl.sum(W * do[None, :], 1)
    dW += q[:, None] * do[None, :]
    # W_t = N(A_t),  A_t = S_γ(Z) (elastic) or Z
    dZ = dA + _readout_vjp(A, W, dW, RETENTION, Q_EXP, SCALE, EPS)
    if RETENTION == "elastic":
        dZ = tl.where(A != 0, dZ, 0.0)
    # Z = α A_{t−1} + U,  U = −η̃ k ⊗ g  (momentum: S_t = θ S_{t−1} − η̃ k ⊗ g, U = S_t)
    dU = dZ
    dtheta = tl.zeros([], dU.dtype)
    if OPTIMIZER == "momentum":
        dU = dS + dZ
        dtheta = tl.sum(tl.sum(dU * S_prev, 1), 0)
        dS = theta * dU
    eta_eff = _step_size(eta, k, OPTIMIZER)
    k_dU = tl.sum(k[:, None] * dU, 0)
    d_eta_eff = -tl.sum(k_dU * g, 0)
    dk = -eta_eff * tl.sum(dU * g[None, :], 1)
    if OPTIMIZER == "implicit":  # η̃ = η / (1 + η‖k‖²), g = e
        slope_eta, slope_norm = implicit_rate_slopes(eta, tl.sum(k * k, 0), eta_eff)
        deta = d_eta_eff * slope_eta
        dk += 2.0 * d_eta_eff * slope_norm * k
        de, dv, ddelta = -eta_eff * k_dU, tl.zeros_like(k_dU), tl.zeros_like(d_eta_eff)
    else:
        deta = d_eta_eff
        de, dv, ddelta = _bias_vjp(e, v, delta, -eta_eff * k_dU, BIAS, HUBER_MODE, P_EXP, ROBUST_DELTA, EPS)
    # e = k P − v
    dv -= de
    dk += tl.sum(P * de[None, :], 1)
    dP = k[:, None] * de[None, :]
    d_decayed = dZ
    if GRAD_AT == "previous":
        dW = dP
    else:
        d_decayed += _readout_vjp(alpha * A_prev, P, dP, RETENTION, Q_EXP, SCALE, EPS)
        dW = tl.zeros_like(dP)
    dalpha = tl.sum(tl.sum(d_decayed * A_prev, 1), 0)
    return alpha * d_decayed, dS, dW, dq, dk, dv, deta, dalpha, dtheta, ddelta


# ------------------------------------------------------------------------------------------ kernels


@triton.jit
def _load_token(q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, theta_ptr, delta_ptr, head, T, t, Dk, Dv,
                rows, cols, rows_ok, cols_ok, ACC: tl.constexpr, OPTIMIZER: tl.constexpr, HAS_DELTA: tl.constexpr,
                DELTA: tl.constexpr):
    """q_t, k_t, v_t and the rates (η_t, α_t, θ_t, δ_t) of token t of `head`, in the accumulation dtype."""
    token = head * T + t
    q = tl.load(q_ptr + token * Dk + rows, mask=rows_ok, other=0.0).to(ACC)
    k = tl.load(k_ptr + token * Dk + rows, mask=rows_ok, other=0.0).to(ACC)
    v = tl.load(v_ptr + token * Dv + cols, mask=cols_ok, other=0.0).to(ACC)
    eta = tl.load(eta_ptr + token).to(ACC)
    alpha = tl.load(alpha_ptr + token).to(ACC)
    theta = tl.zeros([], ACC)
    if OPTIMIZER == "momentum":
        theta = tl.load(theta_ptr + token).to(ACC)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + token).to(ACC)
    else:
        delta = tl.full([], DELTA, ACC)
    return q, k, v, eta, alpha, theta, delta


@triton.autotune(configs=tuning_configs(WARP_CONFIGS), key=AUTOTUNE_KEY)
@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, theta_ptr, delta_ptr, A0_ptr, S0_ptr,
                    o_ptr, A_ptr, S_ptr, checkpoint_A_ptr, checkpoint_S_ptr, T, Dk, Dv, checkpoint_every,
                    BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, SAVE_CHECKPOINTS: tl.constexpr,
                    HAS_DELTA: tl.constexpr, BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, RETENTION: tl.constexpr,
                    OPTIMIZER: tl.constexpr, GRAD_AT: tl.constexpr, P_EXP: tl.constexpr, Q_EXP: tl.constexpr,
                    DELTA: tl.constexpr, ROBUST_DELTA: tl.constexpr, GAMMA: tl.constexpr, SCALE: tl.constexpr,
                    EPS: tl.constexpr):
    value_block, head = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BK)
    cols = value_block * BV + tl.arange(0, BV)
    rows_ok, cols_ok = rows < Dk, cols < Dv
    state = head * Dk * Dv  # this head's [Dk, Dv] state in A0, S0, A, S
    A = load_block(A0_ptr + state, Dv, rows, rows_ok, cols, Dv).to(ACC)
    S = tl.zeros([BK, BV], ACC)
    if OPTIMIZER == "momentum":
        S = load_block(S0_ptr + state, Dv, rows, rows_ok, cols, Dv).to(ACC)
    W = _readout(A, rows_ok, RETENTION, Q_EXP, SCALE, EPS)
    segments = tl.cdiv(T, checkpoint_every)
    for segment in range(segments):
        if SAVE_CHECKPOINTS:
            checkpoint = (head * segments + segment) * Dk * Dv
            store_block(checkpoint_A_ptr + checkpoint, Dv, rows, rows_ok, cols, Dv, A)
            if OPTIMIZER == "momentum":
                store_block(checkpoint_S_ptr + checkpoint, Dv, rows, rows_ok, cols, Dv, S)
        for t in range(segment * checkpoint_every, tl.minimum(segment * checkpoint_every + checkpoint_every, T)):
            q, k, v, eta, alpha, theta, delta = _load_token(
                q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, theta_ptr, delta_ptr, head, T, t, Dk, Dv,
                rows, cols, rows_ok, cols_ok, ACC, OPTIMIZER, HAS_DELTA, DELTA)
            A, S, W, _, _, _ = _step(A, S, W, k, v, eta, alpha, theta, delta, rows_ok, cols_ok, BIAS, HUBER_MODE,
                                     RETENTION, OPTIMIZER, GRAD_AT, P_EXP, Q_EXP, ROBUST_DELTA, GAMMA, SCALE, EPS)
            tl.store(o_ptr + (head * T + t) * Dv + cols, tl.sum(q[:, None] * W, 0), mask=cols_ok)
    store_block(A_ptr + state, Dv, rows, rows_ok, cols, Dv, A)
    if OPTIMIZER == "momentum":
        store_block(S_ptr + state, Dv, rows, rows_ok, cols, Dv, S)


@triton.autotune(configs=tuning_configs(WARP_CONFIGS), key=AUTOTUNE_KEY)
@triton.jit
def _backward_kernel(q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, theta_ptr, delta_ptr, A0_ptr,
                     checkpoint_A_ptr, checkpoint_S_ptr, scratch_A_ptr, scratch_S_ptr, do_ptr, dA_end_ptr, dS_end_ptr,
                     dq_ptr, dk_ptr, dv_ptr, deta_ptr, dalpha_ptr, dtheta_ptr, ddelta_ptr, dA0_ptr, dS0_ptr,
                     T, Dk, Dv, checkpoint_every, heads,
                     BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr,
                     HAS_DELTA: tl.constexpr, BIAS: tl.constexpr, HUBER_MODE: tl.constexpr, RETENTION: tl.constexpr,
                     OPTIMIZER: tl.constexpr, GRAD_AT: tl.constexpr, P_EXP: tl.constexpr, Q_EXP: tl.constexpr,
                     DELTA: tl.constexpr, ROBUST_DELTA: tl.constexpr, GAMMA: tl.constexpr, SCALE: tl.constexpr,
                     EPS: tl.constexpr):
    """Reverse-time adjoints. dq, dk and the per-token rate gradients are partial sums over this program's
    value columns, written to row `value_block` of their buffers (the caller sums the rows)."""
    value_block, head = tl.program_id(0), tl.program_id(1).to(tl.int64)
    partial_head = value_block * heads + head
    rows = tl.arange(0, BK)
    cols = value_block * BV + tl.arange(0, BV)
    rows_ok, cols_ok = rows < Dk, cols < Dv
    state = head * Dk * Dv  # this head's [Dk, Dv] state in A0, dA_end, dS_end, dA0, dS0
    scratch_base = head * checkpoint_every * Dk * Dv
    dA = load_block(dA_end_ptr + state, Dv, rows, rows_ok, cols, Dv).to(ACC)
    dS = tl.zeros([BK, BV], ACC)
    if OPTIMIZER == "momentum":
        dS = load_block(dS_end_ptr + state, Dv, rows, rows_ok, cols, Dv).to(ACC)
    dW = tl.zeros([BK, BV], ACC)  # adjoint of W_{t−1} through token t's gradient point
    segments = tl.cdiv(T, checkpoint_every)
    for segment_from_end in range(segments):
        segment = segments - 1 - segment_from_end
        start = segment * checkpoint_every
        length = tl.minimum(checkpoint_every, T - start)
        checkpoint = (head * segments + segment) * Dk * Dv
        A = load_block(checkpoint_A_ptr + checkpoint, Dv, rows, rows_ok, cols, Dv).to(ACC)
        S = tl.zeros([BK, BV], ACC)
        if OPTIMIZER == "momentum":
            S = load_block(checkpoint_S_ptr + checkpoint, Dv, rows, rows_ok, cols, Dv).to(ACC)
        W = _readout(A, rows_ok, RETENTION, Q_EXP, SCALE, EPS)
        tl.debug_barrier()  # the previous segment's reads of the scratch are done
        for i in range(length):  # rerun the segment, keeping (A_{t−1}, S_{t−1}) of every token
            scratch = scratch_base + i * Dk * Dv
            store_block(scratch_A_ptr + scratch, Dv, rows, rows_ok, cols, Dv, A)
            if OPTIMIZER == "momentum":
                store_block(scratch_S_ptr + scratch, Dv, rows, rows_ok, cols, Dv, S)
            q, k, v, eta, alpha, theta, delta = _load_token(
                q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, theta_ptr, delta_ptr, head, T, start + i, Dk, Dv,
                rows, cols, rows_ok, cols_ok, ACC, OPTIMIZER, HAS_DELTA, DELTA)
            A, S, W, _, _, _ = _step(A, S, W, k, v, eta, alpha, theta, delta, rows_ok, cols_ok, BIAS, HUBER_MODE,
                                     RETENTION, OPTIMIZER, GRAD_AT, P_EXP, Q_EXP, ROBUST_DELTA, GAMMA, SCALE, EPS)
        tl.debug_barrier()
        for i_from_end in range(length):
            i = length - 1 - i_from_end
            t = start + i
            scratch = scratch_base + i * Dk * Dv
            A_prev = load_block(scratch_A_ptr + scratch, Dv, rows, rows_ok, cols, Dv).to(ACC)
            S_prev = tl.zeros([BK, BV], ACC)
            if OPTIMIZER == "momentum":
                S_prev = load_block(scratch_S_ptr + scratch, Dv, rows, rows_ok, cols, Dv).to(ACC)
            q, k, v, eta, alpha, theta, delta = _load_token(
                q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, theta_ptr, delta_ptr, head, T, t, Dk, Dv,
                rows, cols, rows_ok, cols_ok, ACC, OPTIMIZER, HAS_DELTA, DELTA)
            do = tl.load(do_ptr + (head * T + t) * Dv + cols, mask=cols_ok, other=0.0).to(ACC)
            dA, dS, dW, dq, dk, dv, deta, dalpha, dtheta, ddelta = _token_adjoint(
                A_prev, S_prev, q, k, v, do, eta, alpha, theta, delta, dA, dS, dW, rows_ok, cols_ok, BIAS, HUBER_MODE,
                RETENTION, OPTIMIZER, GRAD_AT, P_EXP, Q_EXP, ROBUST_DELTA, GAMMA, SCALE, EPS)
            tl.store(dq_ptr + (partial_head * T + t) * Dk + rows, dq, mask=rows_ok)
            tl.store(dk_ptr + (partial_head * T + t) * Dk + rows, dk, mask=rows_ok)
            tl.store(dv_ptr + (head * T + t) * Dv + cols, dv, mask=cols_ok)
            tl.store(deta_ptr + partial_head * T + t, deta)
            tl.store(dalpha_ptr + partial_head * T + t, dalpha)
            if OPTIMIZER == "momentum":
                tl.store(dtheta_ptr + partial_head * T + t, dtheta)
            if HAS_DELTA:
                tl.store(ddelta_ptr + partial_head * T + t, ddelta)
    A0 = load_block(A0_ptr + state, Dv, rows, rows_ok, cols, Dv).to(ACC)
    dA += _readout_vjp(A0, _readout(A0, rows_ok, RETENTION, Q_EXP, SCALE, EPS), dW, RETENTION, Q_EXP, SCALE, EPS)
    store_block(dA0_ptr + state, Dv, rows, rows_ok, cols, Dv, dA)
    if OPTIMIZER == "momentum":
        store_block(dS0_ptr + state, Dv, rows, rows_ok, cols, Dv, dS)


# ---------------------------------------------------------------------------------- host functions


def _spec_constants(spec):
    return dict(BIAS=spec.bias, HUBER_MODE=spec.huber_mode, RETENTION=spec.retention, OPTIMIZER=spec.optimizer,
                GRAD_AT=spec.grad_at, P_EXP=float(spec.p), Q_EXP=float(spec.q), DELTA=float(spec.delta),
                ROBUST_DELTA=float(spec.robust_delta), GAMMA=float(spec.gamma), SCALE=float(spec.simplex_scale),
                EPS=float(spec.eps))


def _blocks(spec, Dk, Dv, value_block):
    """(BK, BV, number of value blocks): BV spans all of Dv unless the spec is column-separable."""
    BK, BV = triton.next_power_of_2(Dk), triton.next_power_of_2(Dv)
    if column_separable(spec):
        BV = min(BV, triton.next_power_of_2(value_block))
    return BK, BV, triton.cdiv(Dv, BV)


def _accumulation(dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _summed(partials, like):
    """The gradient of `like` from per-value-block partial sums (None where `like` is not an input)."""
    return None if like is None else partials.sum(0).to(like.dtype)


def forward(q, k, v, eta, alpha, theta, delta, A0, S0, spec, checkpoint_every, value_block, save):
    """o [B, H, T, Dv], the end state A, S and the checkpoints of (A, S) every `checkpoint_every` tokens
    (float32 or float64; a placeholder unless `save`). Inputs contiguous, θ and δ may be None."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    BK, BV, value_blocks = _blocks(spec, Dk, Dv, value_block)
    acc, acc_dtype = _accumulation(q.dtype)
    segments = triton.cdiv(T, checkpoint_every)
    o = q.new_empty(B, H, T, Dv)
    A, S = torch.empty_like(A0), torch.zeros_like(A0)
    states = 2 if spec.optimizer == "momentum" else 1  # checkpoints of (A, S), or of A alone
    checkpoints = A0.new_empty((states, B, H, segments, Dk, Dv) if save else (states, 1), dtype=acc_dtype)
    _forward_kernel[(value_blocks, B * H)](
        q, k, v, eta, alpha, theta if theta is not None else eta, delta if delta is not None else eta, A0, S0,
        o, A, S, checkpoints[0], checkpoints[-1], T, Dk, Dv, checkpoint_every, BK=BK, BV=BV, ACC=acc,
        SAVE_CHECKPOINTS=save, HAS_DELTA=delta is not None, **_spec_constants(spec))
    return o, A, S, checkpoints


def backward(q, k, v, eta, alpha, theta, delta, A0, checkpoints, do, dA_end, dS_end, spec, checkpoint_every,
             value_block):
    """Gradients (dq, dk, dv, dη, dα, dθ or None, dδ or None, dA0, dS0) in the inputs' dtypes."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    BK, BV, value_blocks = _blocks(spec, Dk, Dv, value_block)
    acc, acc_dtype = _accumulation(q.dtype)
    scratch = q.new_empty(checkpoints.shape[0], B, H, checkpoint_every, Dk, Dv, dtype=acc_dtype)
    dq, dk = (q.new_empty(value_blocks, B, H, T, Dk, dtype=acc_dtype) for _ in range(2))
    deta, dalpha, dtheta, ddelta = (q.new_zeros(value_blocks, B, H, T, dtype=acc_dtype) for _ in range(4))
    dv = torch.empty_like(v, dtype=acc_dtype)
    dA0, dS0 = torch.empty_like(A0, dtype=acc_dtype), torch.zeros_like(A0, dtype=acc_dtype)
    _backward_kernel[(value_blocks, B * H)](
        q, k, v, eta, alpha, theta if theta is not None else eta, delta if delta is not None else eta, A0,
        checkpoints[0], checkpoints[-1], scratch[0], scratch[-1], do, dA_end, dS_end,
        dq, dk, dv, deta, dalpha, dtheta, ddelta, dA0, dS0, T, Dk, Dv, checkpoint_every, B * H,
        BK=BK, BV=BV, ACC=acc, HAS_DELTA=delta is not None, **_spec_constants(spec))
    return (_summed(dq, q), _summed(dk, k), dv.to(v.dtype), _summed(deta, eta), _summed(dalpha, alpha),
            _summed(dtheta, theta), _summed(ddelta, delta), dA0.to(A0.dtype), dS0.to(A0.dtype))


class RecurrentScan(torch.autograd.Function):
    """(o, A_T, S_T) of the exact recurrence; inputs head-major and contiguous (see `recurrent_scan`).
    `save`: keep the checkpoints (and inputs) for a backward pass."""

    @staticmethod
    def forward(ctx, q, k, v, eta, alpha, theta, delta, A0, S0, spec, checkpoint_every, value_block, save):
        o, A, S, checkpoints = forward(q, k, v, eta, alpha, theta, delta, A0, S0, spec, checkpoint_every,
                                       value_block, save)
        if save:
            ctx.save_for_backward(q, k, v, eta, alpha, theta, delta, A0, checkpoints)
            ctx.config = (spec, checkpoint_every, value_block)
        return o, A, S

    @staticmethod
    def backward(ctx, do, dA_end, dS_end):
        q, k, v, eta, alpha, theta, delta, A0, checkpoints = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dA_end = torch.zeros_like(A0) if dA_end is None else dA_end.contiguous()
        dS_end = torch.zeros_like(A0) if dS_end is None else dS_end.contiguous()
        grads = backward(q, k, v, eta, alpha, theta, delta, A0, checkpoints, do, dA_end, dS_end, *ctx.config)
        return (*grads, None, None, None, None)


def limits(q, v, spec, chunk_size):
    """Why this kernel cannot take these inputs, or None: a dtype other than float64, float32, bfloat16 or
    float16. (Any Dk, Dv and T; chunk_size is not read: the scan is exact.)"""
    return dtype_limit(q, DTYPES)


def recurrent_scan(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size, *,
                   checkpoint_every=CHECKPOINT_EVERY, value_block=MAX_VALUE_BLOCK):
    """The exact recurrence (docs/design.md §2) of a linear memory over q, k [B, H, T, Dk], v [B, H, T, Dv],
    rates η, α [B, H, T] (θ: momentum only, δ: per-token Huber threshold or None for spec.delta), from
    A0, S0 [B, H, Dk, Dv]. chunk_size is not read (the scan is exact).

    Returns o [B, H, T, Dv] (q's dtype) and the final A, S (A0's dtype; S is zeros without momentum).
    `checkpoint_every` sets the backward's recomputation segment, `value_block` the widest value-column
    block of a column-separable spec (a power of two). Raises `KernelLimit` with the reason of `limits`.
    """
    if (reason := limits(q, v, spec, chunk_size)) is not None:
        raise KernelLimit(reason)
    theta = theta.contiguous() if spec.optimizer == "momentum" else None
    delta = delta.contiguous() if delta is not None else None
    tensors = [x.contiguous() for x in (q, k, v, eta, alpha)] + [theta, delta, A0.contiguous(), S0.contiguous()]
    return RecurrentScan.apply(*tensors, spec, checkpoint_every, value_block, needs_grad(*tensors))
