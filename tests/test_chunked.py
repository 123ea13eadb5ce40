"""memory_scan(chunk_size=C): the mini-batch semantics of docs/design.md §4.

* against `reference_minibatch_scan` (a slow token loop) for every bias × retention × optimizer ×
  grad_at × memory, with C in {2, 3} and T not a multiple of C;
* chunk_size=1 equals chunk_size=None for every spec;
* chunk_size >= T works; return_states with chunk_size; continuation at chunk boundaries.
"""

import pytest
import torch

import miras_lite as ml
from miras_lite.spec import MemorySpec
from reference import assert_close, impl_state, random_inputs, reference_minibatch_scan, reference_scan
from test_reference_exact import (
    ALL_COMBOS,
    MEMORIES,
    combo_is_valid,
    make_spec,
    run_pair,
    shapes_for,
)

VALID = [c for c in ALL_COMBOS if combo_is_valid(*c[:4])]
IDS = ["-".join(c) for c in VALID]


def _case(combo, seed_offset=0):
    memory = combo[0]
    spec = make_spec(*combo)
    idx = VALID.index(combo)
    C = 2 + idx % 2
    T = 7 if C == 2 else 8  # never a multiple of C: the last chunk is partial
    mode = idx % 3
    d = random_inputs(spec, T=T, seed=500 + idx + seed_offset, init=mode > 0, shared_init=mode == 2,
                      init_momentum=mode == 2 and spec.optimizer == "momentum", **shapes_for(memory))
    return spec, d, C


@pytest.mark.parametrize("combo", VALID, ids=IDS)
def test_chunked_matches_minibatch_reference(combo):
    spec, d, C = _case(combo)
    (o, st), (ro, rA, rS, rW, _) = run_pair(spec, d, chunk_size=C)
    assert o.shape == d["v"].shape
    assert_close(o, ro, what="o")
    assert_close(st.A, rA, what="A")
    assert_close(st.S, rS, what="S")
    assert_close(st.W, rW, what="W")


@pytest.mark.parametrize("combo", VALID, ids=IDS)
def test_chunk1_equals_exact(combo):
    spec, d, _ = _case(combo, seed_offset=1000)
    kw = dict(eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec,
              initial_state=impl_state(d["initial_state"]))
    o1, st1 = ml.memory_scan(d["q"], d["k"], d["v"], chunk_size=1, **kw)
    o0, st0 = ml.memory_scan(d["q"], d["k"], d["v"], chunk_size=None, **kw)
    assert_close(o1, o0, rtol=1e-8, atol=1e-10, what="o")
    assert_close(st1.A, st0.A, rtol=1e-8, atol=1e-10, what="A")
    assert_close(st1.S, st0.S, rtol=1e-8, atol=1e-10, what="S")
    assert_close(st1.W, st0.W, rtol=1e-8, atol=1e-10, what="W")


LARGE_CHUNK_SPECS = [
    ("linear", "l2", "l2", "gd", "retained"),
    ("linear", "dot", "none", "gd", "previous"),
    ("linear", "lp", "lq", "momentum", "retained"),
    ("linear", "huber_norm", "elastic", "gd", "previous"),
    ("linear", "l2", "l2", "implicit", "retained"),
    ("linear", "robust", "kl", "momentum", "previous"),
    ("mlp", "l2", "l2", "momentum", "previous"),
    ("mlp", "huber_mixture", "kl", "gd", "retained"),
]


@pytest.mark.parametrize("combo", LARGE_CHUNK_SPECS, ids=["-".join(c) for c in LARGE_CHUNK_SPECS])
@pytest.mark.parametrize("C", [6, 64])
def test_chunk_at_least_T(combo, C):
    """One chunk covering the whole sequence: every gradient at the initial state."""
    memory = combo[0]
    spec = make_spec(*combo)
    d = random_inputs(spec, T=6, seed=77, init=True, **shapes_for(memory))
    (o, st), (ro, rA, rS, rW, _) = run_pair(spec, d, chunk_size=C)
    assert_close(o, ro, what="o")
    assert_close(st.A, rA, what="A")
    assert_close(st.S, rS, what="S")
    assert_close(st.W, rW, what="W")


