"""Triton kernels for the memory scans of `miras_lite`, each behind a `torch.autograd.Function` with a
Triton backward, one module per op beside its torch twin in `miras_lite/ops/`:

| module | public function | computes (docs/design.md) |
|---|---|---|
| `recurrent.py` | `recurrent_scan` | the exact recurrence (§2), one token at a time, state on chip |
| `delta_rule.py` | `delta_rule_scan` | the exact recurrence of the l2 delta rule, chunk-parallel (UT transform) |
| `minibatch.py` | `minibatch_scan` | the mini-batch rule (§4, `chunk_size=C`), dual form with `tl.dot` |
| `mlp_minibatch.py` | `mlp_minibatch_scan`, `mlp_boundary_scan` | the mini-batch rule (§4) of the MLP memory (§3), one chunk per call; the boundary rule for lq / kl |
| `common.py` | | what they share: tiles, `tl.dot`, the bias gradient φ, the implicit step size, decays |

Each public function has the signature (q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size) ->
(o, A_end, S_end) in the head-major layout: q, k [B, H, T, Dk], v [B, H, T, Dv], rates η, α, θ, δ [B, H, T]
(θ, δ may be None), the start state A0, S0 [B, H, Dk, Dv] (the MLP memory: (W_in, W_out) tuples); o is
[B, H, T, Dv]. Each module's `limits(q, v, spec,
chunk_size)` says why its kernel cannot take some inputs (dtype, Dk on chip, chunk size vs shared memory), and
the public function raises `KernelLimit` with that reason. Which spec runs on which kernel is decided in one
table, `miras_lite/dispatch.py`, not here.

Importing this package changes nothing. On a machine without CUDA the kernels run under the Triton interpreter
only when TRITON_INTERPRET=1 is set before the kernel modules are imported (Triton reads it when `@triton.jit`
wraps a function); the tests' conftest does so.
"""


class KernelLimit(ValueError):
    """The inputs are outside what a kernel handles (dtype, Dk, chunk size), though its spec is covered:
    `backend="auto"` then runs torch instead, `backend="triton"` raises it."""
