"""memory_scan(chunk_size=None) against the slow reference (docs/design.md §2-3), for every valid spec.

Every combination memory × bias (huber in its three modes) × retention × optimizer × grad_at is
either compared with `reference_scan` in float64 to 1e-6 relative (outputs, A, S and W), or - when
`MemorySpec` refuses it (implicit outside linear/l2/{none,l2}) - checked to raise ValueError.
"""

import itertools

import pytest
import torch

import miras_lite as ml
from miras_lite.spec import MemorySpec
from cases import BIAS_CASES as BIASES
from cases import GRAD_POINTS as GRAD_AT
from cases import MEMORIES, OPTIMIZERS, RETENTIONS
from reference import (
    assert_close,
    impl_state,
    random_inputs,
    reference_minibatch_scan,
    reference_scan,
)

ALL_COMBOS = list(itertools.product(MEMORIES, BIASES, RETENTIONS, OPTIMIZERS, GRAD_AT))


def combo_is_valid(memory, bias, retention, optimizer):
    if optimizer == "implicit":
        return memory == "linear" and bias == "l2" and retention in ("none", "l2")
    return True


def make_spec(memory, bias, retention, optimizer, grad_at, **extra):
    kw = dict(BIASES[bias])
    kw.update(extra)
    return MemorySpec(memory=memory, retention=retention, optimizer=optimizer, grad_at=grad_at,
                      expansion=2, **kw)


def shapes_for(memory):
    return dict(B=2, H=2, Dk=3, Dv=4) if memory == "linear" else dict(B=2, H=2, Dk=3, Dv=3)


def run_pair(spec, d, chunk_size=None, return_states=None):
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec,
                           initial_state=impl_state(d["initial_state"]), chunk_size=chunk_size,
                           return_states=return_states)
    if chunk_size is None:
        ref = reference_scan(d["q"], d["k"], d["v"], d["eta"], d["alpha"], d["theta"], spec, d["initial_state"],
                             return_history=True)
    else:
        ref = reference_minibatch_scan(d["q"], d["k"], d["v"], d["eta"], d["alpha"], d["theta"], spec,
                                       d["initial_state"], chunk_size=chunk_size, return_history=True)
    return (o, st), ref


def check_against_reference(spec, d, chunk_size=None):
    (o, st), (ro, rA, rS, rW, _) = run_pair(spec, d, chunk_size)
    assert o.shape == d["v"].shape
    assert o.dtype == d["q"].dtype
    assert_close(o, ro, what="o")
    assert_close(st.A, rA, what="A")
    assert_close(st.S, rS, what="S")
    assert_close(st.W, rW, what="W")


@pytest.mark.parametrize("memory,bias,retention,optimizer,grad_at", ALL_COMBOS,
                         ids=["-".join(c) for c in ALL_COMBOS])
def test_exact_matches_reference(memory, bias, retention, optimizer, grad_at):
    if not combo_is_valid(memory, bias, retention, optimizer):
        with pytest.raises(ValueError, match="implicit"):
            make_spec(memory, bias, retention, optimizer, grad_at)
        return
    spec = make_spec(memory, bias, retention, optimizer, grad_at)
    idx = ALL_COMBOS.index((memory, bias, retention, optimizer, grad_at))
    T = 5 + idx % 3
    # 0: no initial state, 1: random per-batch A, 2: random A shared by the batch,
    # 3: a MemoryState with random A and S (momentum) / random A (other optimisers)
    mode = idx % 4
    momentum = optimizer == "momentum"
    d = random_inputs(spec, T=T, seed=idx, init=mode in (1, 2, 3), shared_init=mode == 2,
                      init_momentum=mode == 3 and momentum, **shapes_for(memory))
    check_against_reference(spec, d)


# --- numeric fields (each away from its default at least once) -------------------------------------

