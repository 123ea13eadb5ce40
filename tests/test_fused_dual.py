"""`ops/minibatch_fused.FusedDualScan`: the dual chunked scan with a hand-written backward.

Linear memory, retention none / l2, optimizer gd / implicit, every bias (and Huber mode, with and
without a per-token δ), both gradient points:

* float64 gradcheck of memory_scan(chunk_size=C) w.r.t. q, k, v, eta, alpha, initial_state and δ,
  C in {2, 3} with T not a multiple of C;
* values and gradients equal the generic dual path (the dispatch table without the fused row) to ~1e-12;
* the Function is what memory_scan runs for those specs, and only for them.

Kinks are kept away from the data: per-token δ is drawn so that some rows (Huber norm / mixture) or
coordinates (coord) lie inside and some outside, none within gradcheck's step of the boundary.
"""

import pytest
import torch

import miras_lite as ml
from miras_lite import dispatch
from miras_lite.spec import MemorySpec
from cases import BIASES
from reference import random_inputs

SPECS = [MemorySpec(retention=retention, optimizer="gd", grad_at=grad_at, **fields)
         for fields in BIASES for retention in ("none", "l2") for grad_at in ("previous", "retained")]
SPECS += [MemorySpec(bias="l2", retention=retention, optimizer="implicit", grad_at=grad_at)
          for retention in ("none", "l2") for grad_at in ("previous", "retained")]


def _id(spec):
    mode = f"-{spec.huber_mode}" if spec.bias == "huber" else ""
    return f"{spec.bias}{mode}-{spec.retention}-{spec.optimizer}-{spec.grad_at}"


def _case(spec, seed, T, B=2, H=1, Dk=3, Dv=2):
    """Leaves (q, k, v, eta, alpha, initial_state[, delta]) and which of them gradcheck may move."""
    d = random_inputs(spec, B=B, T=T, H=H, Dk=Dk, Dv=Dv, seed=seed, init=True, shared_init=seed % 2 == 0)
    leaves = dict(q=d["q"], k=d["k"], v=d["v"], eta=d["eta"], alpha=d["alpha"], initial_state=d["initial_state"])
    if spec.bias == "huber":
        generator = torch.Generator().manual_seed(seed + 1)
        scale = 0.4 if spec.huber_mode == "coord" else 1.0
        leaves["delta"] = scale * (0.5 + torch.rand(B, T, H, generator=generator, dtype=torch.float64))
    movable = [name for name in leaves if not (name == "alpha" and spec.retention == "none")]
    return leaves, movable


def _scan(spec, chunk_size, leaves):
    o, state = ml.memory_scan(leaves["q"], leaves["k"], leaves["v"], eta=leaves["eta"], alpha=leaves["alpha"],
                              spec=spec, initial_state=leaves["initial_state"], chunk_size=chunk_size,
                              delta=leaves.get("delta"))
    return o, state.A


@pytest.mark.parametrize("chunk_size", [2, 3])
@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_gradcheck(spec, chunk_size):
    leaves, movable = _case(spec, seed=7 * chunk_size + SPECS.index(spec), T=5 if chunk_size == 2 else 7)

    def fn(*xs):
        return _scan(spec, chunk_size, {**leaves, **dict(zip(movable, xs))})

    inputs = [leaves[name].detach().clone().requires_grad_() for name in movable]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def _values_and_grads(spec, chunk_size, leaves, seed):
    leaves = {name: x.detach().clone().requires_grad_() for name, x in leaves.items()}
    o, A = _scan(spec, chunk_size, leaves)
    generator = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=generator, dtype=x.dtype)).sum() for x in (o, A))
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return dict(o=o, A=A, **{f"d{n}": g for n, g in zip(names, grads)})


@pytest.mark.parametrize("chunk_size,T", [(2, 9), (3, 8), (4, 16), (64, 150)])
@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_matches_generic_path(spec, chunk_size, T, monkeypatch):
    leaves, _ = _case(spec, seed=31 + T, T=T, H=2, Dk=4, Dv=3)
    fused = _values_and_grads(spec, chunk_size, leaves, seed=T)
    monkeypatch.setattr(dispatch, "TABLE", tuple(row for row in dispatch.TABLE if row.name != "torch/minibatch_fused"))
    generic = _values_and_grads(spec, chunk_size, leaves, seed=T)
    for name, expected in generic.items():
        torch.testing.assert_close(fused[name], expected, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def _grad_fns(o):
    """Names of every node of o's autograd graph."""
    seen, stack, names = set(), [o.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("spec,chunk_size,fused", [
    (MemorySpec(bias="huber", huber_mode="norm"), 3, True),
    (MemorySpec(bias="l2", retention="none", optimizer="implicit"), 4, True),
    (MemorySpec(bias="dot", retention="l2"), None, True),  # exact-parallel dot: the dual update at C = 64
    (MemorySpec(bias="l2", retention="l2"), None, False),  # exact-parallel l2: the delta rule
    (MemorySpec(bias="l2", optimizer="momentum"), 3, False),
    (MemorySpec(bias="l2", retention="lq"), 3, False),
    (MemorySpec(memory="mlp", bias="l2", retention="l2"), 3, False),
], ids=lambda x: _id(x) if isinstance(x, MemorySpec) else str(x))
def test_dispatch(spec, chunk_size, fused):
    d = random_inputs(spec, T=70, Dk=4, Dv=4, seed=3, init=True)
    q = d["q"].requires_grad_()
    o, _ = ml.memory_scan(q, d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec,
                          initial_state=d["initial_state"], chunk_size=chunk_size)
    assert ("FusedDualScanBackward" in _grad_fns(o)) == fused


def test_snapshots_keep_the_generic_path_and_every_path_gives_the_same_values():
    spec = MemorySpec(bias="lp")
    d = random_inputs(spec, T=8, seed=5, init=True)
    kw = dict(eta=d["eta"], alpha=d["alpha"], spec=spec, initial_state=d["initial_state"], chunk_size=2)
    q = d["q"].requires_grad_()
    o, state = ml.memory_scan(q, d["k"], d["v"], return_states=4, **kw)
    assert "FusedDualScanBackward" not in _grad_fns(o) and state.snapshots.shape[1] == 2
    o_fused, state_fused = ml.memory_scan(q, d["k"], d["v"], **kw)
    with torch.no_grad():
        o_plain, state_plain = ml.memory_scan(q, d["k"], d["v"], **kw)
    for a, b in ((o_fused, o), (o_plain, o), (state_fused.A, state.A), (state_plain.A, state.A)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
