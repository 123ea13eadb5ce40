"""float64 gradcheck of memory_scan w.r.t. q, k, v, eta, alpha, theta and initial_state.

Every value of every axis appears at least once (not the full product), for the exact recurrence
and the chunked form (chunk_size=2 with T=5, so the last chunk is partial). Kinks are kept away from
the data: huber coord uses a δ well below the typical |e| (so every coordinate is clipped, far from
±δ), huber norm/mixture use a δ far from the typical ‖e‖ (one of them on each side).
"""

import pytest
import torch

import miras_lite as ml
from miras_lite.spec import MemorySpec
from reference import random_inputs, reference_minibatch_scan, reference_scan

GRAD_SPECS = [
    # memory, fields, shared_init
    ("linear", dict(bias="dot", retention="none", optimizer="gd", grad_at="previous"), False),
    ("linear", dict(bias="l2", retention="l2", optimizer="gd", grad_at="retained"), True),
    ("linear", dict(bias="lp", p=3.0, retention="lq", q=4.0, optimizer="momentum", grad_at="previous"), False),
    ("linear", dict(bias="huber", huber_mode="coord", delta=0.02, retention="kl", optimizer="gd",
                    grad_at="retained"), False),
    ("linear", dict(bias="huber", huber_mode="norm", delta=20.0, retention="elastic", gamma=0.01,
                    optimizer="momentum", grad_at="retained"), True),
    ("linear", dict(bias="l2", retention="l2", optimizer="implicit", grad_at="previous"), False),
    ("linear", dict(bias="l2", retention="none", optimizer="implicit", grad_at="retained"), True),
    ("linear", dict(bias="robust", robust_delta=0.5, retention="lq", q=3.0, optimizer="gd",
                    grad_at="retained"), False),
    ("mlp", dict(bias="huber", huber_mode="mixture", delta=0.05, retention="l2", optimizer="momentum",
                 grad_at="previous"), True),
    ("mlp", dict(bias="lp", p=3.0, retention="lq", optimizer="gd", grad_at="retained"), False),
    ("mlp", dict(bias="l2", retention="kl", optimizer="gd", grad_at="previous"), True),
    ("mlp", dict(bias="robust", retention="elastic", gamma=0.005, optimizer="momentum", grad_at="retained"), False),
    ("mlp", dict(bias="dot", retention="none", optimizer="gd", grad_at="previous"), False),
    ("mlp", dict(bias="huber", huber_mode="norm", delta=0.05, retention="l2", optimizer="gd",
                 grad_at="retained"), True),
]

IDS = [f"{m}-{f['bias']}{'-' + f['huber_mode'] if 'huber_mode' in f else ''}-{f['retention']}-{f['optimizer']}-"
       f"{f['grad_at']}" for m, f, _ in GRAD_SPECS]


def _inputs(i, memory, fields, shared, T):
    spec = MemorySpec(memory=memory, expansion=2, **fields)
    shapes = dict(B=2, H=1, Dk=3, Dv=2) if memory == "linear" else dict(B=1, H=2, Dk=2, Dv=2)
    d = random_inputs(spec, T=T, seed=100 + i, init=True, shared_init=shared, **shapes)
    return spec, d


