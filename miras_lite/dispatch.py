"""The one place that decides which implementation computes a scan.

`TABLE` lists every implementation, torch and Triton, in order of preference. `plan` walks it and returns
the first row that computes the requested semantics for the spec, the options and the inputs, with the
reasons the rows before it were passed over. A new bias, retention, chunk rule or kernel is one row (and,
when no existing predicate fits, one coverage predicate below).

| semantics | what it computes | chunk_size, chunk_rule |
|---|---|---|
| "exact" | the exact recurrence of docs/design.md §2-3 | None |
| "minibatch" | the mini-batch rule of docs/design.md §4 (gradients at the chunk start) | C, "minibatch" |
| "boundary" | the boundary rule: non-linear read-outs at chunk boundaries only (`ops/boundary.py`) | C, "boundary" |

Rows named "any/..." are aliases: where two semantics coincide they send the scan to the rows of the other
(the exact recurrence of a dot-bias linear memory is its mini-batch rule; the boundary rule of a retention
without a non-linear read-out is the mini-batch rule), with the same backend.

Backends: "torch" uses the torch rows only; "triton" the Triton rows only (it raises when none covers the
scan; kernels run on CUDA tensors, or on the CPU under the Triton interpreter when TRITON_INTERPRET=1 was
set before the kernels were imported); "auto" tries the Triton rows first on CUDA tensors, then torch.
"""

import importlib
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple

BACKENDS = ("torch", "auto", "triton")
CHUNK_RULES = ("minibatch", "boundary")
EXACT_CHUNK = 64  # chunk length of the exact chunk-parallel forms (every length gives the same values)
MINIBATCH_CHUNK = 64  # MirasLayer's chunk length where the exact recurrence has no chunk-parallel form


# ------------------------------------------------------------------------------ coverage predicates
# Each returns None when the implementation computes the scan for `spec`, else why not.


def _linear(spec):
    return None if spec.memory == "linear" else "it covers linear memory only"


def _delta_rule(spec):
    """The exact recurrence is linear in the memory: l2 bias, gd / implicit, retention none / l2."""
    if spec.memory != "linear" or spec.bias != "l2":
        return "the exact delta rule needs a linear memory with the l2 bias"
    if spec.optimizer not in ("gd", "implicit"):
        return f"the exact delta rule covers optimizer gd / implicit, not {spec.optimizer!r}"
    if spec.retention not in ("none", "l2"):
        return f"the exact delta rule covers retention none / l2, not {spec.retention!r}"
    return None


def _dot(spec):
    """g = −v does not depend on the memory, so mini-batch updates are exact, except for elastic, whose
    threshold acts per token."""
    if spec.memory != "linear" or spec.bias != "dot":
        return "mini-batches are exact only for the dot bias on a linear memory"
    return "elastic thresholds every token" if spec.retention == "elastic" else None


def _dual(spec):
    """Identity read-outs: the accumulator is read as it is, so a chunk is a few masked matmuls."""
    return None if spec.retention in ("none", "l2") else f"the dual form covers retention none / l2, not {spec.retention!r}"


def _fused_dual(spec):
    if (reason := _linear(spec) or _dual(spec)) is not None:
        return reason
    return None if spec.optimizer in ("gd", "implicit") else f"it covers optimizer gd / implicit, not {spec.optimizer!r}"


_KERNEL_BIASES = ("dot", "l2", "lp", "huber")


def _minibatch_kernel(spec):
    """Linear memory, retention none / l2, gd, a bias whose gradient acts on each coordinate alone."""
    if spec.memory != "linear":
        return "the mini-batch kernel covers linear memory only"
    if spec.retention not in ("none", "l2"):
        return f"the mini-batch kernel covers retention none / l2, not {spec.retention!r}"
    if spec.optimizer != "gd":
        return f"the mini-batch kernel covers optimizer gd, not {spec.optimizer!r}"
    if spec.bias not in _KERNEL_BIASES or (spec.bias == "huber" and spec.huber_mode != "coord"):
        return f"the mini-batch kernel covers bias {', '.join(_KERNEL_BIASES)} (huber coord), not {spec.bias!r}"
    return None


def _mlp_minibatch_kernel(spec):
    """MLP memory, retention none / l2 (the dual form reads the weights as they are), any bias, gd / momentum."""
    if spec.memory != "mlp":
        return "the MLP-memory kernel covers MLP memory only"
    return _dual(spec)


