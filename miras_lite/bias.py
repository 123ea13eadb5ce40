"""The attentional-bias axis: the gradient g = ∂ℓ/∂ŷ of the inner loss w.r.t. the memory's prediction ŷ = M(k)
(docs/design.md §2 step 2), and its derivative ∂g/∂e for hand-written backward passes.

Every function works row-wise on the last axis (Dv), so it applies unchanged to one token
([B, H, Dv]) or to a whole chunk ([B, H, C, Dv]). `e = ŷ − v` is the error.
"""

from typing import NamedTuple

import torch


def _inverse_norm(squared_norm):
    # 1/‖e‖ without the inf·0 = NaN that sqrt'(0) would put into the backward pass.
    return torch.rsqrt(squared_norm.clamp_min(torch.finfo(squared_norm.dtype).tiny))


def bias_gradient(spec, e, v, delta=None):
    """g for the spec's bias (docs/design.md §2 step 2); `delta` overrides spec.delta per row ([..., 1]).

    dot:    ℓ = −⟨ŷ, v⟩                    g = −v
    l2:     ℓ = ½‖e‖²                      g = e
    lp:     ℓ = (1/p) Σ |e_j|^p, smoothed  g = e ⊙ (e² + ε)^{(p−2)/2}
    huber:  coord    g = clamp(e, −δ, δ)
            norm     g = e if ‖e‖ ≤ δ else δ e/‖e‖
            mixture  g = e if ‖e‖ ≤ δ else δ e/√(e² + ε)      (Yaad)
    robust: g = e + Δ e/√(‖e‖² + ε)
    """
    if spec.bias == "dot":
        return -v
    if spec.bias == "l2":
        return e
    if spec.bias == "lp":
        return e * (e.square() + spec.eps).pow((spec.p - 2.0) / 2.0)
    if spec.bias == "robust":
        return e + spec.robust_delta * e * torch.rsqrt(e.square().sum(-1, keepdim=True) + spec.eps)
    delta = spec.delta if delta is None else delta
    if spec.huber_mode == "coord":
        return torch.clamp(e, -delta, delta)
    squared_norm = e.square().sum(-1, keepdim=True)
    if spec.huber_mode == "norm":
        outer = delta * e * _inverse_norm(squared_norm)
    else:
        outer = delta * e * torch.rsqrt(e.square() + spec.eps)
    return torch.where(squared_norm <= delta**2, e, outer)


class Linearisation(NamedTuple):
    """∂g/∂e = diag(a) + s·e eᵀ per row (a None: identity; s None: diagonal); ∂g/∂δ = h (per-row δ)."""

    a: torch.Tensor | None
    s: torch.Tensor | None
    h: torch.Tensor | None


def bias_linearisation(spec, e, delta=None, delta_grad=False):
    """The exact derivative of `bias_gradient` (not for dot, whose g = −v does not depend on e).

    l2:     a = 1
    lp:     a = (e² + ε)^{(p−2)/2} + (p−2) e² (e² + ε)^{(p−4)/2} = (e² + ε)^{(p−4)/2} ((p−1) e² + ε)
    huber:  coord    a = [|e| ≤ δ],  h = sign(e)·[|e| > δ]
            norm     inside (‖e‖ ≤ δ) a = 1; outside a = δ/‖e‖, s = −δ/‖e‖³, h = e/‖e‖
            mixture  inside a = 1; outside a = δ ε (e² + ε)^{−3/2}, h = e/√(e² + ε)
    robust: a = 1 + Δ r, s = −Δ r³, r = (‖e‖² + ε)^{−1/2}
    (coord forms h only when `delta_grad`.)
    """
    if spec.bias == "l2":
        return Linearisation(None, None, None)
    if spec.bias == "lp":
        square = e.square()
        power = (square + spec.eps).pow_((spec.p - 4.0) / 2.0)
        return Linearisation(square.mul_(spec.p - 1.0).add_(spec.eps).mul_(power), None, None)
    if spec.bias == "robust":
        r = torch.rsqrt(e.square().sum(-1, keepdim=True) + spec.eps)
        return Linearisation(1.0 + spec.robust_delta * r, -spec.robust_delta * r.pow(3), None)
    delta = spec.delta if delta is None else delta
    if spec.huber_mode == "coord":
        h = (e > delta).to(e.dtype) - (e < -delta).to(e.dtype) if delta_grad else None
        return Linearisation((e.abs() <= delta).to(e.dtype), None, h)
    squared_norm = e.square().sum(-1, keepdim=True)
    inside = squared_norm <= delta**2
    if spec.huber_mode == "norm":
        r = _inverse_norm(squared_norm)
        outer = Linearisation(delta * r, -delta * r.pow(3), e * r)
    else:
        r = torch.rsqrt(e.square() + spec.eps)
        outer = Linearisation(delta * spec.eps * r.pow(3), None, e * r)
    one, zero = e.new_ones(()), e.new_zeros(())
    s = None if outer.s is None else torch.where(inside, zero, outer.s)
    return Linearisation(torch.where(inside, one, outer.a), s, torch.where(inside, zero, outer.h))


def linearisation_vjp(lin, e, dg):
    """de = J_φᵀ dg = a ⊙ dg + s e (e·dg)  (J is symmetric)."""
    de = dg if lin.a is None else lin.a * dg
    if lin.s is not None:
        de = de + lin.s * e * (e * dg).sum(-1, keepdim=True)
    return de