def _gradcheck(spec, d, chunk_size, scan):
    memory_is_mlp = spec.memory == "mlp"
    diff_alpha = spec.retention != "none"
    diff_theta = spec.optimizer == "momentum"
    init = d["initial_state"]
    init = tuple(init) if memory_is_mlp else (init,)
    leaves = [d["q"], d["k"], d["v"], d["eta"]]
    if diff_alpha:
        leaves.append(d["alpha"])
    if diff_theta:
        leaves.append(d["theta"])
    leaves += list(init)
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]

    def fn(*xs):
        xs = list(xs)
        q, k, v, eta = xs[:4]
        rest = xs[4:]
        alpha = rest.pop(0) if diff_alpha else d["alpha"]
        theta = rest.pop(0) if diff_theta else None
        st0 = tuple(rest) if memory_is_mlp else rest[0]
        o, W = scan(q, k, v, eta, alpha, theta, spec, st0, chunk_size)
        return (o,) + (tuple(W) if isinstance(W, tuple) else (W,))

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def _impl(q, k, v, eta, alpha, theta, spec, st0, chunk_size):
    o, st = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, theta=theta, spec=spec, initial_state=st0,
                           chunk_size=chunk_size)
    return o, st.W


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["exact", "chunk2"])
@pytest.mark.parametrize("i", range(len(GRAD_SPECS)), ids=IDS)
def test_gradcheck(i, chunk_size):
    memory, fields, shared = GRAD_SPECS[i]
    spec, d = _inputs(i, memory, fields, shared, T=5)
    _gradcheck(spec, d, chunk_size, _impl)


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["exact", "chunk2"])
def test_gradcheck_zero_initial_state(chunk_size):
    """Gradients exist with the default (zero) initial state, including lq/kl read-outs of A = 0."""
    for fields in (dict(bias="lp", retention="lq", grad_at="retained"),
                   dict(bias="l2", retention="kl", grad_at="retained", optimizer="momentum"),
                   dict(bias="huber", huber_mode="norm", delta=20.0, retention="elastic")):
        spec = MemorySpec(**fields)
        d = random_inputs(spec, T=5, B=1, H=2, Dk=2, Dv=3, seed=7)
        leaves = [d["q"], d["k"], d["v"], d["eta"], d["alpha"]]
        if spec.optimizer == "momentum":
            leaves.append(d["theta"])
        leaves = [x.detach().clone().requires_grad_(True) for x in leaves]

        def fn(q, k, v, eta, alpha, theta=None):
            o, st = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, theta=theta, spec=spec, chunk_size=chunk_size)
            return o, st.W

        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("i", [2, 8, 9, 11])
def test_gradients_match_reference_autograd(i):
    """Analytic gradients of memory_scan equal autograd through the reference (exact and chunked)."""
    memory, fields, shared = GRAD_SPECS[i]
    spec, d = _inputs(i, memory, fields, shared, T=5)
    for chunk_size in (None, 2):
        init = d["initial_state"]
        init = tuple(init) if isinstance(init, tuple) else (init,)
        leaves = [x.detach().clone().requires_grad_(True) for x in
                  [d["q"], d["k"], d["v"], d["eta"], d["alpha"]] + list(init)]
        q, k, v, eta, alpha, *st0 = leaves
        st0 = tuple(st0) if memory == "mlp" else st0[0]
        theta = d["theta"]
        o, st = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, theta=theta, spec=spec, initial_state=st0,
                               chunk_size=chunk_size)
        if chunk_size is None:
            ro, _, _, rW = reference_scan(q, k, v, eta, alpha, theta, spec, st0)
        else:
            ro, _, _, rW = reference_minibatch_scan(q, k, v, eta, alpha, theta, spec, st0, chunk_size=chunk_size)
        gen = torch.Generator().manual_seed(i)
        wo = torch.randn(o.shape, generator=gen, dtype=o.dtype)
        Ws = st.W if isinstance(st.W, tuple) else (st.W,)
        rWs = rW if isinstance(rW, tuple) else (rW,)
        ww = [torch.randn(w.shape, generator=gen, dtype=o.dtype) for w in Ws]
        loss = (o * wo).sum() + sum((w * c).sum() for w, c in zip(Ws, ww))
        rloss = (ro * wo).sum() + sum((w * c).sum() for w, c in zip(rWs, ww))
        g = torch.autograd.grad(loss, leaves)
        rg = torch.autograd.grad(rloss, leaves)
        for name, a, b in zip(["q", "k", "v", "eta", "alpha", "A0", "A0_out"], g, rg):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=lambda m, n=name: f"d/d{n} ({chunk_size}): {m}")


