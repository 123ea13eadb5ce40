"""Attentional biases: the gradient g = ∂ℓ/∂ŷ of the inner loss w.r.t. the memory's prediction ŷ = M(k).

Every function works row-wise on the last axis (Dv), so it applies unchanged to one token
([B, H, Dv]) or to a whole chunk ([B, H, C, Dv]). `e = ŷ − v` is the error.
"""

import torch


def _inverse_norm(squared_norm):
    # 1/‖e‖ without the inf·0 = NaN that sqrt'(0) would put into the backward pass.
    return torch.rsqrt(squared_norm.clamp_min(torch.finfo(squared_norm.dtype).tiny))


def bias_gradient(spec, e, v, delta=None):
    """g for the spec's bias (DESIGN §2 step 2); `delta` overrides spec.delta per row ([..., 1]).

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