def test_single_chunk_linear_attention_is_plain_sum():
    """For dot bias the gradient ignores the memory, so any chunking gives the exact recurrence."""
    spec = ml.preset("linear_attention")
    d = random_inputs(spec, T=7, seed=3)
    outs = [ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=1.0, spec=spec, chunk_size=C)[0]
            for C in (None, 1, 2, 3, 7, 100)]
    for o in outs[1:]:
        assert_close(o, outs[0], rtol=1e-9, atol=1e-12)


def test_chunked_differs_from_exact_for_l2():
    """Sanity: for a memory-dependent bias, mini-batch GD is a different model than per-token GD."""
    spec = MemorySpec(bias="l2", retention="l2")
    d = random_inputs(spec, T=6, seed=4)
    o_exact, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=spec)
    o_chunk, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=spec, chunk_size=3)
    assert (o_exact - o_chunk).abs().max() > 1e-4


SNAP_SPECS = [
    ("linear", "l2", "l2", "gd", "retained"),
    ("linear", "lp", "lq", "momentum", "previous"),
    ("linear", "huber_coord", "elastic", "momentum", "retained"),
    ("linear", "robust", "kl", "gd", "previous"),
    ("mlp", "lp", "lq", "gd", "retained"),
    ("mlp", "l2", "elastic", "momentum", "previous"),
]