NUMERIC_VARIANTS = [
    ("linear", dict(bias="lp", p=1.5, retention="l2")),
    ("linear", dict(bias="lp", p=4.0, retention="lq", q=3.0)),
    ("linear", dict(bias="l2", retention="lq", q=1.5)),
    ("linear", dict(bias="l2", retention="lq", q=2.0)),
    ("linear", dict(bias="dot", retention="kl", simplex_scale=2.5)),
    ("linear", dict(bias="robust", robust_delta=1.5, retention="elastic", gamma=0.05)),
    ("linear", dict(bias="huber", huber_mode="mixture", delta=2.0, eps=1e-3)),
    ("linear", dict(bias="lp", p=1.0, eps=1e-3, retention="none")),
    ("mlp", dict(bias="lp", p=2.5, retention="lq", q=3.0, expansion=1)),
    ("mlp", dict(bias="huber", huber_mode="norm", delta=0.3, retention="kl", simplex_scale=3.0, expansion=3)),
    ("mlp", dict(bias="robust", robust_delta=0.0, retention="elastic", gamma=0.0)),
    ("mlp", dict(bias="huber", huber_mode="coord", delta=0.1, optimizer="momentum", grad_at="retained")),
]


@pytest.mark.parametrize("i", range(len(NUMERIC_VARIANTS)),
                         ids=[f"{m}-{i}" for i, (m, _) in enumerate(NUMERIC_VARIANTS)])
def test_numeric_fields_match_reference(i):
    memory, fields = NUMERIC_VARIANTS[i]
    fields = dict(fields)
    fields.setdefault("expansion", 2)
    spec = MemorySpec(memory=memory, **fields)
    d = random_inputs(spec, T=6, seed=1000 + i, init=i % 2 == 0, **shapes_for(memory))
    check_against_reference(spec, d)


def test_lp_at_p2_is_l2():
    for memory in MEMORIES:
        s2 = MemorySpec(memory=memory, bias="l2", expansion=2)
        sp = s2.replace(bias="lp", p=2.0)
        d = random_inputs(s2, T=6, seed=5, init=True, **shapes_for(memory))
        o1, st1 = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=s2,
                                 initial_state=d["initial_state"])
        o2, st2 = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=sp,
                                 initial_state=d["initial_state"])
        assert_close(o2, o1, rtol=1e-9, atol=1e-12)
        assert_close(st2.W, st1.W, rtol=1e-9, atol=1e-12)


def test_lq_at_q2_is_l2_retention():
    for memory in MEMORIES:
        s = MemorySpec(memory=memory, bias="lp", retention="l2", expansion=2)
        d = random_inputs(s, T=6, seed=6, init=True, **shapes_for(memory))
        o1, st1 = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=s,
                                 initial_state=d["initial_state"])
        o2, st2 = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"],
                                 spec=s.replace(retention="lq", q=2.0), initial_state=d["initial_state"])
        assert_close(o2, o1, rtol=1e-9, atol=1e-12)
        assert_close(st2.W, st1.W, rtol=1e-9, atol=1e-12)


# --- rates as floats / 0-dim tensors ------------------------------------------------------------


@pytest.mark.parametrize("memory", MEMORIES)
def test_scalar_rates_broadcast(memory):
    spec = MemorySpec(memory=memory, bias="l2", retention="l2", optimizer="momentum", expansion=2)
    d = random_inputs(spec, T=5, seed=7, init=True, **shapes_for(memory))
    B, T, H = d["eta"].shape
    full = dict(eta=torch.full((B, T, H), 0.3, dtype=torch.float64),
                alpha=torch.full((B, T, H), 0.9, dtype=torch.float64),
                theta=torch.full((B, T, H), 0.5, dtype=torch.float64))
    o_ref, *_ = reference_scan(d["q"], d["k"], d["v"], full["eta"], full["alpha"], full["theta"], spec,
                               d["initial_state"])
    for rates in (dict(eta=0.3, alpha=0.9, theta=0.5),
                  dict(eta=torch.tensor(0.3, dtype=torch.float64), alpha=torch.tensor(0.9, dtype=torch.float64),
                       theta=torch.tensor(0.5, dtype=torch.float64)),
                  full):
        o, _ = ml.memory_scan(d["q"], d["k"], d["v"], spec=spec, initial_state=d["initial_state"], **rates)
        assert_close(o, o_ref)