@pytest.mark.parametrize("i", [3, 9])
def test_reference_is_differentiable(i):
    """The reference itself passes gradcheck (so comparing autograd gradients with it is meaningful)."""
    memory, fields, shared = GRAD_SPECS[i]
    spec, d = _inputs(i, memory, fields, shared, T=3)

    def ref(q, k, v, eta, alpha, theta, spec, st0, chunk_size):
        if chunk_size is None:
            o, _, _, W = reference_scan(q, k, v, eta, alpha, theta, spec, st0)
        else:
            o, _, _, W = reference_minibatch_scan(q, k, v, eta, alpha, theta, spec, st0, chunk_size=chunk_size)
        return o, W

    _gradcheck(spec, d, None, ref)
    _gradcheck(spec, d, 2, ref)


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["exact", "chunk2"])
@pytest.mark.parametrize("memory,mode", [("linear", "coord"), ("linear", "norm"), ("mlp", "mixture")])
def test_gradcheck_per_token_delta(memory, mode, chunk_size):
    """d/dδ_t of the per-token huber threshold (memory_scan(delta=...)); δ_t is chosen below every |e|
    (coord) or ‖e‖ (norm/mixture), far from the kink, so the clipped branch - the one that depends on
    δ - is taken."""
    spec = MemorySpec(memory=memory, bias="huber", huber_mode=mode, retention="l2", expansion=2)
    shapes = dict(B=2, H=1, Dk=3, Dv=2) if memory == "linear" else dict(B=1, H=2, Dk=2, Dv=2)
    d = random_inputs(spec, T=5, seed=61, init=True, **shapes)
    delta = torch.full(d["eta"].shape, 0.01 if mode == "coord" else 0.05, dtype=torch.float64)
    delta = (delta * (1 + torch.rand(delta.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
             ).requires_grad_(True)
    q, k, v, eta = (x.detach().clone().requires_grad_(True) for x in (d["q"], d["k"], d["v"], d["eta"]))

    def fn(q, k, v, eta, delta):
        o, st = ml.memory_scan(q, k, v, eta=eta, alpha=d["alpha"], spec=spec, initial_state=d["initial_state"],
                               chunk_size=chunk_size, delta=delta)
        return o

    assert torch.autograd.gradcheck(fn, (q, k, v, eta, delta), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["exact", "chunk2"])
@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_gradcheck_initial_momentum_state(memory, chunk_size):
    """initial_state as a MemoryState: gradients flow into both the accumulator A and the momentum S."""
    spec = MemorySpec(memory=memory, bias="lp", retention="l2", optimizer="momentum", grad_at="retained",
                      expansion=2)
    shapes = dict(B=2, H=1, Dk=3, Dv=2) if memory == "linear" else dict(B=1, H=1, Dk=2, Dv=2)
    d = random_inputs(spec, T=5, seed=71, init_momentum=True, **shapes)
    A0, S0 = d["initial_state"].A, d["initial_state"].S
    A0, S0 = (A0,) if torch.is_tensor(A0) else A0, (S0,) if torch.is_tensor(S0) else S0
    n = len(A0)
    leaves = [x.detach().clone().requires_grad_(True) for x in (d["theta"],) + tuple(A0) + tuple(S0)]

    def fn(theta, *st):
        A, S = st[:n], st[n:]
        init = ml.MemoryState(A=A[0] if n == 1 else A, S=S[0] if n == 1 else S, W=None)
        o, state = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=theta, spec=spec,
                                  initial_state=init, chunk_size=chunk_size)
        Ss = state.S if isinstance(state.S, tuple) else (state.S,)
        return (o,) + Ss

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gelu_derivative_matches_autograd():
    """`memory.GeluDerivative` (u ⊙ GELU'(h) with its backward written out) against autograd differentiating
    GELU twice, independently of aten's gelu_backward: values and gradients, then gradcheck."""
    from miras_lite.memory import GeluDerivative

    g = torch.Generator().manual_seed(5)
    u = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    h = (3 * torch.randn(3, 4, 6, generator=g, dtype=torch.float64)).requires_grad_()
    grad = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)

    def by_autograd(u, h):
        (derivative,) = torch.autograd.grad(torch.nn.functional.gelu(h).sum(), h, create_graph=True)
        return u * derivative

    out, expected = GeluDerivative.apply(u, h), by_autograd(u, h)
    torch.testing.assert_close(out, expected)
    for a, e in zip(torch.autograd.grad(out, (u, h), grad), torch.autograd.grad(expected, (u, h), grad)):
        torch.testing.assert_close(a, e)
    assert torch.autograd.gradcheck(GeluDerivative.apply, (u, h))
