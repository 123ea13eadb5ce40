"""`memory_scan`: the functional entry point (docs/design.md §5). Validates the inputs, lays them out
head-major, asks `dispatch.plan` which implementation computes the scan and runs it."""

import numbers
import warnings
from dataclasses import dataclass

import torch

from . import dispatch, memory
from .dispatch import BACKENDS, CHUNK_RULES
from .memory import mlp_initial_state
from .retention import readout
from .presets import as_spec
from .spec import MemorySpec


@dataclass
class MemoryState:
    """The memory after a scan.

    Linear memory: A, S, W are [B, H, Dk, Dv]. MLP memory: tuples (W_in-like, W_out-like) of
    [B, H, D, E·D] and [B, H, E·D, D]. A is the accumulator, W = N(A) the memory that is read,
    S the momentum (zeros unless optimizer="momentum"). `snapshots` holds W after every
    `return_states` tokens, [B, T // s, H, ...] (a tuple for MLP memory), or None.
    """

    A: object
    S: object
    W: object
    snapshots: object = None


def read_memory(spec, W, x):
    """Query an explicit memory: M(x; W) for W = state.W of `memory_scan` and x [B, N, H, Dk] -> [B, N, H, Dv]."""
    spec = as_spec(spec)
    weights = (W,) if isinstance(W, torch.Tensor) else tuple(W)
    return memory.forward(spec.memory, x.transpose(1, 2), memory.weight_matmuls(weights))[0].transpose(1, 2)


def _fail(name, message):
    raise ValueError(f"{name}: {message}")


def _check_inputs(q, k, v, spec):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            _fail(name, "expected a floating-point tensor of shape [B, T, H, D]")
    if k.shape != q.shape:
        _fail("k", f"shape {tuple(k.shape)} must equal q's shape {tuple(q.shape)} ([B, T, H, Dk])")
    if v.shape[:3] != q.shape[:3]:
        _fail("v", f"shape {tuple(v.shape)} must share [B, T, H] = {tuple(q.shape[:3])} with q")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype or x.device != q.device:
            _fail(name, f"dtype/device {x.dtype}/{x.device} must match q's {q.dtype}/{q.device}")
    for axis, size in zip("BTHD", q.shape):
        if size == 0:
            _fail("q", f"shape {tuple(q.shape)} is empty ({axis} = 0); B, T, H and Dk must be >= 1")
    if v.shape[-1] == 0:
        _fail("v", f"shape {tuple(v.shape)} is empty (Dv = 0); Dv must be >= 1")
    if spec.memory == "mlp" and v.shape[-1] != q.shape[-1]:
        _fail("v", f"memory='mlp' needs Dk == Dv, got Dk={q.shape[-1]}, Dv={v.shape[-1]}")


def _rate(name, value, shape, like, low, high, low_open, high_open):
    """A per-token rate as a [B, H, T] tensor, after checking it lies in its interval."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=like.dtype, device=like.device)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        _fail(name, f"expected a float or a floating-point tensor of shape [B, T, H] = {tuple(shape)}")
    if value.dim() != 0 and tuple(value.shape) != tuple(shape):
        _fail(name, f"shape {tuple(value.shape)} must be [B, T, H] = {tuple(shape)} (or a scalar)")
    with torch.no_grad():
        below = (value <= low) if low_open else (value < low)
        above = (value >= high) if high_open else (value > high)
        if not torch.isfinite(value).all():
            _fail(name, f"contains NaN or inf; values must be finite and lie in {interval} (a gate that produced "
                  "them has diverged: lower the learning rate or clip gradients)")
        if below.any() or above.any():
            _fail(name, f"values must lie in {interval}")
    value = value.to(dtype=like.dtype, device=like.device)
    return value.expand(shape).permute(0, 2, 1)


def _weights(name, value, spec, B, H, Dk, Dv, like):
    """A tensor (linear) or (W_in, W_out) tuple as a tuple of [B, H, Din, Dout] tensors."""
    hidden = spec.expansion * Dk
    shapes = [(Dk, Dv)] if spec.memory == "linear" else [(Dk, hidden), (hidden, Dk)]
    weights = (value,) if isinstance(value, torch.Tensor) else tuple(value)
    if len(weights) != len(shapes) or not all(isinstance(x, torch.Tensor) for x in weights):
        expected = "a tensor" if spec.memory == "linear" else "a tuple (W_in, W_out)"
        _fail(name, f"memory={spec.memory!r} expects {expected}, a MemoryState or None")
    expanded = []
    for W, (rows, cols) in zip(weights, shapes):
        if tuple(W.shape) not in ((H, rows, cols), (B, H, rows, cols)):
            _fail(name, f"shape {tuple(W.shape)} must be [H, {rows}, {cols}] or [B, H, {rows}, {cols}] "
                  f"with B={B}, H={H}")
        expanded.append(W.to(dtype=like.dtype, device=like.device).expand(B, H, rows, cols))
    return tuple(expanded)


def _initial_state(initial_state, spec, B, H, Dk, Dv, like):
    """(A, S) as tuples of [B, H, Din, Dout] tensors."""
    if isinstance(initial_state, MemoryState):
        A = _weights("initial_state", initial_state.A, spec, B, H, Dk, Dv, like)
        if spec.optimizer == "momentum":
            return A, _weights("initial_state", initial_state.S, spec, B, H, Dk, Dv, like)
        return A, tuple(torch.zeros_like(A_j) for A_j in A)
    if initial_state is None and spec.memory == "linear":
        initial_state = like.new_zeros(B, H, Dk, Dv)
    elif initial_state is None:
        initial_state = mlp_initial_state(H, Dk, spec.expansion, dtype=like.dtype, device=like.device)
    A = _weights("initial_state", initial_state, spec, B, H, Dk, Dv, like)
    return A, tuple(torch.zeros_like(A_j) for A_j in A)


def _check_dtype(q, backend):
    """Half precision runs on CUDA (and through the Triton kernels); the torch implementations on a CPU need float32
    or float64 (CPU torch has no half-precision triangular solve, and float16 overflows at 65504)."""
    if q.device.type == "cpu" and backend != "triton" and q.dtype in (torch.float16, torch.bfloat16):
        _fail("q", f"dtype {q.dtype} is not supported on the CPU; allowed values: torch.float32, torch.float64 "
              "(half precision: CUDA tensors, or backend='triton')")


def _all_finite(tensors):
    """Whether every tensor is finite, read back once (one device sync on CUDA, not one per tensor)."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return not flags or bool(torch.stack(flags).all())


