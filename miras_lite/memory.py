"""The memory-architecture axis: what the memory predicts and how its loss gradient factorises (docs/design.md §1, §3).

A memory is a tuple of weight matrices. Each is only ever used through a *matmul* u ↦ u·W, so the
same code runs a memory whose weights are explicit tensors (the exact recurrence) and one whose
weights are implicit sums of rank-one updates (the chunked dual form).

The gradient of the inner loss w.r.t. every weight matrix is a sum of outer products
G_j = x_j ⊗ δ_j (input row ⊗ output-gradient row); `backward` returns those factors. That
factorisation is what makes the chunked dual form possible.

    linear:  M(x) = x W                                       G = x ⊗ g
    mlp:     M(x) = x + LN(GELU(x W_in) W_out)                 G_out = a ⊗ δz,  G_in = x ⊗ δh
"""

import math

import torch
from torch.autograd.function import once_differentiable

LAYER_NORM_EPS = 1e-5


def row_matmul(u, W, scale=None):
    """u·(c W) for rows u [..., Din] and W [..., Din, Dout]; W may carry one extra axis of per-row weights. The
    scale c ([..., 1] over W's batch axes, or None for 1) multiplies the product, so c W is never formed."""
    if W.dim() == u.dim() + 1:
        out = (u.unsqueeze(-2) @ W).squeeze(-2)
        return out if scale is None else scale * out
    out = u @ W
    return out if scale is None else scale.unsqueeze(-1) * out


def weight_matmuls(weights, scales=None):
    """Matmuls u ↦ u·(c_j W_j) for explicit weights and optional per-matrix scales c_j ([..., 1])."""
    scales = (None,) * len(weights) if scales is None else scales
    return tuple((lambda u, W=W, c=c: row_matmul(u, W, c)) for W, c in zip(weights, scales))


def transposed_matmul(weights, scales=None):
    """u ↦ u·(c W_last)ᵀ: the MLP's backward needs it at the gradient point."""
    return lambda u: row_matmul(u, weights[-1].transpose(-1, -2), None if scales is None else scales[-1])


def outer(x, d):
    """x ⊗ d for rows x [..., Din] and d [..., Dout] → [..., Din, Dout]."""
    return x.unsqueeze(-1) * d.unsqueeze(-2)


def forward(memory, x, matmuls):
    """Prediction M(x) and the cache `backward` needs; `matmuls[j](u)` computes u·W_j."""
    if memory == "linear":
        (matmul,) = matmuls
        return matmul(x), (x,)
    matmul_in, matmul_out = matmuls
    h = matmul_in(x)
    a = torch.nn.functional.gelu(h)
    z = matmul_out(a)
    # one fused LayerNorm (forward and backward kernels) that also returns what its backward needs
    normed, mean, inv_std = torch.native_layer_norm(z, z.shape[-1:], None, None, LAYER_NORM_EPS)
    return x + normed, (x, h, a, z, mean, inv_std)


class GeluDerivative(torch.autograd.Function):
    """u ⊙ GELU'(h), the MLP memory's backward through its GELU, with a first-order backward written out:

        GELU'(h) = Φ(h) + h φ(h),   GELU''(h) = φ(h) (2 − h²),
        ∂/∂u = ḡ ⊙ GELU'(h),   ∂/∂h = ḡ ⊙ u ⊙ GELU''(h).

    The chunked forms differentiate the inner gradient, so this runs once per chunk in every backward pass;
    autograd's own formula for it takes twice as many passes over the [C, E·D] activations. Not itself
    differentiable (`once_differentiable`).
    """

    @staticmethod
    def forward(ctx, u, h):
        ctx.save_for_backward(u, h)
        return torch.ops.aten.gelu_backward(u, h)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        u, h = ctx.saved_tensors
        squared = h.square()
        pdf = squared.mul(-0.5).exp_().mul_(1 / math.sqrt(2 * math.pi))
        grad_h = squared.neg_().add_(2).mul_(pdf).mul_(grad).mul_(u)
        return torch.ops.aten.gelu_backward(grad, h), grad_h


def backward(memory, cache, g, matmul_out_transposed=None):
    """Factors (inputs, output_grads) with ∂ℓ/∂W_j = inputs[j] ⊗ output_grads[j], given g = ∂ℓ/∂M(x).

    For the MLP, `matmul_out_transposed(u)` computes u·W_outᵀ at the gradient point.
    """
    if memory == "linear":
        return cache, (g,)
    x, h, a, z, mean, inv_std = cache
    # dz = (1/σ)(g − mean(g) − n·mean(g ⊙ n)) with n the normalised z; dh = (dz W_outᵀ) ⊙ GELU'(h)
    dz = torch.ops.aten.native_layer_norm_backward(g, z, z.shape[-1:], mean, inv_std, None, None,
                                                    [True, False, False])[0]
    dh = GeluDerivative.apply(matmul_out_transposed(dz), h)
    return (x, a), (dh, dz)


def fittable_value(memory, k, v):
    """The value a layer writes for the key k: v itself for a linear memory. The MLP memory's branch ends in a
    LayerNorm without gain, so M(k) = k + LN(·) can only reach k plus a zero-mean vector of norm √D; its value
    is k + LN(v), a target it can fit exactly (reading it back with `branch_read` gives LN(v))."""
    if memory == "linear":
        return v
    return k + torch.nn.functional.layer_norm(v, v.shape[-1:], eps=LAYER_NORM_EPS)


def branch_read(memory, q, o):
    """What a layer reads from o = M(q): o for a linear memory, the branch M(q) − q of an MLP memory (its
    residual path only returns the query)."""
    return o if memory == "linear" else o - q


def mlp_initial_state(heads, dim, expansion=4, dtype=torch.float32, device=None, seed=0):
    """Deterministic default MLP memory (W_in [H, D, E·D], W_out [H, E·D, D]), used when a scan gets none.

    Zero weights would be a fixed point of the inner optimiser (every gradient vanishes), so the
    default is a scaled Gaussian drawn from a fixed seed: W_in ~ N(0, 1/D), W_out ~ N(0, 1/(E·D)).
    """
    generator = torch.Generator().manual_seed(seed)
    hidden = expansion * dim
    w_in = torch.randn(heads, dim, hidden, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    w_out = torch.randn(heads, hidden, dim, generator=generator, dtype=torch.float64) / math.sqrt(hidden)
    return w_in.to(dtype=dtype, device=device), w_out.to(dtype=dtype, device=device)
