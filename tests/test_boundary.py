"""memory_scan(chunk_size=C, chunk_rule="boundary"): the Miras paper's parallel rule for lq and kl.

* against `reference_boundary_scan` (a slow token loop) for every bias × optimizer × grad_at × memory with
  retention lq and kl, C in {2, 3}, T not a multiple of C: outputs, A, S and W, in float64;
* float64 gradcheck with respect to q, k, v, η, α (θ) and the initial state;
* chunk_size=1 is the exact recurrence; a chunk reads its lag token's read-out (lq: one normaliser);
* every other retention: the boundary rule is the mini-batch rule.
"""

import itertools

import pytest
import torch

import miras_lite as ml
from cases import BIASES, GRAD_POINTS, MEMORIES, OPTIMIZERS
from miras_lite import dispatch
from miras_lite.spec import MemorySpec
from reference import assert_close, impl_state, random_inputs, reference_boundary_scan, reference_minibatch_scan

SPECS = [MemorySpec(memory=memory, retention=retention, optimizer=optimizer, grad_at=grad_at, expansion=2, **bias)
         for memory, retention, optimizer, grad_at, bias in itertools.product(MEMORIES, ("lq", "kl"), OPTIMIZERS,
                                                                              GRAD_POINTS, BIASES)
         if optimizer != "implicit"]


def _id(spec):
    mode = f"-{spec.huber_mode}" if spec.bias == "huber" else ""
    return f"{spec.memory}-{spec.bias}{mode}-{spec.retention}-{spec.optimizer}-{spec.grad_at}"


def _case(spec, seed, T=7, **shape):
    shape = shape or (dict(B=2, H=2, Dk=3, Dv=4) if spec.memory == "linear" else dict(B=1, H=2, Dk=3, Dv=3))
    return random_inputs(spec, T=T, seed=seed, init=seed % 3 > 0, init_momentum=seed % 3 == 2, **shape)


def _scan(spec, d, chunk_size, **kw):
    return ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec,
                          initial_state=impl_state(d["initial_state"]), chunk_size=chunk_size, chunk_rule="boundary",
                          **kw)


@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_matches_the_token_loop(spec):
    index = SPECS.index(spec)
    C = 2 + index % 2
    d = _case(spec, seed=index, T=7 if C == 2 else 8)
    o, state = _scan(spec, d, C)
    ro, rA, rS, rW = reference_boundary_scan(d["q"], d["k"], d["v"], d["eta"], d["alpha"], d["theta"], spec,
                                             d["initial_state"], chunk_size=C)
    assert_close(o, ro, what="o")
    assert_close(state.A, rA, what="A")
    assert_close(state.S, rS, what="S")
    assert_close(state.W, rW, what="W")


@pytest.mark.parametrize("spec", [s for s in SPECS if s.bias in ("l2", "lp")], ids=_id)
def test_gradcheck(spec):
    d = _case(spec, seed=3 + SPECS.index(spec), T=5, **(dict(B=1, H=1, Dk=2, Dv=3) if spec.memory == "linear"
                                                            else dict(B=1, H=1, Dk=2, Dv=2)))
    names = ["q", "k", "v", "eta", "alpha"] + (["theta"] if spec.optimizer == "momentum" else [])
    init = d["initial_state"]
    initial = (init,) if torch.is_tensor(init) else tuple(init) if isinstance(init, tuple) else ()

    def fn(*xs):
        inputs = dict(zip(names, xs[:len(names)]))
        state = xs[len(names):]
        state = (state[0] if spec.memory == "linear" else tuple(state)) if state else None
        o, st = ml.memory_scan(inputs["q"], inputs["k"], inputs["v"], eta=inputs["eta"], alpha=inputs["alpha"],
                               theta=inputs.get("theta"), spec=spec, initial_state=state, chunk_size=2,
                               chunk_rule="boundary")
        return o, *(st.A if isinstance(st.A, tuple) else (st.A,))

    leaves = [d[n].detach().clone().requires_grad_() for n in names] + [x.detach().clone().requires_grad_()
                                                                       for x in initial]
    # kl ends a chunk in logits, log(W): its curvature at small weights costs finite differences ~1e-4 relative
    rtol = 1e-4 if spec.retention == "kl" else 1e-5
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=rtol)