def test_default_rates_and_spec():
    """memory_scan(q, k, v) uses eta=1, alpha=1, the default MemorySpec (linear, l2, l2, gd)."""
    spec = MemorySpec()
    d = random_inputs(spec, T=5, seed=8)
    o, st = ml.memory_scan(d["q"], d["k"], d["v"])
    ro, rA, rS, rW = reference_scan(d["q"], d["k"], d["v"], 1.0, 1.0, None, spec)
    assert_close(o, ro)
    assert_close(st.W, rW)


def test_theta_ignored_without_momentum():
    spec = MemorySpec(bias="lp", retention="lq")
    d = random_inputs(spec, T=5, seed=9)
    o1, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=spec)
    o2, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=0.7, spec=spec)
    assert_close(o2, o1, rtol=0, atol=0)
    assert torch.count_nonzero(st.S) == 0


# --- return_states snapshots --------------------------------------------------------------------

SNAPSHOT_SPECS = [
    ("linear", dict(bias="l2", retention="lq", optimizer="momentum")),
    ("linear", dict(bias="huber", huber_mode="norm", retention="kl", grad_at="retained")),
    ("linear", dict(bias="l2", retention="l2", grad_at="retained")),
    ("mlp", dict(bias="lp", retention="kl")),
    ("mlp", dict(bias="l2", retention="elastic", optimizer="momentum")),
]


