"""`kernels.recurrent`: the fused Triton scan of the exact linear recurrence (docs/design.md §2).

Values (o, final A, final S) and gradients w.r.t. q, k, v, η, α, θ, δ, A0 and S0 are compared with the torch
exact recurrence, `memory_scan(backend="torch")`, in float64 (the interpreter runs the kernel in float64 too),
for a pairwise cover of the spec axes: every (bias, retention) pair once, each with a different
(optimizer, grad_at) so that every pair of axis values meets; sequence lengths T ∈ {1, 7, 13, 19} with
checkpoints every 8 tokens (one token, one partial segment, two and three segments), Dk = 4 ≠ Dv ∈ {3, 5},
B·H > 1, and value-column blocks of 2 (several programs per head, the last one partial) for column-separable
specs.

Tolerance 1e-11 (relative to the largest entry, at least 1) in float64: the two sides agree to ~6e-14 over
every spec of the full product; ε = 1e-6 enters the kernel as a float32 constant (an error of ~3e-14 in ε).
Float32 and bfloat16 inputs are checked against float64 on the same rounded inputs, at ~10 and ~2.5 units
of their rounding (observed: 1e-6 and 6e-3).
"""

from typing import NamedTuple

import pytest
import torch

import miras_lite as ml
from kernels import recurrent
from miras_lite import dispatch
from miras_lite.spec import MemorySpec

from cases import BIASES

pytestmark = pytest.mark.kernels

RETENTIONS = [dict(retention="none"), dict(retention="l2"), dict(retention="lq", q=4.0), dict(retention="kl"),
              dict(retention="elastic", gamma=0.01)]
STEPS = [("gd", "previous"), ("momentum", "retained"), ("gd", "retained"), ("momentum", "previous")]
# (T, B, H): two checkpoint segments, the last partial (one head); a single token (batch and heads); one partial
# segment (two heads). The interpreter's cost grows with T·B·H·(value blocks).
SHAPES = ((13, 1, 1), (1, 2, 2), (7, 1, 2))
CHECKPOINT_EVERY = 8


class Case(NamedTuple):
    spec: MemorySpec
    T: int
    B: int
    H: int
    Dv: int
    value_block: int
    per_token_delta: bool


def _pairwise_cases():
    """Each (bias, retention) pair once; (optimizer, grad_at) cycles so that each bias and each retention meets
    all four of its combinations. Odd cases use Dv = 5 in value blocks of 2 (separable specs: 3 programs)."""
    cases = []
    for i, bias in enumerate(BIASES):
        for j, retention in enumerate(RETENTIONS):
            optimizer, grad_at = STEPS[(i + j) % len(STEPS)]
            spec = MemorySpec(optimizer=optimizer, grad_at=grad_at, **bias, **retention)
            n = len(cases)
            cases.append(Case(spec, *SHAPES[n % 3], Dv=5 if n % 2 else 3, value_block=2 if n % 2 else 32,
                              per_token_delta=spec.bias == "huber" and n % 2 == 0))
    for retention, grad_at in (("none", "previous"), ("l2", "retained")):
        spec = MemorySpec(bias="l2", retention=retention, optimizer="implicit", grad_at=grad_at)
        cases.append(Case(spec, 19, 1, 1, Dv=5, value_block=2, per_token_delta=False))
    return cases


def _case_id(case):
    spec = case.spec
    bias = f"huber-{spec.huber_mode}{'-dt' if case.per_token_delta else ''}" if spec.bias == "huber" else spec.bias
    shape = f"T{case.T}-B{case.B}H{case.H}-Dv{case.Dv}-vb{case.value_block}"
    return f"{bias}-{spec.retention}-{spec.optimizer}-{spec.grad_at}-{shape}"


