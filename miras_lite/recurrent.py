"""The exact recurrence of DESIGN §2-3, one token at a time (`chunk_size=None`).

This is the definition every faster form is tested against, written so each line is one step of
the update. Tensors are head-major: q, k [B, H, T, Dk], v [B, H, T, Dv], rates [B, H, T]; the
memory is a tuple of weight matrices [B, H, Din, Dout] (see `memories.py`).
"""

import torch

from . import memories
from .bias import bias_gradient
from .retention import readout, write_map


def weight_matmuls(weights):
    """Matmuls u ↦ u·W_j for explicit weights."""
    return tuple((lambda u, W=W: memories.row_matmul(u, W)) for W in weights)


def transposed_matmul(weights):
    """u ↦ u·W_lastᵀ: the MLP's backward needs it at the gradient point."""
    return lambda u: memories.row_matmul(u, weights[-1].transpose(-1, -2))


def implicit_step(k, e, eta):
    """Longhorn's closed-form implicit step U = −η/(1 + η‖k‖²) · k ⊗ e (l2 bias, linear memory)."""
    step = eta / (1.0 + eta * k.square().sum(-1))
    return (-step[..., None, None] * memories.outer(k, e),)


def exact_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, snapshot_every=None):
    """Run the memory over T tokens. Returns outputs [B, H, T, Dv], final (A, S) and W snapshots.

    `theta` and `delta` ([B, H, T] or None) are only read by momentum and by the Huber biases.

    Per token t (DESIGN §2):
        P   = N(A_{t−1})                      grad_at="previous"
            = N(α_t A_{t−1})                  grad_at="retained"
        e   = M(k_t; P) − v_t,   g = bias'(e),   G = ∇_P ℓ   (k ⊗ g for a linear memory)
        U   = −η_t G  |  S_t = θ_t S_{t−1} − η_t G, U = S_t  |  implicit step
        A_t = E(α_t A_{t−1} + U),   W_t = N(A_t),   o_t = M(q_t; W_t)
    """
    W = tuple(readout(spec, A_j) for A_j in A)
    outputs, snapshots = [], []
    # Split once: indexing x[:, :, t] per token would make every backward step write a full-size gradient.
    per_token = [x.unbind(2) if x is not None else [None] * q.shape[2] for x in (q, k, v, eta, alpha, theta, delta)]
    for t, (q_t, k_t, v_t, eta_t, alpha_t, theta_t, delta_t) in enumerate(zip(*per_token)):
        decay = alpha_t[..., None, None]
        rate = eta_t[..., None, None]
        P = W if spec.grad_at == "previous" else tuple(readout(spec, decay * A_j) for A_j in A)
        prediction, cache = memories.forward(spec.memory, k_t, weight_matmuls(P))
        e = prediction - v_t
        if spec.optimizer == "implicit":
            U = implicit_step(k_t, e, eta_t)
        else:
            g = bias_gradient(spec, e, v_t, None if delta_t is None else delta_t[..., None])
            inputs, output_grads = memories.backward(spec.memory, cache, g, transposed_matmul(P))
            G = tuple(memories.outer(x, d) for x, d in zip(inputs, output_grads))
            if spec.optimizer == "momentum":
                S = tuple(theta_t[..., None, None] * S_j - rate * G_j for S_j, G_j in zip(S, G))
                U = S
            else:
                U = tuple(-rate * G_j for G_j in G)
        A = tuple(write_map(spec, decay * A_j + U_j) for A_j, U_j in zip(A, U))
        W = tuple(readout(spec, A_j) for A_j in A)
        outputs.append(memories.forward(spec.memory, q_t, weight_matmuls(W))[0])
        if snapshot_every and (t + 1) % snapshot_every == 0:
            snapshots.append(W)
    return torch.stack(outputs, dim=2), A, S, snapshots
