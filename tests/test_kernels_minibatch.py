"""`kernels.minibatch`: the mini-batch dual-form scan in Triton (on CPU under TRITON_INTERPRET=1).

Reference: the torch chunked path, `memory_scan(..., chunk_size=C, backend="torch")`. Compared: outputs,
end state and the gradients w.r.t. q, k, v, η, α, δ and the initial state, for every supported
bias × grad_at × retention, with T not a multiple of C (a partial last chunk), T = 1, Dk ≠ Dv and
neither a power of two, more than one block of value columns, bf16 inputs, and through
`memory_scan(backend="triton")`.
"""

import pytest
import torch

import miras_lite as ml
from kernels import minibatch
from miras_lite import dispatch
from miras_lite.spec import MemorySpec

pytestmark = pytest.mark.kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # without CUDA, conftest switches the interpreter on
BIASES = [dict(bias="dot"), dict(bias="l2"), dict(bias="lp", p=3.0), dict(bias="huber", delta=0.4)]
SPECS = [MemorySpec(retention=retention, grad_at=grad_at, **fields)
         for fields in BIASES for retention in ("none", "l2") for grad_at in ("previous", "retained")]


def _id(spec):
    return f"{spec.bias}-{spec.retention}-{spec.grad_at}"


def _leaves(spec, T, Dk, Dv, seed, per_token_delta, B=1, H=2):
    """Token-major inputs of memory_scan; δ per token drawn around the errors' scale, so some coordinates
    are clipped and some not."""
    g = torch.Generator().manual_seed(seed)
    leaves = dict(
        q=torch.randn(B, T, H, Dk, generator=g) / Dk**0.5,
        k=torch.randn(B, T, H, Dk, generator=g) / Dk**0.5,
        v=torch.randn(B, T, H, Dv, generator=g),
        eta=0.1 + 0.4 * torch.rand(B, T, H, generator=g),
        alpha=torch.ones(B, T, H) if spec.retention == "none" else 0.8 + 0.2 * torch.rand(B, T, H, generator=g),
        initial_state=torch.randn(B, H, Dk, Dv, generator=g) / Dk**0.5,
    )
    if per_token_delta:
        leaves["delta"] = 0.2 + 0.6 * torch.rand(B, T, H, generator=g)
    return {name: x.to(DEVICE) for name, x in leaves.items()}


def _kernel_scan(spec, chunk_size, q, k, v, eta, alpha, initial_state, delta=None):
    """`minibatch.minibatch_scan` with memory_scan's token-major layout."""
    heads_first = (x.transpose(1, 2) for x in (q, k, v))
    rates = (None if x is None else x.permute(0, 2, 1) for x in (eta, alpha, delta))
    eta_h, alpha_h, delta_h = rates
    o, A, _ = minibatch.minibatch_scan(*heads_first, eta_h, alpha_h, None, delta_h, spec, initial_state,
                                       torch.zeros_like(initial_state), chunk_size)
    return o.transpose(1, 2), A


def _torch_scan(spec, chunk_size, q, k, v, eta, alpha, initial_state, delta=None):
    o, state = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec, initial_state=initial_state,
                              chunk_size=chunk_size, backend="torch", delta=delta)
    return o, state.A


def _memory_scan_triton(spec, chunk_size, q, k, v, eta, alpha, initial_state):
    return ml.memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec, initial_state=initial_state, chunk_size=chunk_size,
                          backend="triton")


def _values_and_grads(scan, spec, chunk_size, leaves):
    """o, A_end and the gradients of a random projection of both w.r.t. every leaf, all as float32 (so bf16
    and float32 runs compare directly)."""
    leaves = {name: x.detach().clone().requires_grad_() for name, x in leaves.items()}
    o, A = scan(spec, chunk_size, **leaves)
    g = torch.Generator().manual_seed(1)
    o_weights, A_weights = (torch.randn(x.shape, generator=g).to(DEVICE) for x in (o, A))
    loss = (o.float() * o_weights).sum() + (A.float() * A_weights).sum()
    loss.backward()
    return {"o": o.float(), "A": A.float(), **{f"d{name}": x.grad.float() for name, x in leaves.items()}}


