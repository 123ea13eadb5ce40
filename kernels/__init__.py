"""Triton kernels for the linear-memory recurrence, behind `torch.autograd.Function`s.

`memory_scan(..., backend="triton")` (or "auto" on CUDA) calls `kernel_for` to pick one:

| scan | kernel | module |
|---|---|---|
| exact (`chunk_size=None`), l2 bias, gd / implicit, retention none / l2 | exact delta-rule chunks (UT transform) | `chunk_delta.py` |
| exact, any other linear spec | fused recurrent scan, state on chip | `fused_recurrent.py` |
| mini-batch (`chunk_size=C`), retention none / l2, dot / l2 / lp / huber coord, gd | dual-form chunks with `tl.dot` | `chunk_minibatch.py` |

Every kernel takes the head-major layout `memory_scan` uses inside: q, k [B, H, T, Dk], v [B, H, T, Dv],
rates η, α, θ, δ [B, H, T] (θ, δ may be None), the start state A0, S0 [B, H, Dk, Dv]; it returns
o [B, H, T, Dv] and the end state (A, S). On a machine without CUDA the kernels run under the Triton
interpreter: importing this package sets TRITON_INTERPRET=1 there, before any kernel is defined (Triton
reads it when `@triton.jit` wraps a function).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


class KernelLimit(ValueError):
    """The inputs are outside what a kernel handles (dtype, Dk, chunk size), though its spec is covered:
    `backend="auto"` then runs torch instead, `backend="triton"` raises it."""


def interpreter_on():
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernel_for(spec, chunk_size, return_states):
    """(run, None), or (None, reason) when no kernel computes this scan.

    Each kernel module has `unsupported(spec) -> reason or None` and
    run(q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size) -> (o, A, S).
    """
    if spec.memory != "linear":
        return None, "the kernels cover linear memory only"
    if return_states:
        return None, "the kernels do not keep memory snapshots (return_states)"
    from . import chunk_delta, chunk_minibatch, fused_recurrent

    candidates = (chunk_delta, fused_recurrent) if chunk_size is None else (chunk_minibatch,)
    for module in candidates:
        reason = module.unsupported(spec)
        if reason is None:
            return module.run, None
    return None, reason  # the last candidate's: the most general kernel for this kind of scan


def device_ready(like: torch.Tensor):
    """None if kernels can run on tensors like `like`, else why not."""
    if like.is_cuda or interpreter_on():
        return None
    return ("needs CUDA tensors on this machine (it has a GPU, so the kernels were compiled for it; "
            "TRITON_INTERPRET=1 set before `import kernels` runs them on the CPU under the Triton interpreter)")


def tuning_configs(configs):
    """The `triton.autotune` configs to try: all of them on a GPU, the first under the interpreter (which
    cannot time kernels)."""
    return configs[:1] if interpreter_on() else configs