@pytest.mark.parametrize("combo", SNAP_SPECS, ids=["-".join(c) for c in SNAP_SPECS])
@pytest.mark.parametrize("C,s", [(2, 2), (2, 4), (3, 3), (3, 6), (1, 3)])
def test_return_states_with_chunks(combo, C, s):
    memory = combo[0]
    spec = make_spec(*combo)
    d = random_inputs(spec, T=8, seed=91 + s, init=True, **shapes_for(memory))
    (o, st), (ro, rA, rS, rW, hist) = run_pair(spec, d, chunk_size=C, return_states=s)
    B, T, H = d["eta"].shape
    idx = [j * s - 1 for j in range(1, T // s + 1)]
    hist = hist if isinstance(hist, tuple) else (hist,)
    snaps = st.snapshots if isinstance(st.snapshots, tuple) else (st.snapshots,)
    assert isinstance(st.snapshots, tuple) == (memory == "mlp")
    assert all(x.shape[:3] == (B, T // s, H) for x in snaps)
    assert_close(snaps, tuple(hh[:, idx] for hh in hist), what="snapshots")
    assert_close(o, ro, what="o")


@pytest.mark.parametrize("combo", SNAP_SPECS[:3] + SNAP_SPECS[4:], ids=lambda c: "-".join(c))
def test_continue_at_chunk_boundary(combo):
    """Scanning [0, 4) then [4, 7) with C=2 equals one chunked scan of [0, 7) (4 is a chunk boundary)."""
    memory = combo[0]
    spec = make_spec(*combo)
    d = random_inputs(spec, T=7, seed=55, init=True, **shapes_for(memory))
    sl = lambda x, a, b: None if x is None else x[:, a:b]
    kw = lambda a, b: dict(eta=sl(d["eta"], a, b), alpha=sl(d["alpha"], a, b), theta=sl(d["theta"], a, b),
                           spec=spec, chunk_size=2)
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], initial_state=d["initial_state"], **kw(0, 7))
    o1, st1 = ml.memory_scan(d["q"][:, :4], d["k"][:, :4], d["v"][:, :4], initial_state=d["initial_state"],
                             **kw(0, 4))
    o2, st2 = ml.memory_scan(d["q"][:, 4:], d["k"][:, 4:], d["v"][:, 4:], initial_state=st1, **kw(4, 7))
    assert_close(torch.cat([o1, o2], 1), o, rtol=1e-9, atol=1e-12)
    assert_close(st2.W, st.W, rtol=1e-9, atol=1e-12)
    assert_close(st2.S, st.S, rtol=1e-9, atol=1e-12)


# --- the reference itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("memory", MEMORIES)
def test_reference_chunk_rules(memory):
    """Self-checks of the slow mini-batch loop: with a linear memory the dot bias ignores chunking (its
    gradient -k vᵀ does not depend on the memory; an MLP's does, through the Jacobian) and C >= T takes
    every gradient at the initial state (checked by hand for the linear l2 case)."""
    spec = MemorySpec(memory=memory, bias="dot", retention="l2", expansion=2)
    d = random_inputs(spec, T=5, seed=8, init=True, **shapes_for(memory))
    args = (d["q"], d["k"], d["v"], d["eta"], d["alpha"], None, spec, d["initial_state"])
    exact = reference_scan(*args)
    for C in (2, 3, 5):
        chunked = reference_minibatch_scan(*args, chunk_size=C)
        if memory == "linear":
            for x, y in zip(chunked, exact):
                assert_close(x, y, rtol=1e-12, atol=1e-14)
        else:  # the first chunk's first token is identical; later ones differ
            assert_close(chunked[0][:, 0], exact[0][:, 0], rtol=1e-12, atol=1e-14)
            assert (chunked[0] - exact[0]).abs().max() > 1e-6
    if memory == "linear":
        spec = MemorySpec(bias="l2", retention="l2", grad_at="previous")
        d = random_inputs(spec, T=5, B=1, H=1, seed=9, init=True)
        o, *_ = reference_minibatch_scan(d["q"], d["k"], d["v"], d["eta"], d["alpha"], None, spec,
                                         d["initial_state"], chunk_size=5)
        W0 = d["initial_state"][0, 0]
        W = W0
        for t in range(5):
            k, v, q = d["k"][0, t, 0], d["v"][0, t, 0], d["q"][0, t, 0]
            W = d["alpha"][0, t, 0] * W - d["eta"][0, t, 0] * torch.outer(k, k @ W0 - v)
            torch.testing.assert_close(o[0, t, 0], q @ W, rtol=1e-12, atol=1e-14)


READ_CASES = [("titans", "minibatch"), ("ttt_mlp", "minibatch"), ("gated_deltanet", "minibatch"),
              ("moneta", "boundary"), ("memora", "boundary")]


@pytest.mark.parametrize("name,rule", READ_CASES, ids=[f"{n}-{r}" for n, r in READ_CASES])
@pytest.mark.parametrize("read_batch", [1, 8])
def test_reads_grouped_by_chunks(name, rule, read_batch, monkeypatch):
    """The dual form reads a few chunks at a time (`minibatch.ChunkReads`, B·H·chunks ≥ READ_BATCH): reading
    one chunk at a time (1) or two (8 with B·H = 4; 4 full chunks then a partial one) gives the values and
    gradients of reading every chunk at once (the default at these sizes)."""
    from miras_lite.ops import minibatch

    spec = ml.preset(name)
    d = random_inputs(spec, T=9, seed=31, init=True, **shapes_for(spec.memory))
    names = [x for x in ("q", "k", "v", "eta", "alpha", "theta") if d[x] is not None]
    inputs = {x: d[x].clone().requires_grad_() for x in names}

    def scan_and_grads():
        o, state = ml.memory_scan(spec=spec, chunk_size=2, initial_state=impl_state(d["initial_state"]),
                                  chunk_rule=rule, **inputs)
        weights = state.W if isinstance(state.W, tuple) else (state.W,)
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() + sum(W.sum() for W in weights)
        return (o.detach(), *torch.autograd.grad(loss, list(inputs.values())))

    expected = scan_and_grads()
    monkeypatch.setattr(minibatch, "READ_BATCH", read_batch)
    for what, a, e in zip(["o", *(f"d{x}" for x in names)], scan_and_grads(), expected, strict=True):
        assert_close(a, e, rtol=1e-10, atol=1e-12, what=what)
