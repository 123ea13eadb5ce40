"""The torch implementations of a scan, one op per file, each beside its Triton twin in `kernels/`:

| op | torch (here) | Triton (`kernels/`) | computes |
|---|---|---|---|
| recurrent | `recurrent.py` | `recurrent.py` | the exact recurrence, token by token: the reference of every other form |
| delta rule | `delta_rule.py` | `delta_rule.py` | the exact recurrence of the l2 delta rule, chunk-parallel (UT transform) |
| mini-batch | `minibatch.py`, `minibatch_fused.py` | `minibatch.py`, `mlp_minibatch.py` (MLP memory) | the mini-batch (chunked) rule, dual form |
| boundary | `boundary.py` | `mlp_minibatch.py` (MLP memory) | the paper's boundary rule for lq / kl |

Every scan function takes the head-major layout (q, k [B, H, T, Dk], v [B, H, T, Dv], rates [B, H, T],
the state A, S as tuples of [B, H, Din, Dout]) and returns (o [B, H, T, Dv], A, S, snapshots).
Which one runs is decided in one place, `miras_lite/dispatch.py`. Independent slow references of both
semantics (token loops written from docs/design.md) live in `tests/reference.py`.
"""