def _mlp_boundary_kernel(spec):
    """MLP memory with the non-linear read-outs lq / kl, under the boundary rule."""
    return "the MLP-memory kernel covers MLP memory only" if spec.memory != "mlp" else _nonlinear_readout(spec)


def _nonlinear_readout(spec):
    return None if spec.retention in ("lq", "kl") else f"retention {spec.retention!r} has no read-out to defer"


def _linear_readout(spec):
    return None if _nonlinear_readout(spec) else f"retention {spec.retention!r} has a non-linear read-out"


def _recurrent_kernel(spec):
    return None if spec.memory == "linear" else "the recurrent kernel covers linear memory only"


def _anything(spec):
    return None


# ------------------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class Implementation:
    """One row of `TABLE`.

    scan:        "module:function" with the signature of `ops.recurrent.recurrent_scan` (torch) or of the
                 kernels' public functions, (q, k, v, eta, alpha, theta, delta, spec, A0, S0, chunk_size)
                 -> (o, A, S) on single state tensors; None for a row that runs as `runs_as` at `chunk`.
    chunk:       an exact chunk-parallel form runs in chunks of this length.
    runs_as:     the semantics whose rows compute this row's scan (exact dot scans are mini-batch scans).
    snapshots:   whether it can keep the memory every `return_states` tokens.
    weights:     whether a Triton scan takes and returns the state as tuples of weight matrices (the MLP memory's
                 W_in, W_out) instead of single matrices.
    """

    name: str
    semantics: str
    covers: Callable
    scan: str | None
    chunk: int | None = None
    runs_as: str | None = None
    snapshots: bool = True
    weights: bool = False

    @property
    def backend(self):
        """"torch", "triton", or "any" for an alias row."""
        return self.name.split("/")[0]

    def load(self):
        module, function = self.scan.split(":")
        return getattr(importlib.import_module(module), function)


TABLE = (
    Implementation("triton/delta_rule", "exact", _delta_rule, "kernels.delta_rule:delta_rule_scan", snapshots=False),
    Implementation("triton/recurrent", "exact", _recurrent_kernel, "kernels.recurrent:recurrent_scan", snapshots=False),
    Implementation("torch/delta_rule", "exact", _delta_rule, "miras_lite.ops.delta_rule:delta_rule_scan",
                   chunk=EXACT_CHUNK),
    Implementation("any/dot_is_minibatch", "exact", _dot, None, chunk=EXACT_CHUNK, runs_as="minibatch"),
    Implementation("torch/recurrent", "exact", _anything, "miras_lite.ops.recurrent:recurrent_scan"),
    Implementation("triton/minibatch", "minibatch", _minibatch_kernel, "kernels.minibatch:minibatch_scan",
                   snapshots=False),
    Implementation("triton/mlp_minibatch", "minibatch", _mlp_minibatch_kernel,
                   "kernels.mlp_minibatch:mlp_minibatch_scan", snapshots=False, weights=True),
    Implementation("torch/minibatch_fused", "minibatch", _fused_dual,
                   "miras_lite.ops.minibatch_fused:fused_dual_scan", snapshots=False),
    Implementation("torch/dual", "minibatch", _dual, "miras_lite.ops.minibatch:dual_scan"),
    Implementation("torch/materialised", "minibatch", _anything, "miras_lite.ops.minibatch:materialised_scan"),
    Implementation("triton/mlp_boundary", "boundary", _mlp_boundary_kernel, "kernels.mlp_minibatch:mlp_boundary_scan",
                   snapshots=False, weights=True),
    Implementation("torch/boundary", "boundary", _nonlinear_readout, "miras_lite.ops.boundary:boundary_scan"),
    Implementation("any/boundary_is_minibatch", "boundary", _linear_readout, None, runs_as="minibatch"),
)
IMPLEMENTATIONS = {row.name: row for row in TABLE}


# ------------------------------------------------------------------------------------------- plan


class Plan(NamedTuple):
    """What runs a scan: the implementation, the chunk length it runs with, and why each preferred row did not
    run (empty when the first candidate ran)."""

    implementation: Implementation
    chunk_size: int | None
    passed_over: tuple