@pytest.mark.parametrize("memory,fields", SNAPSHOT_SPECS)
@pytest.mark.parametrize("s", [1, 2, 3, 7])
def test_return_states_snapshots(memory, fields, s):
    spec = MemorySpec(memory=memory, expansion=2, **fields)
    d = random_inputs(spec, T=7, seed=11 + s, init=True, **shapes_for(memory))
    (o, st), (ro, rA, rS, rW, hist) = run_pair(spec, d, return_states=s)
    B, T, H = d["eta"].shape
    idx = [j * s - 1 for j in range(1, T // s + 1)]
    expect = tuple(hh[:, idx] for hh in (hist if isinstance(hist, tuple) else (hist,)))
    snaps = st.snapshots
    if memory == "linear":
        assert torch.is_tensor(snaps)
        assert snaps.shape == (B, T // s, H, 3, 4)
    else:
        assert isinstance(snaps, tuple) and len(snaps) == 2
        assert snaps[0].shape == (B, T // s, H, 3, 6)
        assert snaps[1].shape == (B, T // s, H, 6, 3)
    assert_close(snaps, expect, what="snapshots")
    assert_close(o, ro, what="o")
    # the last snapshot after T tokens is the final memory
    if T % s == 0:
        assert_close(tuple(x[:, -1] for x in (snaps if isinstance(snaps, tuple) else (snaps,))), st.W,
                     rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_return_states_longer_than_sequence(memory, chunk_size):
    """return_states=s > T: T // s = 0 snapshots, i.e. an empty [B, 0, H, ...] tensor (tuple for mlp)."""
    spec = MemorySpec(memory=memory, expansion=2)
    d = random_inputs(spec, T=3, seed=3, **shapes_for(memory))
    _, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=spec,
                           chunk_size=chunk_size, return_states=4)
    B, H = 2, 2
    if memory == "linear":
        assert torch.is_tensor(st.snapshots) and st.snapshots.shape == (B, 0, H, 3, 4)
    else:
        assert [tuple(x.shape) for x in st.snapshots] == [(B, 0, H, 3, 6), (B, 0, H, 6, 3)]


def test_no_snapshots_by_default():
    spec = MemorySpec()
    d = random_inputs(spec, T=5, seed=3)
    _, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=spec)
    assert st.snapshots is None


# --- continuation from a returned state -----------------------------------------------------------

CONT_SPECS = [
    ("linear", dict(bias="l2", retention="l2", optimizer="momentum", grad_at="retained")),
    ("linear", dict(bias="lp", retention="lq", optimizer="momentum")),
    ("linear", dict(bias="robust", retention="kl")),
    ("linear", dict(bias="huber", retention="elastic", optimizer="momentum")),
    ("linear", dict(bias="l2", retention="none", optimizer="implicit")),
    ("mlp", dict(bias="l2", retention="lq", optimizer="momentum")),
    ("mlp", dict(bias="huber", huber_mode="mixture", retention="kl", optimizer="momentum", grad_at="retained")),
]


@pytest.mark.parametrize("memory,fields", CONT_SPECS)
def test_continue_from_state(memory, fields):
    """Scanning tokens [0, T1) then [T1, T) from the returned MemoryState equals one scan of [0, T)."""
    spec = MemorySpec(memory=memory, expansion=2, **fields)
    d = random_inputs(spec, T=7, seed=21, init=True, **shapes_for(memory))
    T1 = 3

    def sl(x, a, b):
        return None if x is None else x[:, a:b]

    kw = lambda a, b: dict(eta=sl(d["eta"], a, b), alpha=sl(d["alpha"], a, b), theta=sl(d["theta"], a, b), spec=spec)
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], initial_state=d["initial_state"], **kw(0, 7))
    o1, st1 = ml.memory_scan(d["q"][:, :T1], d["k"][:, :T1], d["v"][:, :T1], initial_state=d["initial_state"],
                             **kw(0, T1))
    o2, st2 = ml.memory_scan(d["q"][:, T1:], d["k"][:, T1:], d["v"][:, T1:], initial_state=st1, **kw(T1, 7))
    assert_close(torch.cat([o1, o2], dim=1), o, rtol=1e-9, atol=1e-12)
    assert_close(st2.A, st.A, rtol=1e-9, atol=1e-12)
    assert_close(st2.S, st.S, rtol=1e-9, atol=1e-12)
    assert_close(st2.W, st.W, rtol=1e-9, atol=1e-12)


def test_S_is_zero_without_momentum():
    """docs/design.md §5: state.S is zeros unless optimizer == "momentum" (even if a MemoryState with S is given)."""
    spec = MemorySpec(bias="l2", retention="l2")
    d = random_inputs(spec.replace(optimizer="momentum"), T=5, seed=12, init_momentum=True)
    _, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=spec,
                           initial_state=impl_state(d["initial_state"]))
    assert st.S.shape == st.A.shape
    assert torch.count_nonzero(st.S) == 0


def test_state_W_is_readout_of_A():
    """state.W = N(state.A): lq normalised, kl a scaled column simplex, identity otherwise."""
    d = random_inputs(MemorySpec(), T=5, seed=4)
    for retention in ("l2", "elastic", "lq", "kl"):
        spec = MemorySpec(bias="lp", retention=retention, simplex_scale=2.0)
        _, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=spec)
        if retention in ("l2", "elastic"):
            assert_close(st.W, st.A, rtol=0, atol=0)
        elif retention == "kl":
            assert_close(st.W.sum(dim=-2), torch.full_like(st.W.sum(dim=-2), 2.0), rtol=1e-12, atol=1e-12)
            assert bool((st.W > 0).all())
        else:
            nrm = st.A.abs().pow(4).sum(dim=(-2, -1), keepdim=True).pow(0.25)
            assert_close(st.W, st.A / nrm**2, rtol=1e-10, atol=1e-12)