def _leaves(spec, T, Dv, per_token_delta, B=1, H=1, Dk=4, dtype=torch.float64, seed=0):
    """Inputs in memory_scan's layout ([B, T, H, ·]); δ_t for Huber puts rows on both sides of the threshold."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=dtype)

    def uniform(low, high):
        return low + (high - low) * torch.rand(B, T, H, generator=g, dtype=dtype)

    leaves = dict(q=normal(B, T, H, Dk, scale=0.5), k=normal(B, T, H, Dk, scale=0.5), v=normal(B, T, H, Dv),
                  eta=uniform(0.1, 0.5),
                  alpha=torch.ones(B, T, H, dtype=dtype) if spec.retention == "none" else uniform(0.8, 1.0),
                  A0=normal(B, H, Dk, Dv, scale=0.5))
    if spec.optimizer == "momentum":
        leaves.update(theta=uniform(0.1, 0.9), S0=normal(B, H, Dk, Dv, scale=0.25))
    if per_token_delta:
        leaves["delta"] = spec.delta * uniform(0.5, 1.5)
    movable = [name for name in leaves if not (name == "alpha" and spec.retention == "none")]
    return {name: x.requires_grad_(name in movable) for name, x in leaves.items()}


def _torch_scan(spec, leaves):
    S0 = leaves.get("S0", torch.zeros_like(leaves["A0"]))
    o, state = ml.memory_scan(leaves["q"], leaves["k"], leaves["v"], eta=leaves["eta"], alpha=leaves["alpha"],
                              theta=leaves.get("theta"), spec=spec, delta=leaves.get("delta"),
                              initial_state=ml.MemoryState(A=leaves["A0"], S=S0, W=None), backend="torch")
    return o, state.A, state.S


def _kernel_scan(spec, leaves, value_block):
    head_major = [leaves[name].transpose(1, 2) if name in leaves else None
                  for name in ("q", "k", "v", "eta", "alpha", "theta", "delta")]
    S0 = leaves.get("S0", torch.zeros_like(leaves["A0"]))
    o, A, S = recurrent.recurrent_scan(*head_major, spec, leaves["A0"], S0, None,
                                       checkpoint_every=CHECKPOINT_EVERY, value_block=value_block)
    return o.transpose(1, 2), A, S


def _values_and_grads(scan, leaves):
    """(o, A, S) and the gradient of a fixed random functional of them w.r.t. every leaf that requires grad."""
    outputs = scan(leaves)
    g = torch.Generator().manual_seed(1)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)).sum() for x in outputs)
    names = [name for name, x in leaves.items() if x.requires_grad]
    grads = torch.autograd.grad(loss, [leaves[name] for name in names])
    return dict(zip(("o", "A", "S"), outputs)), dict(zip(names, grads))


def _assert_close(actual, expected, tolerance):
    """Max error of every named tensor within `tolerance` times its largest entry (at least 1)."""
    for name in expected:
        scale = max(expected[name].abs().max().item(), 1.0)
        error = (actual[name].double() - expected[name].double()).abs().max().item()
        assert error <= tolerance * scale, f"{name}: max error {error:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("case", _pairwise_cases(), ids=_case_id)
def test_values_and_gradients_match_the_exact_recurrence(case):
    spec = case.spec
    assert dispatch.IMPLEMENTATIONS["triton/recurrent"].covers(spec) is None
    leaves = _leaves(spec, case.T, case.Dv, case.per_token_delta, B=case.B, H=case.H)
    expected_values, expected_grads = _values_and_grads(lambda x: _torch_scan(spec, x), leaves)
    values, grads = _values_and_grads(lambda x: _kernel_scan(spec, x, case.value_block), leaves)
    _assert_close(values, expected_values, 1e-11)
    _assert_close(grads, expected_grads, 1e-11)
    assert set(grads) == set(expected_grads)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_inputs_accumulate_in_float32(dtype, tolerance):
    """Outputs come back in the input dtype, the state in A0's (float32, as the benchmark passes it)."""
    spec = MemorySpec(bias="huber", huber_mode="norm", retention="lq", optimizer="momentum", grad_at="retained")
    reference = _leaves(spec, 13, 5, False, H=2)
    low = {name: x.detach().to(torch.float32 if name in ("A0", "S0") else dtype).requires_grad_(x.requires_grad)
           for name, x in reference.items()}
    values, grads = _values_and_grads(lambda x: _kernel_scan(spec, x, 32), low)
    assert values["o"].dtype == dtype and values["A"].dtype == torch.float32
    assert all(grads[name].dtype == low[name].dtype for name in grads)
    rounded = {name: x.detach().to(dtype).double().requires_grad_(x.requires_grad) for name, x in reference.items()}
    expected_values, expected_grads = _values_and_grads(lambda x: _torch_scan(spec, x), rounded)
    _assert_close(values, expected_values, tolerance)
    _assert_close(grads, expected_grads, tolerance)


def test_memory_scan_dispatches_the_exact_scan_here():
    """memory_scan(backend="triton") runs this kernel for a spec no chunked kernel computes exactly, with float
    rates (expanded, non-contiguous views) and an initial state shared by the batch."""
    spec = MemorySpec(bias="robust", retention="kl", optimizer="momentum", grad_at="previous")
    assert dispatch.plan(spec, None, "triton").implementation.load() is recurrent.recurrent_scan
    g = torch.Generator().manual_seed(3)
    q, k = (0.5 * torch.randn(2, 7, 1, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 7, 1, 3, generator=g, dtype=torch.float64)
    A0 = torch.randn(1, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = [x.requires_grad_() for x in (q, k, v)] + [A0]
    results = {}
    for backend in ("torch", "triton"):
        o, state = ml.memory_scan(q, k, v, eta=0.3, alpha=0.9, theta=0.5, spec=spec, initial_state=A0, backend=backend)
        results[backend] = (o, state.W, *torch.autograd.grad((o.sum(), state.W.square().sum()), inputs))
    for actual, expected in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(actual, expected, rtol=1e-11, atol=1e-11)
    with torch.no_grad():  # a forward without checkpoints
        o, _ = ml.memory_scan(q, k, v, eta=0.3, alpha=0.9, theta=0.5, spec=spec, initial_state=A0, backend="triton")
    torch.testing.assert_close(o, results["torch"][0], rtol=1e-11, atol=1e-11)