def interpreter_on():
    """True when the Triton kernels run under the interpreter (on the CPU): TRITON_INTERPRET=1."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _device_reason(like):
    if like is None or like.is_cuda or interpreter_on():
        return None
    return ("needs CUDA tensors on this machine; to run the kernels on the CPU, under the Triton interpreter, set "
            "TRITON_INTERPRET=1 before Python imports them")


def _input_limits(row, like, value_like, spec, chunk_size):
    """Why the kernel of `row` cannot take these inputs (dtype, sizes), or None."""
    if like is None:
        return None
    module = importlib.import_module(row.scan.split(":")[0])
    return module.limits(like, value_like, spec, chunk_size)


def _snapshot_reason(row, return_states):
    if not return_states:
        return None
    if not row.snapshots:
        return "it does not keep memory snapshots (return_states)"
    if row.chunk and return_states % row.chunk:
        return f"it forms the memory every {row.chunk} tokens, not every return_states={return_states}"
    return None


def _candidates(semantics, backend, like):
    rows = [row for row in TABLE if row.semantics == semantics]
    if backend == "triton":
        return [row for row in rows if row.backend in ("triton", "any")]
    if backend == "torch" or like is None or not like.is_cuda:
        return [row for row in rows if row.backend in ("torch", "any")]
    return rows


def plan(spec, chunk_size=None, backend="torch", like=None, value_like=None, return_states=None,
         chunk_rule="minibatch"):
    """The `Plan` of a scan: `spec` with `chunk_size` (None: exact) and `chunk_rule` on `backend`, for query
    tensors `like` and value tensors `value_like` (both optional: without them, input limits are not checked).

    Raises ValueError naming `backend` when backend="triton" and no kernel computes the scan (a `KernelLimit`
    when the kernel that covers the spec cannot take these inputs).
    """
    semantics = "exact" if chunk_size is None else chunk_rule
    if backend == "triton" and (why := _device_reason(like)):
        raise ValueError(f"backend: 'triton' {why}; or use backend='torch' / 'auto'")
    passed_over = []
    for row in _candidates(semantics, backend, like):
        reason = row.covers(spec) or _snapshot_reason(row, return_states)
        if reason is None and row.backend == "triton" and (reason := _input_limits(row, like, value_like, spec,
                                                                                   chunk_size)):
            if backend == "triton":
                from kernels import KernelLimit

                raise KernelLimit(reason)
        if reason is not None:
            passed_over.append(f"{row.name}: {reason}")
            continue
        if row.runs_as:
            inner = plan(spec, row.chunk or chunk_size, backend, like, value_like, return_states, row.runs_as)
            return Plan(inner.implementation, inner.chunk_size, tuple(passed_over) + inner.passed_over)
        return Plan(row, row.chunk or chunk_size, tuple(passed_over))
    kernels = [reason for reason in passed_over if reason.startswith("triton/")] or passed_over or ["-: no row"]
    last = kernels[-1].split(": ", 1)[1]  # the most general kernel's reason
    raise ValueError(f"backend: no Triton kernel for {spec} (chunk_size={chunk_size}): {last}; use backend='torch' "
                     "or 'auto' (which falls back to torch)")


def has_exact_parallel_form(spec):
    """True when the exact recurrence of `spec` runs chunk-parallel in torch (no token loop)."""
    return plan(spec).implementation.name != "torch/recurrent"


def default_chunk_size(spec):
    """The chunk size layers use by default: None (exact) where the exact recurrence is chunk-parallel, as fast
    as mini-batches and without their limit on η; `MINIBATCH_CHUNK` otherwise."""
    return None if has_exact_parallel_form(spec) else MINIBATCH_CHUNK


def run(plan_, q, k, v, eta, alpha, theta, delta, spec, A, S, snapshot_every=None):
    """Run a `Plan` on head-major inputs (A, S tuples) -> (o, A, S, snapshots)."""
    row, scan = plan_.implementation, plan_.implementation.load()
    if row.backend == "torch":
        return scan(q, k, v, eta, alpha, theta, delta, spec, A, S, plan_.chunk_size, snapshot_every)
    if row.weights:
        o, A_end, S_end = scan(q, k, v, eta, alpha, theta, delta, spec, A, S, plan_.chunk_size)
        return o, A_end, S_end, []
    o, A_end, S_end = scan(q, k, v, eta, alpha, theta, delta, spec, A[0], S[0], plan_.chunk_size)
    return o, (A_end,), (S_end,), []