def test_float32_close_to_float64():
    for memory in MEMORIES:
        spec = MemorySpec(memory=memory, bias="huber", retention="lq", optimizer="momentum", expansion=2)
        d = random_inputs(spec, T=6, seed=31, init=True, **shapes_for(memory))
        o64, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec,
                                initial_state=d["initial_state"])
        f = lambda x: None if x is None else (tuple(t.float() for t in x) if isinstance(x, tuple) else x.float())
        o32, st32 = ml.memory_scan(f(d["q"]), f(d["k"]), f(d["v"]), eta=f(d["eta"]), alpha=f(d["alpha"]),
                                   theta=f(d["theta"]), spec=spec, initial_state=f(d["initial_state"]))
        assert o32.dtype == torch.float32
        torch.testing.assert_close(o32.double(), o64, rtol=1e-3, atol=1e-4)


# --- the reference itself -----------------------------------------------------------------------


@pytest.mark.parametrize("memory", MEMORIES)
def test_reference_minibatch_chunk1_is_exact(memory):
    """Self-consistency of the two reference loops: chunk_size=1 is the exact recurrence."""
    for retention in RETENTIONS:
        for optimizer, grad_at in (("gd", "retained"), ("momentum", "previous")):
            spec = MemorySpec(memory=memory, bias="lp", retention=retention, optimizer=optimizer, grad_at=grad_at,
                              expansion=2)
            d = random_inputs(spec, T=5, seed=2, init=True, **shapes_for(memory))
            args = (d["q"], d["k"], d["v"], d["eta"], d["alpha"], d["theta"], spec, d["initial_state"])
            a = reference_scan(*args)
            b = reference_minibatch_scan(*args, chunk_size=1)
            for x, y in zip(a, b):
                assert_close(x, y, rtol=0, atol=0)


def test_reference_linear_mlp_gradients_agree_with_autograd():
    """The reference's closed-form linear gradient k ⊗ g equals autograd of the loss for l2/lp biases."""
    spec = MemorySpec(bias="lp", p=3.0)
    torch.manual_seed(0)
    W = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    from reference import memory_gradient

    (G,), _ = memory_gradient((W,), k, v, spec)
    e = k @ W - v
    loss = ((e * e + spec.eps) ** (spec.p / 2)).sum() / spec.p
    (G2,) = torch.autograd.grad(loss, W)
    assert_close(G, G2, rtol=1e-12, atol=1e-14)


# --- per-token huber threshold (memory_scan(delta=...), an extension documented in its docstring) ----


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("mode", ["coord", "norm", "mixture"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_per_token_delta_matches_reference(memory, mode, chunk_size):
    spec = MemorySpec(memory=memory, bias="huber", huber_mode=mode, retention="l2", optimizer="momentum",
                      expansion=2)
    d = random_inputs(spec, T=7, seed=41, init=True, **shapes_for(memory))
    delta = 0.2 + 1.8 * torch.rand(d["eta"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec,
                           initial_state=d["initial_state"], chunk_size=chunk_size, delta=delta)
    args = (d["q"], d["k"], d["v"], d["eta"], d["alpha"], d["theta"], spec, d["initial_state"])
    if chunk_size is None:
        ro, _, _, rW = reference_scan(*args, delta=delta)
    else:
        ro, _, _, rW = reference_minibatch_scan(*args, chunk_size=chunk_size, delta=delta)
    assert_close(o, ro, what="o")
    assert_close(st.W, rW, what="W")
    # a constant per-token delta is spec.delta
    o1, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec,
                           initial_state=d["initial_state"], chunk_size=chunk_size, delta=0.7)
    o2, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"],
                           spec=spec.replace(delta=0.7), initial_state=d["initial_state"], chunk_size=chunk_size)
    assert_close(o1, o2, rtol=1e-12, atol=1e-14)


def test_per_token_delta_validation():
    spec = MemorySpec(bias="huber")
    d = random_inputs(spec, T=4, seed=2)
    with pytest.raises(ValueError, match="delta"):
        ml.memory_scan(d["q"], d["k"], d["v"], spec=MemorySpec(bias="l2"), delta=0.5)
    for bad in (0.0, -1.0, torch.zeros(2, 4, 2, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)):
        with pytest.raises(ValueError, match="delta"):
            ml.memory_scan(d["q"], d["k"], d["v"], spec=spec, delta=bad)
