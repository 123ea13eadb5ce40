"""The exact recurrence of docs/design.md §2-3, one token at a time (`chunk_size=None`).

This is the definition every faster form is tested against, written so each line is one step of
the update; its Triton twin is `kernels/recurrent.py`. Tensors are head-major: q, k [B, H, T, Dk],
v [B, H, T, Dv], rates [B, H, T]; the memory is a tuple of weight matrices [B, H, Din, Dout]
(see `miras_lite/memory.py`).
"""

import torch

from .. import memory, optimizer
from ..bias import bias_gradient
from ..retention import scaled_readout, write_map


def exact_step(spec, token, A, S, W):
    """One token of the exact recurrence (`recurrent_scan`): (o_t, A_t, S_t, W_t) from A_{t−1}, S_{t−1} and their
    read-out W_{t−1} = N(A_{t−1}) (a `ReadOut`); token = (q_t, k_t, v_t, η_t, α_t, θ_t, δ_t), each [B, H, ...]."""
    q_t, k_t, v_t, eta_t, alpha_t, theta_t, delta_t = token
    decay = alpha_t[..., None, None]
    P = W if spec.grad_at == "previous" else scaled_readout(spec, tuple(decay * A_j for A_j in A))
    prediction, cache = memory.forward(spec.memory, k_t, memory.weight_matmuls(*P))
    e = prediction - v_t
    rate = optimizer.effective_rate(spec, eta_t, k_t)[..., None, None]
    if spec.optimizer == "implicit":  # the l2 gradient k ⊗ e at the effective rate
        G = (memory.outer(k_t, e),)
    else:
        g = bias_gradient(spec, e, v_t, None if delta_t is None else delta_t[..., None])
        inputs, output_grads = memory.backward(spec.memory, cache, g, memory.transposed_matmul(*P))
        G = tuple(memory.outer(x, d) for x, d in zip(inputs, output_grads))
    U, S = optimizer.step(spec, G, S, rate, None if theta_t is None else theta_t[..., None, None])
    A = tuple(write_map(spec, decay * A_j + U_j) for A_j, U_j in zip(A, U))
    W = scaled_readout(spec, A)
    return memory.forward(spec.memory, q_t, memory.weight_matmuls(*W))[0], A, S, W


def recurrent_scan(q, k, v, eta, alpha, theta, delta, spec, A, S, chunk_size=None, snapshot_every=None):
    """Run the memory over T tokens. Returns outputs [B, H, T, Dv], final (A, S) and W snapshots.

    `theta` and `delta` ([B, H, T] or None) are only read by momentum and by the Huber biases;
    `chunk_size` is unused (the scan is exact).

    Per token t (docs/design.md §2):
        P   = N(A_{t−1})                      grad_at="previous"
            = N(α_t A_{t−1})                  grad_at="retained"
        e   = M(k_t; P) − v_t,   g = bias'(e),   G = ∇_P ℓ   (k ⊗ g for a linear memory)
        U   = −η_t G  |  S_t = θ_t S_{t−1} − η_t G, U = S_t  |  −η̃_t k ⊗ e (implicit)
        A_t = E(α_t A_{t−1} + U),   W_t = N(A_t),   o_t = M(q_t; W_t)
    """
    W = scaled_readout(spec, A)
    outputs, snapshots = [], []
    # Split once: indexing x[:, :, t] per token would make every backward step write a full-size gradient.
    per_token = [x.unbind(2) if x is not None else [None] * q.shape[2] for x in (q, k, v, eta, alpha, theta, delta)]
    for t, token in enumerate(zip(*per_token)):
        o_t, A, S, W = exact_step(spec, token, A, S, W)
        outputs.append(o_t)
        if snapshot_every and (t + 1) % snapshot_every == 0:
            snapshots.append(W.explicit())
    return torch.stack(outputs, dim=2), A, S, snapshots