def _assert_same(actual, expected, rtol, atol):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _check_against_torch(spec, T, chunk_size, Dk, Dv, seed, per_token_delta=False):
    leaves = _leaves(spec, T=T, Dk=Dk, Dv=Dv, seed=seed, per_token_delta=per_token_delta)
    expected = _values_and_grads(_torch_scan, spec, chunk_size, leaves)
    _assert_same(_values_and_grads(_kernel_scan, spec, chunk_size, leaves), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_matches_torch_chunked(spec):
    _check_against_torch(spec, T=13, chunk_size=4, Dk=8, Dv=5, seed=SPECS.index(spec),
                         per_token_delta=spec.bias == "huber")


HUBER = MemorySpec(bias="huber", retention="l2", grad_at="retained", delta=0.5)


@pytest.mark.parametrize("T, chunk_size, Dk, Dv", [(1, 4, 8, 4), (32, 8, 8, 16), (13, 16, 20, 3)],
                         ids=["T1", "full-chunks", "one-partial-chunk"])
def test_shapes(T, chunk_size, Dk, Dv):
    _check_against_torch(HUBER, T, chunk_size, Dk, Dv, seed=T + Dv)


def test_value_columns_split_across_programs():
    Dk, Dv = 40, 80
    assert minibatch._blocks(4, Dk, Dv)[2] < Dv  # premise: two programs share the value columns
    _check_against_torch(HUBER, T=9, chunk_size=4, Dk=Dk, Dv=Dv, seed=1)


def test_bfloat16_inputs_match_float32():
    spec = MemorySpec(bias="lp", p=3.0, retention="l2", grad_at="previous")
    leaves = _leaves(spec, T=13, Dk=8, Dv=16, seed=3, per_token_delta=False)
    expected = _values_and_grads(_torch_scan, spec, 8, {n: x.bfloat16().float() for n, x in leaves.items()})
    actual = _values_and_grads(_kernel_scan, spec, 8, {n: x.bfloat16() for n, x in leaves.items()})
    _assert_same(actual, expected, rtol=3e-2, atol=3e-2)


def test_memory_scan_backend_triton():
    """Scalar rates (zero-stride views), an initial state shared by the batch, with and without gradients."""
    spec = ml.preset("gated_deltanet")
    leaves = _leaves(spec, T=13, Dk=8, Dv=4, seed=5, per_token_delta=False, B=2)
    q, k, v = leaves["q"], leaves["k"], leaves["v"]
    shared_state = leaves["initial_state"][0]
    runs = {backend: ml.memory_scan(q, k, v, eta=0.3, alpha=0.9, spec=spec, initial_state=shared_state,
                                    chunk_size=4, backend=backend) for backend in ("torch", "triton")}
    torch.testing.assert_close(runs["triton"][0], runs["torch"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs["triton"][1].A, runs["torch"][1].A, rtol=1e-4, atol=1e-5)

    def grads(backend):
        state = shared_state.clone().requires_grad_()
        o, final = ml.memory_scan(q, k, v, eta=0.3, alpha=0.9, spec=spec, initial_state=state, chunk_size=4,
                                  backend=backend)
        (o.sum() + final.A.square().sum()).backward()
        return state.grad

    torch.testing.assert_close(grads("triton"), grads("torch"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fields", [dict(memory="mlp"), dict(retention="lq"), dict(optimizer="momentum"),
                                    dict(bias="l2", optimizer="implicit"), dict(bias="robust"),
                                    dict(bias="huber", huber_mode="norm")])
def test_unsupported_specs_give_a_reason(fields):
    """The kernel's row of the dispatch table covers exactly the specs of this kernel."""
    covers = dispatch.IMPLEMENTATIONS["triton/minibatch"].covers
    assert covers(MemorySpec(**fields))
    assert all(covers(spec) is None for spec in SPECS)


@pytest.mark.parametrize("spec, dtype, chunk_size, argument", [
    (MemorySpec(retention="lq"), torch.float32, 2, "retention"),
    (MemorySpec(), torch.float64, 2, "q"),
    (MemorySpec(), torch.float32, 4096, "chunk_size"),
], ids=["spec", "dtype", "chunk"])
def test_run_rejects_what_it_cannot_compute(spec, dtype, chunk_size, argument):
    """The kernel refuses inputs outside its limits; a spec it does not compute is refused by the dispatch
    table (`memory_scan(backend="triton")`), before any kernel runs."""
    leaves = {name: x.to(dtype) for name, x in _leaves(MemorySpec(), T=3, Dk=4, Dv=4, seed=0,
                                                          per_token_delta=False).items()}
    scan = _memory_scan_triton if argument == "retention" else _kernel_scan
    with pytest.raises(ValueError, match=argument):
        scan(spec, chunk_size, **leaves)
