"""Slow, independent reference recurrences for `miras_lite.memory_scan`.

Written straight from docs/design.md §2-4, for tests only:

* plain python loops over batch, head and token, plain torch ops on small matrices;
* the MLP-memory gradient is taken with `torch.autograd.grad` on a tiny per-token graph (with
  ``create_graph=True`` so the reference itself stays differentiable), independent of any manual
  backprop in the library;
* it reads `MemorySpec` fields only; it does not import library internals (the one exception is the
  public `miras_lite.mlp_initial_state`, used only when an MLP memory is given no initial state).

Both scans return ``(o, A, S, W)`` in the contract shapes (linear: ``[B,H,Dk,Dv]``; mlp: tuples
``([B,H,D,E*D], [B,H,E*D,D])``).  With ``return_history=True`` a fifth item is returned: the read-out
memory after every token, ``[B,T,H,...]`` (a tuple for mlp), from which snapshots can be taken.
"""

from __future__ import annotations

import math

import torch

LN_EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# Building blocks (each one a line of docs/design.md)
# ----------------------------------------------------------------------------------------------


def gelu_exact(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def layer_norm_no_affine(z):
    mu = z.mean()
    var = ((z - mu) ** 2).mean()  # biased variance
    return (z - mu) / torch.sqrt(var + LN_EPS)


def readout(A, spec):
    """N(A) for one parameter matrix (linear: [Dk,Dv]; mlp: one weight matrix)."""
    if spec.retention == "lq":
        qn = (A.abs() ** spec.q).sum() ** (1.0 / spec.q)  # q-norm over the whole matrix
        # max(‖A‖_q, eps)^(q-2); the python branch keeps the reference differentiable at A = 0
        denom = qn ** (spec.q - 2.0) if float(qn.detach()) > spec.eps else torch.tensor(spec.eps, dtype=A.dtype) ** (spec.q - 2.0)
        return A / denom
    if spec.retention == "kl":
        # softmax over the key/input axis (dim -2): each output column lies on a simplex scaled by c
        z = A - A.detach().amax(dim=-2, keepdim=True)
        ez = torch.exp(z)
        return spec.simplex_scale * ez / ez.sum(dim=-2, keepdim=True)
    return A


def threshold(A, spec):
    """E(A): the elastic soft threshold S_γ, identity for every other retention."""
    if spec.retention == "elastic":
        return torch.sign(A) * torch.relu(A.abs() - spec.gamma)
    return A


def N(params, spec):
    return tuple(readout(A, spec) for A in params)


def E(params, spec):
    return tuple(threshold(A, spec) for A in params)


def predict(params, x, spec):
    """M(x; params) for one row vector x."""
    if spec.memory == "linear":
        (W,) = params
        return x @ W
    W_in, W_out = params
    return x + layer_norm_no_affine(gelu_exact(x @ W_in) @ W_out)


def bias_grad(e, v, spec, delta=None):
    """g = ∂ℓ/∂prediction as a function of the error e = pred − v (docs/design.md §2 step 2).

    `delta` (optional) replaces spec.delta for the huber bias (a per-token threshold δ_t)."""
    eps = spec.eps
    if spec.bias == "dot":
        return -v
    if spec.bias == "l2":
        return e
    if spec.bias == "lp":
        return e * (e * e + eps) ** ((spec.p - 2.0) / 2.0)
    if spec.bias == "huber":
        d = spec.delta if delta is None else delta
        nrm = torch.sqrt((e * e).sum())
        if spec.huber_mode == "coord":
            return torch.minimum(torch.maximum(e, -d * torch.ones_like(e)), d * torch.ones_like(e))
        if spec.huber_mode == "norm":
            return e if float(nrm.detach()) <= float(d) else d * e / nrm
        if spec.huber_mode == "mixture":
            return e if float(nrm.detach()) <= float(d) else d * e / torch.sqrt(e * e + eps)
        raise ValueError(spec.huber_mode)
    if spec.bias == "robust":
        return e + spec.robust_delta * e / torch.sqrt((e * e).sum() + eps)
    raise ValueError(spec.bias)


def memory_gradient(P, k, v, spec, delta=None):
    """(G, e): G = ∇_params ℓ(M(k; P), v) (a tuple like P) and the error e at P."""
    if spec.memory == "linear":
        (W,) = P
        e = k @ W - v
        g = bias_grad(e, v, spec, delta)
        return (torch.outer(k, g),), e
    with torch.enable_grad():
        Pg = tuple(p if p.requires_grad else p.detach().requires_grad_(True) for p in P)
        pred = predict(Pg, k, spec)
        e = pred - v
        g = bias_grad(e, v, spec, delta)
        G = torch.autograd.grad(pred, Pg, grad_outputs=g, create_graph=True)
    return tuple(G), e


def optimizer_step(P, S_prev, k, v, eta, theta, spec, delta=None):
    """(U, S_new) of docs/design.md §2 step 4 with the gradient taken at P."""
    if spec.optimizer == "implicit":
        (W,) = P
        e = k @ W - v
        U = -(eta / (1.0 + eta * (k @ k))) * torch.outer(k, e)
        return (U,), S_prev
    G, _ = memory_gradient(P, k, v, spec, delta)
    if spec.optimizer == "gd":
        return tuple(-eta * g for g in G), S_prev
    if spec.optimizer == "momentum":
        S_new = tuple(theta * s - eta * g for s, g in zip(S_prev, G))
        return S_new, S_new
    raise ValueError(spec.optimizer)


# ----------------------------------------------------------------------------------------------
# Input normalisation
# ----------------------------------------------------------------------------------------------


def _rates(x, B, T, H, like):
    if x is None:
        return None
    if not torch.is_tensor(x):
        x = torch.tensor(float(x), dtype=like.dtype)
    if x.dim() == 0:
        x = x.expand(B, T, H)
    assert x.shape == (B, T, H), x.shape
    return x


def _shapes(spec, Dk, Dv):
    if spec.memory == "linear":
        return ((Dk, Dv),)
    assert Dk == Dv, "mlp memory needs Dk == Dv"
    D, E_ = Dk, spec.expansion
    return ((D, E_ * D), (E_ * D, D))


def _per_bh(x, b, h):
    """x is [H, ...] (shared by the batch) or [B, H, ...]."""
    return x[b, h] if x.dim() == 4 else x[h]


def _initial(initial_state, spec, B, H, Dk, Dv, like):
    """Per-(b,h) accessors for the initial accumulator and momentum, as tuples of matrices."""
    shapes = _shapes(spec, Dk, Dv)
    S0 = None
    if initial_state is None:
        A0 = None
    elif hasattr(initial_state, "A"):
        A0, S0 = initial_state.A, getattr(initial_state, "S", None)
    else:
        A0 = initial_state
    if A0 is None and spec.memory == "mlp":
        import miras_lite  # public API only: the documented deterministic default init

        A0 = miras_lite.mlp_initial_state(H, Dk, spec.expansion, dtype=like.dtype, device=like.device)
    if torch.is_tensor(A0):
        A0 = (A0,)
    if torch.is_tensor(S0):
        S0 = (S0,)

    def A_of(b, h):
        if A0 is None:
            return tuple(torch.zeros(s, dtype=like.dtype) for s in shapes)
        return tuple(_per_bh(a, b, h) for a in A0)

    def S_of(b, h):
        if S0 is None or spec.optimizer != "momentum":
            return tuple(torch.zeros(s, dtype=like.dtype) for s in shapes)
        return tuple(_per_bh(s, b, h) for s in S0)

    return A_of, S_of


def _assemble(per_bh, B, H):
    """per_bh[b][h] is a tuple of tensors -> tuple of [B,H,...] tensors."""
    n = len(per_bh[0][0])
    return tuple(torch.stack([torch.stack([per_bh[b][h][i] for h in range(H)]) for b in range(B)]) for i in range(n))


def _assemble_history(hist, B, H):
    """hist[b][h] is a list over t of tuples -> tuple of [B,T,H,...] tensors."""
    n = len(hist[0][0][0])
    T = len(hist[0][0])
    return tuple(
        torch.stack(
            [torch.stack([torch.stack([hist[b][h][t][i] for h in range(H)]) for t in range(T)]) for b in range(B)]
        )
        for i in range(n)
    )


def _prepare(q, v, eta, alpha, theta, delta, spec, initial_state):
    """Shapes, per-token rates as [B, T, H] and the initial-state accessors every reference scan starts from."""
    B, T, H, Dk = q.shape
    rates = (_rates(eta, B, T, H, q), _rates(alpha, B, T, H, q),
             _rates(theta, B, T, H, q) if spec.optimizer == "momentum" else None, _rates(delta, B, T, H, q))
    return (B, T, H, *rates, *_initial(initial_state, spec, B, H, Dk, v.shape[-1], q))


def _finish(spec, o, As, Ss, Ws, hist, B, H, return_history):
    A, S, W = _assemble(As, B, H), _assemble(Ss, B, H), _assemble(Ws, B, H)
    if spec.memory == "linear":
        A, S, W = A[0], S[0], W[0]
    out = (o, A, S, W)
    if return_history:
        Hs = _assemble_history(hist, B, H)
        out = out + ((Hs[0] if spec.memory == "linear" else Hs),)
    return out


# ----------------------------------------------------------------------------------------------
# Exact recurrence (docs/design.md §2-3)
# ----------------------------------------------------------------------------------------------


def reference_scan(q, k, v, eta, alpha, theta, spec, initial_state=None, return_history=False, delta=None):
    B, T, H, eta, alpha, theta, delta, A_of, S_of = _prepare(q, v, eta, alpha, theta, delta, spec, initial_state)

    o_rows, As, Ss, Ws, hist = ([[None] * H for _ in range(B)] for _ in range(5))
    for b in range(B):
        for h in range(H):
            A, S = A_of(b, h), S_of(b, h)
            outs, hh = [], []
            for t in range(T):
                kt, vt, qt = k[b, t, h], v[b, t, h], q[b, t, h]
                et, at = eta[b, t, h], alpha[b, t, h]
                th = theta[b, t, h] if theta is not None else None
                # 1. gradient point
                if spec.grad_at == "previous":
                    P = N(A, spec)
                else:
                    P = N(tuple(at * a for a in A), spec)
                # 2-4. bias gradient and optimiser step
                U, S = optimizer_step(P, S, kt, vt, et, th, spec, None if delta is None else delta[b, t, h])
                # 5. retention
                A = E(tuple(at * a + u for a, u in zip(A, U)), spec)
                W = N(A, spec)
                # 6. read after write
                outs.append(predict(W, qt, spec))
                hh.append(W)
            o_rows[b][h] = torch.stack(outs)  # [T, Dv]
            As[b][h], Ss[b][h], Ws[b][h], hist[b][h] = A, S, N(A, spec), hh
    o = torch.stack([torch.stack([o_rows[b][h] for h in range(H)], dim=1) for b in range(B)])
    return _finish(spec, o, As, Ss, Ws, hist, B, H, return_history)


# ----------------------------------------------------------------------------------------------
# Mini-batch (chunked) semantics (docs/design.md §4), as a slow token loop
# ----------------------------------------------------------------------------------------------


def reference_minibatch_scan(q, k, v, eta, alpha, theta, spec, initial_state=None, chunk_size=1,
                             return_history=False, delta=None):
    assert isinstance(chunk_size, int) and chunk_size >= 1
    B, T, H, eta, alpha, theta, delta, A_of, S_of = _prepare(q, v, eta, alpha, theta, delta, spec, initial_state)
    C = chunk_size

    o_rows, As, Ss, Ws, hist = ([[None] * H for _ in range(B)] for _ in range(5))
    for b in range(B):
        for h in range(H):
            A, S = A_of(b, h), S_of(b, h)  # state at chunk boundaries
            outs, hh = [], []
            for t0 in range(0, T, C):
                A0 = A
                At = A0  # the un-thresholded running accumulator Ã
                bt = None  # running product of alphas inside the chunk
                for t in range(t0, min(t0 + C, T)):
                    kt, vt, qt = k[b, t, h], v[b, t, h], q[b, t, h]
                    et, at = eta[b, t, h], alpha[b, t, h]
                    th = theta[b, t, h] if theta is not None else None
                    bt = at if bt is None else bt * at
                    if spec.grad_at == "previous":
                        P = N(A0, spec)
                    else:
                        P = N(tuple(bt * a for a in A0), spec)
                    U, S = optimizer_step(P, S, kt, vt, et, th, spec, None if delta is None else delta[b, t, h])
                    At = tuple(at * a + u for a, u in zip(At, U))
                    W = N(E(At, spec), spec)
                    outs.append(predict(W, qt, spec))
                    hh.append(W)
                A = E(At, spec)
            o_rows[b][h] = torch.stack(outs)
            As[b][h], Ss[b][h], Ws[b][h], hist[b][h] = A, S, N(A, spec), hh
    o = torch.stack([torch.stack([o_rows[b][h] for h in range(H)], dim=1) for b in range(B)])
    return _finish(spec, o, As, Ss, Ws, hist, B, H, return_history)


# ----------------------------------------------------------------------------------------------
# Test-data helpers
# ----------------------------------------------------------------------------------------------


def spec_needs_alpha_one(spec):
    return spec.retention == "none"


def random_inputs(spec, B=2, T=6, H=2, Dk=3, Dv=4, seed=0, dtype=torch.float64, init=False,
                  init_momentum=False, shared_init=False, k_scale=None):
    """q, k, v, eta, alpha, theta and (optionally) a random initial state for `spec`.

    Returns a dict with keys q, k, v, eta, alpha, theta, initial_state (None, a tensor / tuple, or a
    simple object with .A and .S when init_momentum).
    """
    if spec.memory == "mlp":
        Dv = Dk
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale

    def ru(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype)

    ks = k_scale if k_scale is not None else 1.0 / math.sqrt(Dk)
    q = rn(B, T, H, Dk, scale=1.0 / math.sqrt(Dk))
    k = rn(B, T, H, Dk, scale=ks)
    v = rn(B, T, H, Dv)
    eta = ru(0.1, 0.5, B, T, H)
    alpha = torch.ones(B, T, H, dtype=dtype) if spec.retention == "none" else ru(0.8, 1.0, B, T, H)
    theta = ru(0.05, 0.9, B, T, H) if spec.optimizer == "momentum" else None
    state = None
    if init or init_momentum:
        lead = (H,) if shared_init else (B, H)
        shapes = _shapes(spec, Dk, Dv)
        A0 = tuple(rn(*lead, *s, scale=1.0 / math.sqrt(s[0])) for s in shapes)
        if init_momentum:
            S0 = tuple(rn(*lead, *s, scale=0.1 / math.sqrt(s[0])) for s in shapes)
            if spec.memory == "linear":
                state = _State(A0[0], S0[0])
            else:
                state = _State(A0, S0)
        else:
            state = A0[0] if spec.memory == "linear" else A0
    return dict(q=q, k=k, v=v, eta=eta, alpha=alpha, theta=theta, initial_state=state)


class _State:
    """A duck-typed stand-in for MemoryState (fields A and S) for passing initial states."""

    def __init__(self, A, S):
        self.A, self.S = A, S


# ----------------------------------------------------------------------------------------------
# Glue for comparing with the library (public API only)
# ----------------------------------------------------------------------------------------------


def impl_state(state):
    """Turn a `random_inputs` initial state into what `memory_scan` takes (MemoryState for A+S)."""
    if isinstance(state, _State):
        import miras_lite as ml

        return ml.MemoryState(A=state.A, S=state.S, W=None)
    return state


def as_tuple(x):
    return (x,) if torch.is_tensor(x) else tuple(x)


def assert_close(actual, expected, rtol=1e-6, atol=1e-8, what=""):
    """Compare tensors or tuples of tensors (detached) with a relative tolerance."""
    actual, expected = as_tuple(actual), as_tuple(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} vs {len(expected)} tensors"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what}[{i}]: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(a.detach(), e.detach().to(a.dtype), rtol=rtol, atol=atol,
                                   msg=lambda m, i=i: f"{what}[{i}]: {m}")