@pytest.mark.parametrize("spec", SPECS[::3], ids=_id)
def test_one_token_chunks_are_the_exact_recurrence(spec):
    d = _case(spec, seed=50 + SPECS.index(spec))
    o, state = _scan(spec, d, 1)
    exact_o, exact_state = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"],
                                          spec=spec, initial_state=impl_state(d["initial_state"]))
    assert_close(o, exact_o, what="o")
    assert_close(state.A, exact_state.A, what="A")
    assert_close(state.W, exact_state.W, what="W")


def test_a_chunk_reads_its_lag_tokens_normaliser():
    """lq, C = T: the first token is exact; every later read is the linear accumulator over the lag token's
    normaliser, one scalar, so o_t · ‖A_lag‖_q^{q−2} is the linear-retention scan from A_lag."""
    spec = MemorySpec(bias="dot", retention="lq", q=4.0)
    d = _case(spec, seed=1, T=6)
    o, _ = _scan(spec, d, 6)
    exact_o, lag = ml.memory_scan(d["q"][:, :1], d["k"][:, :1], d["v"][:, :1], eta=d["eta"][:, :1],
                                  alpha=d["alpha"][:, :1], spec=spec, initial_state=impl_state(d["initial_state"]))
    assert_close(o[:, :1], exact_o, what="lag token")
    rest, _ = ml.memory_scan(d["q"][:, 1:], d["k"][:, 1:], d["v"][:, 1:], eta=d["eta"][:, 1:], alpha=d["alpha"][:, 1:],
                             spec=spec.replace(retention="l2"), initial_state=lag.A)
    denominator = lag.A.abs().pow(4).sum((-2, -1)).pow(0.25).pow(2)  # [B, H]
    assert_close(o[:, 1:], rest / denominator[:, None, :, None], what="the rest of the chunk")


@pytest.mark.parametrize("retention", ["none", "l2", "elastic"])
def test_other_retentions_keep_the_minibatch_rule(retention):
    spec = MemorySpec(memory="mlp", bias="lp", retention=retention, optimizer="momentum", expansion=2)
    d = _case(spec, seed=9)
    o, state = _scan(spec, d, 3)
    ro, rA, rS, rW = reference_minibatch_scan(d["q"], d["k"], d["v"], d["eta"], d["alpha"], d["theta"], spec,
                                              d["initial_state"], chunk_size=3)
    assert_close(o, ro, what="o")
    assert_close(state.A, rA, what="A")


def test_the_table_sends_each_retention_to_its_rule():
    assert dispatch.plan(ml.preset("moneta"), 16, chunk_rule="boundary").implementation.name == "torch/boundary"
    assert dispatch.plan(ml.preset("memora"), 16, chunk_rule="boundary").implementation.name == "torch/boundary"
    assert dispatch.plan(ml.preset("titans"), 16, chunk_rule="boundary").implementation.name == "torch/dual"
    assert dispatch.plan(ml.preset("moneta"), 16).implementation.name == "torch/materialised"


def test_snapshots_and_bad_rule():
    spec = ml.preset("memora").replace(expansion=2)
    d = _case(spec, seed=4, T=8)
    o, state = _scan(spec, d, 2, return_states=4)
    assert state.snapshots[0].shape[1] == 2
    assert_close(tuple(s[:, -1] for s in state.snapshots), state.W, what="last snapshot")
    with pytest.raises(ValueError, match="^chunk_rule: 'paper' is not supported; allowed values: 'minibatch', 'boundary'"):
        ml.memory_scan(d["q"], d["k"], d["v"], spec=spec, chunk_size=2, chunk_rule="paper")
