"""`kernels.mlp_minibatch`: the MLP-memory chunk kernel in Triton (on CPU under TRITON_INTERPRET=1).

Reference: the torch chunked path in float64, `memory_scan(..., chunk_size=C, backend="torch")` (`dual_scan` for
retention none / l2, `boundary_scan` for lq / kl). Compared: outputs, end weights and the gradients w.r.t. q, k, v,
η, α, θ, δ and the initial weights (shared by the batch), for each MLP preset, every bias, both gradient points,
momentum under the boundary rule, T = 1, a partial last chunk, one-token chunks, D not a power of two, and bf16
inputs. The kernel computes in float32; it must be as close to the float64 reference as torch's own float32 run
is (several of these chunks, kl's log and Yaad's ε = 1e-2 among them, lose digits in float32 whichever code runs).
"""

import pytest
import torch

import miras_lite as ml
from kernels import KernelLimit, mlp_minibatch
from miras_lite import dispatch
from miras_lite.presets import recommended
from miras_lite.spec import MemorySpec

pytestmark = pytest.mark.kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # without CUDA, conftest switches the interpreter on
MLP = MemorySpec(memory="mlp")


def _leaves(spec, T, D, seed, B=2, H=2, per_token_delta=False):
    """Token-major float64 inputs of memory_scan and an initial MLP memory shared by the batch ([H, ...])."""
    g = torch.Generator().manual_seed(seed)
    F = spec.expansion * D
    leaves = dict(
        q=torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1),
        k=torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1),
        v=torch.randn(B, T, H, D, generator=g, dtype=torch.float64),
        eta=0.1 + 0.4 * torch.rand(B, T, H, generator=g, dtype=torch.float64),
        alpha=(torch.ones(B, T, H, dtype=torch.float64) if spec.retention == "none"
               else 0.8 + 0.2 * torch.rand(B, T, H, generator=g, dtype=torch.float64)),
        w_in=torch.randn(H, D, F, generator=g, dtype=torch.float64) / D**0.5,
        w_out=torch.randn(H, F, D, generator=g, dtype=torch.float64) / F**0.5,
    )
    if spec.optimizer == "momentum":
        leaves["theta"] = 0.1 + 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)  # dθ grows as 1/θ
    if per_token_delta:
        leaves["delta"] = 0.3 + 0.6 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    return leaves


def _values_and_grads(spec, chunk_size, chunk_rule, backend, leaves, dtype):
    """o, both end weights and the gradients of a random projection of them w.r.t. every leaf, in float64."""
    leaves = {name: x.detach().to(DEVICE, dtype).requires_grad_() for name, x in leaves.items()}
    rates = {name: leaves.get(name) for name in ("eta", "alpha", "theta", "delta")}
    o, state = ml.memory_scan(leaves["q"], leaves["k"], leaves["v"], spec=spec,
                              initial_state=(leaves["w_in"], leaves["w_out"]), chunk_size=chunk_size,
                              backend=backend, chunk_rule=chunk_rule, **rates)
    outputs = {"o": o, "w_in_end": state.A[0], "w_out_end": state.A[1]}
    g = torch.Generator().manual_seed(1)
    loss = sum((x.double() * torch.randn(x.shape, generator=g, dtype=torch.float64).to(DEVICE)).sum()
               for x in outputs.values())
    loss.backward()
    return {**outputs, **{f"d{name}": x.grad for name, x in leaves.items()}}