# ----------------------------------------------------------------------------------------------
# The boundary chunk rule (docs/design.md §4, chunk_rule="boundary"), as a slow token loop
# ----------------------------------------------------------------------------------------------


def lq_denominator(A, spec):
    """max(‖A‖_q, ε)^{q−2} of one matrix (the python branch keeps it differentiable at A = 0)."""
    qn = (A.abs() ** spec.q).sum() ** (1.0 / spec.q)
    return qn ** (spec.q - 2.0) if float(qn.detach()) > spec.eps else torch.tensor(spec.eps, dtype=A.dtype) ** (spec.q - 2.0)


def reference_boundary_scan(q, k, v, eta, alpha, theta, spec, initial_state=None, chunk_size=1,
                            return_history=False, delta=None):
    """Retention lq or kl: each chunk's first token takes the exact step; the rest of the chunk runs linearly
    from what it left, V0, read with one scale c: lq V0 = A_lag, c = 1/max(‖A_lag‖_q, ε)^{q−2}, and the chunk
    ends at the accumulator; kl V0 = c_s·softmax(A_lag), c = 1, every gradient G taken as ρ ⊙ (G − ρᵀG/c_s)
    with ρ the row means of V0, and the chunk ends in logits, log(max(V, c_s·ε)/c_s). Any other retention: the
    mini-batch rule."""
    if spec.retention not in ("lq", "kl"):
        return reference_minibatch_scan(q, k, v, eta, alpha, theta, spec, initial_state, chunk_size, return_history,
                                        delta)
    B, T, H, eta, alpha, theta, delta, A_of, S_of = _prepare(q, v, eta, alpha, theta, delta, spec, initial_state)
    C = chunk_size
    o_rows, As, Ss, Ws, hist = ([[None] * H for _ in range(B)] for _ in range(5))
    for b in range(B):
        for h in range(H):
            A, S = A_of(b, h), S_of(b, h)
            outs, hh = [], []
            for t0 in range(0, T, C):
                tokens = range(t0, min(t0 + C, T))

                def step(P, t, S, rows=None):
                    """The optimiser's step; with rows ρ (kl after the lag token) every gradient G becomes the
                    KL step's first-order form at weights with identical columns ρ: ρ ⊙ (G − ρᵀG / c_s)."""
                    th = theta[b, t, h] if theta is not None else None
                    d = None if delta is None else delta[b, t, h]
                    if rows is None:
                        return optimizer_step(P, S, k[b, t, h], v[b, t, h], eta[b, t, h], th, spec, d)
                    zeros = tuple(torch.zeros_like(p) for p in P)
                    U, _ = optimizer_step(P, zeros, k[b, t, h], v[b, t, h], eta[b, t, h], 0.0, spec, d)  # −η G
                    U = tuple(r[:, None] * (u - (r @ u)[None, :] / spec.simplex_scale) for r, u in zip(rows, U))
                    if spec.optimizer == "momentum":
                        S = tuple(th * s + u for s, u in zip(S, U))
                        U = S
                    return U, S

                # the lag token, exactly
                t = tokens[0]
                at = alpha[b, t, h]
                P = N(A, spec) if spec.grad_at == "previous" else N(tuple(at * a for a in A), spec)
                U, S = step(P, t, S)
                A = tuple(at * a + u for a, u in zip(A, U))
                W = N(A, spec)
                outs.append(predict(W, q[b, t, h], spec))
                hh.append(W)
                if len(tokens) == 1:
                    continue
                # ... then linearly from V0, read with the scale c
                if spec.retention == "lq":
                    V0, c, rows = A, tuple(1.0 / lq_denominator(a, spec) for a in A), None
                else:
                    V0, c, rows = W, (1.0,) * len(A), tuple(w.mean(1) for w in W)
                V, bt = V0, None
                for t in tokens[1:]:
                    at = alpha[b, t, h]
                    bt = at if bt is None else bt * at
                    scale = 1.0 if spec.grad_at == "previous" else bt
                    U, S = step(tuple(scale * ci * v0 for ci, v0 in zip(c, V0)), t, S, rows)
                    V = tuple(at * x + u for x, u in zip(V, U))
                    W = tuple(ci * x for ci, x in zip(c, V))
                    outs.append(predict(W, q[b, t, h], spec))
                    hh.append(W)
                if spec.retention == "lq":
                    A = V
                else:
                    A = tuple(torch.log(torch.clamp(x / spec.simplex_scale, min=spec.eps)) for x in V)
            o_rows[b][h] = torch.stack(outs)
            As[b][h], Ss[b][h], Ws[b][h], hist[b][h] = A, S, N(A, spec), hh
    o = torch.stack([torch.stack([o_rows[b][h] for h in range(H)], dim=1) for b in range(B)])
    return _finish(spec, o, As, Ss, Ws, hist, B, H, return_history)