OVERFLOW = "the memory overflowed"


def _check_overflow(o, state, inputs, k, eta, spec):
    """Finite inputs must give finite outputs: otherwise the recurrence overflowed (η beyond the stable range of
    the step, e.g. η_t‖k_t‖² > 2 for the gd step on the l2 bias), and memory_scan refuses it with a ValueError
    naming eta rather than returning inf or NaN."""
    with torch.no_grad():
        W = state.W if isinstance(state.W, tuple) else (state.W,)
        if _all_finite((o, *W)) or not _all_finite(inputs):
            return
        step = float((eta * k.square().sum(-1)).max())
    _fail("eta", f"{OVERFLOW}: finite inputs gave non-finite outputs (memory={spec.memory!r}, bias={spec.bias!r}, "
          f"retention={spec.retention!r}, optimizer={spec.optimizer!r}; the largest η_t·‖k_t‖² is {step:.3g}). "
          "The gd and momentum steps on the l2, lp, huber and robust biases are stable only while η_t·‖k_t‖² <= 2 "
          "(momentum: <= 2(1 + θ)); lower eta, normalise k, use optimizer='implicit', or compute in float64")


def _check_options(chunk_size, backend, return_states, chunk_rule):
    if chunk_rule not in CHUNK_RULES:
        _fail("chunk_rule", f"{chunk_rule!r} is not supported; allowed values: {', '.join(map(repr, CHUNK_RULES))}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        _fail("chunk_size", f"{chunk_size!r} must be None (exact recurrence) or an integer >= 1")
    if return_states is not None:
        if not isinstance(return_states, int) or isinstance(return_states, bool) or return_states < 1:
            _fail("return_states", f"{return_states!r} must be None or an integer >= 1")
        if chunk_size is not None and return_states % chunk_size:
            _fail("return_states", f"{return_states} must be a multiple of chunk_size={chunk_size} "
                  "(chunked scans only form the memory at chunk ends)")
    if backend not in BACKENDS:
        _fail("backend", f"{backend!r} is not supported; allowed values: {', '.join(map(repr, BACKENDS))}")


_WARNED_NO_KERNEL = set()


def _warn_passed_over_kernels(plan, spec, chunk_size, backend):
    """"auto" on CUDA, where a kernel was expected: say once per spec why torch runs instead."""
    reasons = "; ".join(reason for reason in plan.passed_over if reason.startswith("triton/"))
    if backend != "auto" or not reasons or plan.implementation.backend == "triton" or spec in _WARNED_NO_KERNEL:
        return
    _WARNED_NO_KERNEL.add(spec)
    warnings.warn(f"memory_scan(backend='auto'): no Triton kernel for {spec} (chunk_size={chunk_size}): {reasons}; "
                  f"running {plan.implementation.name}", stacklevel=3)


def memory_scan(q, k, v, eta=1.0, alpha=1.0, theta=None, spec=None, initial_state=None, chunk_size=None,
                backend="torch", return_states=None, delta=None, chunk_rule="minibatch"):
    """Run a test-time memory over a sequence: o_t = M_t(q_t), M_t trained on (k_t, v_t) as in docs/design.md §2-4.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; eta (η ≥ 0), alpha (α ∈ (0, 1]), theta (θ ∈ [0, 1), momentum
    only): floats or [B, T, H] tensors. spec: a `MemorySpec` or a preset name (default `MemorySpec()`).
    initial_state: the accumulator A ([H, ...] or [B, H, ...]; a (W_in, W_out) tuple for MLP memory) or
    a `MemoryState`; None starts from zeros (linear) or `mlp_initial_state` (MLP).
    chunk_size: None for the exact recurrence, C for mini-batch updates of C tokens (`ops/minibatch.py`).
    chunk_rule: with chunk_size=C, "minibatch" (default; the reference: gradients at the chunk start, the
    read-out N applied at every token) or "boundary" (the Miras paper's parallel training: lq and kl apply
    their non-linear read-out at chunk boundaries only, `ops/boundary.py`; the same as "minibatch" for every
    other retention). Ignored by the exact recurrence.
    Which implementation computes it (a token loop, an exact chunk-parallel form, a dual form, a Triton
    kernel) is decided by `dispatch.plan`; every one gives the same values.
    return_states=s keeps W after every s tokens in `state.snapshots`.
    delta: per-token Huber threshold δ_t (float or [B, T, H] tensor, δ > 0) replacing spec.delta; Huber bias only.
    backend: "torch"; "triton" (the `kernels` package, interpreted on a machine without CUDA; raises when no
    kernel covers the scan); "auto" (Triton on CUDA tensors where a kernel covers the scan, else torch).

    Returns o [B, T, H, Dv] and a `MemoryState`. Differentiable w.r.t. every tensor input.

    Ranges and overflow. Every argument is checked first: a bad one raises ValueError naming it (empty axes,
    B, T, H, Dk or Dv = 0, are refused; so are float16 / bfloat16 on the CPU, where the torch implementations
    need float32 or float64). η is not bounded above, but the recurrence is only stable in a range: the gd step
    on the l2 bias multiplies the memory by (I − η_t k_t k_tᵀ), which grows once η_t‖k_t‖² > 2 (momentum:
    2(1 + θ)), and grows geometrically over the tokens. memory_scan neither clamps η (that would silently
    change the update) nor refuses it up front (a scan that grows but stays finite is a valid experiment): when
    finite inputs give a non-finite output or memory, it raises ValueError("eta: the memory overflowed: ...")
    with the largest η_t‖k_t‖² it saw. Inputs that already hold NaN or inf are passed through (rates are
    refused). `MemorySpec` refuses lq settings whose read-out overflows float32 (see `spec.LQ_MAX_DECADES`).
    """
    spec = MemorySpec() if spec is None else as_spec(spec)
    _check_inputs(q, k, v, spec)
    _check_options(chunk_size, backend, return_states, chunk_rule)
    _check_dtype(q, backend)
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    rate_shape = (B, T, H)
    eta = _rate("eta", eta, rate_shape, q, 0.0, float("inf"), False, True)
    alpha = _rate("alpha", alpha, rate_shape, q, 0.0, 1.0, True, False)
    if spec.retention == "none":
        with torch.no_grad():
            if not (alpha == 1).all():
                _fail("alpha", "retention='none' keeps everything, so alpha must be 1 (use retention='l2' to decay)")
    if spec.optimizer == "momentum":
        if theta is None:
            _fail("theta", "optimizer='momentum' needs theta (θ ∈ [0, 1)), a float or a [B, T, H] tensor")
        theta = _rate("theta", theta, rate_shape, q, 0.0, 1.0, False, True)
    else:
        theta = None
    if delta is not None:
        if spec.bias != "huber":
            _fail("delta", f"a per-token threshold only applies to bias='huber', not bias={spec.bias!r}")
        delta = _rate("delta", delta, rate_shape, q, 0.0, float("inf"), True, True)
    A, S = _initial_state(initial_state, spec, B, H, Dk, Dv, q)
    plan = dispatch.plan(spec, chunk_size, backend, q, v, return_states, chunk_rule)
    _warn_passed_over_kernels(plan, spec, chunk_size, backend)
    inputs = (q, k, v, *A, *S)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    o, A_end, S_end, snapshots = dispatch.run(plan, q, k, v, eta, alpha, theta, delta, spec, A, S, return_states)
    o, state = o.transpose(1, 2), _state(spec, A_end, S_end, snapshots, return_states)
    _check_overflow(o, state, inputs, k, eta, spec)
    return o, state


def _state(spec, A, S, snapshots, snapshot_every):
    W = tuple(readout(spec, A_j) for A_j in A)
    stacked = None
    if snapshot_every:
        stacked = tuple(torch.stack([snap[j] for snap in snapshots], dim=1) if snapshots
                        else W_j.new_zeros(W_j.shape[0], 0, *W_j.shape[1:]) for j, W_j in enumerate(W))
    if spec.memory == "mlp":
        return MemoryState(A, S, W, stacked)
    return MemoryState(A[0], S[0], W[0], stacked and stacked[0])