def _error(actual, expected):
    """max |actual − expected| relative to max |expected|."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def _check(spec, T=11, chunk_size=4, D=8, chunk_rule="minibatch", seed=0, per_token_delta=False):
    leaves = _leaves(spec, T, D, seed, per_token_delta=per_token_delta)
    exact = _values_and_grads(spec, chunk_size, chunk_rule, "torch", leaves, torch.float64)
    torch32 = _values_and_grads(spec, chunk_size, chunk_rule, "torch", leaves, torch.float32)
    kernel = _values_and_grads(spec, chunk_size, chunk_rule, "triton", leaves, torch.float32)
    assert kernel.keys() == exact.keys()
    for name in exact:
        allowed = max(4 * _error(torch32[name], exact[name]), 1e-4)
        assert _error(kernel[name], exact[name]) <= allowed, name


PRESETS = [("ttt_mlp", "minibatch"), ("titans", "minibatch"), ("yaad", "minibatch"), ("moneta", "boundary"),
           ("memora", "boundary")]


@pytest.mark.parametrize("name, chunk_rule", PRESETS, ids=[name for name, _ in PRESETS])
def test_presets_match_torch(name, chunk_rule):
    _check(ml.preset(name), chunk_rule=chunk_rule, per_token_delta=name == "yaad")


BIASES = [dict(bias="dot"), dict(bias="lp", p=3.0), dict(bias="huber", huber_mode="coord", delta=0.3),
          dict(bias="huber", huber_mode="norm", delta=0.8), dict(bias="robust")]


@pytest.mark.parametrize("fields", BIASES, ids=lambda f: "-".join(str(x) for x in f.values()))
def test_each_bias_matches_torch(fields):
    _check(MLP.replace(retention="l2", **fields), per_token_delta=fields["bias"] == "huber")


@pytest.mark.parametrize("spec, chunk_rule", [
    (ml.preset("titans").replace(grad_at="retained", bias="lp"), "minibatch"),
    (ml.preset("moneta").replace(grad_at="retained"), "boundary"),
    (ml.preset("moneta").replace(optimizer="momentum"), "boundary"),
    (ml.preset("memora").replace(optimizer="momentum", grad_at="retained"), "boundary"),
], ids=["titans-retained", "moneta-retained", "moneta-momentum", "memora-momentum-retained"])
def test_gradient_points_and_momentum(spec, chunk_rule):
    _check(spec, chunk_rule=chunk_rule, seed=2)


@pytest.mark.parametrize("T, chunk_size, D, chunk_rule", [
    (1, 4, 8, "minibatch"), (1, 4, 8, "boundary"), (5, 1, 8, "minibatch"), (16, 16, 8, "minibatch"),
    (9, 4, 6, "boundary"),
], ids=["T1", "T1-boundary", "one-token-chunks", "one-full-chunk", "D6-partial"])
def test_shapes(T, chunk_size, D, chunk_rule):
    spec = ml.preset("moneta") if chunk_rule == "boundary" else ml.preset("titans")
    _check(spec, T=T, chunk_size=chunk_size, D=D, chunk_rule=chunk_rule, seed=T)


@pytest.mark.parametrize("name, chunk_rule", [("titans", "minibatch"), ("memora", "boundary")])
def test_hidden_units_in_several_blocks(name, chunk_rule, monkeypatch):
    """The kernels loop over blocks of hidden units; with blocks of 16 units, F = 4·6 = 24 takes a full block and a
    partial one, and every sum across blocks (LN's input, the read's second layer, kl's natural inputs, the
    backward's sums) must come out as in one block."""
    monkeypatch.setattr(mlp_minibatch, "WEIGHT_BLOCK", 16 * 16)
    assert mlp_minibatch._blocks(4, 6, 24) == (16, 16, 16)
    _check(ml.preset(name), T=9, D=6, chunk_rule=chunk_rule, seed=4)


def test_bfloat16_inputs_match_float32():
    """bf16 q, k, v, rates and weights, float32 accumulation: within bf16's rounding of the float32 torch run on
    the same (rounded) inputs."""
    spec = ml.preset("titans")
    leaves = {name: x.bfloat16() for name, x in _leaves(spec, 11, 16, seed=3).items()}
    expected = _values_and_grads(spec, 4, "minibatch", "torch", leaves, torch.float32)
    actual = _values_and_grads(spec, 4, "minibatch", "triton", leaves, torch.bfloat16)
    for name in expected:
        assert _error(actual[name], expected[name]) < 4e-2, name


def test_limits():
    """What was not checked to fit an H100's shared memory is refused (`backend="auto"` then runs torch)."""
    q = torch.zeros(1, 1, 4, 256)
    assert "chunk_size" in mlp_minibatch.limits(q[..., :8], q[..., :8], MLP, None)
    assert "D=256" in mlp_minibatch.limits(q, q, MLP, 16)
    assert mlp_minibatch.limits(q[..., :128], q[..., :128], MLP, 32) is None
    assert "chunk_size" in mlp_minibatch.limits(q[..., :64], q[..., :64], MLP, 64)
    with pytest.raises(KernelLimit, match="float64"):
        mlp_minibatch.mlp_minibatch_scan(*(q[..., :8].double(),) * 3, None, None, None, None, MLP, None, None, 4)


def test_dispatch_rows_cover_the_mlp_memory():
    """Retention none / l2 runs the mini-batch rows, lq / kl the boundary row; linear memories neither."""
    minibatch, boundary = (dispatch.IMPLEMENTATIONS[f"triton/mlp_{rule}"].covers for rule in ("minibatch", "boundary"))
    assert minibatch(ml.preset("titans")) is None and minibatch(ml.preset("yaad")) is None
    assert minibatch(ml.preset("moneta")) and boundary(ml.preset("moneta")) is None
    assert boundary(ml.preset("memora")) is None and boundary(ml.preset("titans"))
    assert minibatch(ml.preset("gated_deltanet")) and boundary(MemorySpec(retention="lq"))


@pytest.mark.parametrize("name", [name for name, _ in PRESETS])
def test_a_model_training_step_matches_torch(name):
    """A MirasLM of each MLP preset at its recommended chunk size: same loss and parameter gradients on the kernel
    (through the layer's learned initial memory, its gates and the boundary rule) as on torch."""
    results = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = ml.MirasLM(vocab_size=32, d_model=16, n_layers=1, num_heads=1, spec=name,
                           chunk_size=recommended(name).chunk_size, miras_kwargs=dict(backend=backend)).to(DEVICE)
        ids = torch.randint(0, 32, (2, 24)).to(DEVICE)
        logits = model(ids)["logits"]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        results[backend] = loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    assert _error(results["triton"][1], results["torch"][1]) < 1e-4
