"""`kernels/delta_rule.py`: the exact delta rule (UT transform) in Triton, under the interpreter on CPU.

Values and gradients (q, k, v, η, α and the initial state, through a random linear functional of the outputs and
the end memory) equal the token-by-token recurrence of `reference.reference_scan` (docs/design.md §2, float64) for
deltanet, gated_deltanet, longhorn, the grad_at="previous" forms (ttt_linear, gated_deltanet with the gradient at
W_{t−1}) and implicit steps with decay; with T = 1, T spanning several chunks with a partial last one, Dk ≠ Dv,
widths that are not powers of two and span several value blocks, head-major and token-major layouts, decays that
underflow, and bfloat16 inputs. `memory_scan(spec="gated_deltanet", backend="triton")` runs the kernel and equals
backend="torch".
"""

import pytest
import torch

import miras_lite as ml
from kernels import delta_rule
from miras_lite import dispatch
from reference import reference_scan

pytestmark = pytest.mark.kernels

SPECS = {
    "gated_deltanet": ml.preset("gated_deltanet"),
    "deltanet": ml.preset("deltanet"),
    "longhorn": ml.preset("longhorn"),
    "ttt_linear": ml.preset("ttt_linear"),
    "gated_deltanet-previous": ml.preset("gated_deltanet").replace(grad_at="previous"),
    "implicit-l2-retained": ml.preset("longhorn").replace(retention="l2", grad_at="retained"),
}
LEAVES = ("q", "k", "v", "eta", "alpha", "initial_state")


def _inputs(spec, B=1, T=37, H=2, Dk=5, Dv=7, seed=0):
    """float64 leaves [B, T, H, ·] with unit keys, η ∈ [0.1, 0.9] and α ∈ [0.7, 1] (1 for retention none)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low, high):
        return low + (high - low) * torch.rand(B, T, H, generator=generator, dtype=torch.float64)

    keys = torch.randn(B, T, H, Dk, generator=generator, dtype=torch.float64)
    return dict(
        q=torch.randn(B, T, H, Dk, generator=generator, dtype=torch.float64) / Dk ** 0.5,
        k=keys / keys.norm(dim=-1, keepdim=True),
        v=torch.randn(B, T, H, Dv, generator=generator, dtype=torch.float64),
        eta=uniform(0.1, 0.9),
        alpha=torch.ones(B, T, H, dtype=torch.float64) if spec.retention == "none" else uniform(0.7, 1.0),
        initial_state=0.3 * torch.randn(B, H, Dk, Dv, generator=generator, dtype=torch.float64),
    )


def _scan_with_grads(spec, inputs, implementation, dtype=torch.float64, head_major=False):
    """o, A_end and the gradients of Σ o ⊙ R_o + Σ A ⊙ R_A (R fixed random weights) w.r.t. every leaf."""
    leaves = {name: x.to(dtype).requires_grad_() for name, x in inputs.items()}
    q, k, v = (leaves[name] for name in ("q", "k", "v"))
    if implementation == "reference":
        o, A, _, _ = reference_scan(q, k, v, leaves["eta"], leaves["alpha"], None, spec, leaves["initial_state"])
    else:
        q, k, v = (x.transpose(1, 2).contiguous() if head_major else x.transpose(1, 2) for x in (q, k, v))
        o, A, _ = delta_rule.delta_rule_scan(q, k, v, leaves["eta"].transpose(1, 2), leaves["alpha"].transpose(1, 2),
                                             None, None, spec, leaves["initial_state"], None, None)
        o = o.transpose(1, 2)
    generator = torch.Generator().manual_seed(1)
    weight_o = torch.randn(o.shape, generator=generator, dtype=torch.float64).to(dtype)
    weight_A = torch.randn(A.shape, generator=generator, dtype=torch.float64).to(dtype)
    loss = (o * weight_o).sum() + (A * weight_A).sum()
    grads = torch.autograd.grad(loss, [leaves[name] for name in LEAVES])
    return o.double(), A.double(), dict(zip(LEAVES, (g.double() for g in grads)))


def _assert_close(got, want, name, tolerance):
    scale = want.abs().max().clamp_min(1.0)
    error = (got - want).abs().max()
    assert error <= tolerance * scale, f"{name}: max error {error:.3g} vs scale {scale:.3g}"


def _assert_matches_reference(spec, inputs, dtype=torch.float32, tolerance=2e-5, head_major=False):
    o, A, grads = _scan_with_grads(spec, inputs, "triton", dtype, head_major)
    o_ref, A_ref, grads_ref = _scan_with_grads(spec, {n: x.to(dtype).double() for n, x in inputs.items()}, "reference")
    _assert_close(o, o_ref, "o", tolerance)
    _assert_close(A, A_ref, "A", tolerance)
    for name in LEAVES:
        _assert_close(grads[name], grads_ref[name], f"d{name}", tolerance)


@pytest.mark.parametrize("name", SPECS)
def test_values_and_gradients_equal_the_exact_recurrence(name):
    """T = 37: two full chunks of 16 and a partial one of 5; Dk = 5, Dv = 7."""
    _assert_matches_reference(SPECS[name], _inputs(SPECS[name]))


def test_a_single_token():
    spec = SPECS["gated_deltanet"]
    _assert_matches_reference(spec, _inputs(spec, B=2, T=1, H=1, Dk=3, Dv=2, seed=3))


def test_wide_heads_in_head_major_layout():
    """Dk = 20 (a 32-wide key block), Dv = 40 (two 32-wide value blocks, the second one partial)."""
    spec = SPECS["gated_deltanet-previous"]
    _assert_matches_reference(spec, _inputs(spec, B=1, T=20, H=1, Dk=20, Dv=40, seed=4), head_major=True)


def test_strong_decay_underflows_without_nans():
    """α ≈ 10⁻³: the in-chunk decays e^{g_t} reach e^{−110}, below float32's range. (dα = d log α / α carries
    float32's rounding of d log α times 1/α ≈ 10³, hence the looser tolerance.)"""
    spec = SPECS["gated_deltanet"]
    inputs = _inputs(spec, T=34, seed=7)
    inputs["alpha"] = 1e-3 * (1.0 + inputs["alpha"])
    _assert_matches_reference(spec, inputs, tolerance=2e-4)


def test_bfloat16_inputs_match_the_float32_recurrence_of_the_rounded_inputs():
    spec = SPECS["gated_deltanet"]
    _assert_matches_reference(spec, _inputs(spec, T=24, seed=5), dtype=torch.bfloat16, tolerance=3e-2)


def test_memory_scan_runs_the_kernel_for_gated_deltanet():
    spec = SPECS["gated_deltanet"]
    plan = dispatch.plan(spec, None, "triton")
    assert (plan.implementation.load(), plan.passed_over) == (delta_rule.delta_rule_scan, ())
    inputs = _inputs(spec, B=2, T=18, H=1, Dk=4, Dv=3, seed=6)
    shared_state = inputs.pop("initial_state")[0]  # [H, Dk, Dv], shared by the batch
    leaves = {name: x.float().requires_grad_() for name, x in inputs.items()}
    scans = [ml.memory_scan(leaves["q"], leaves["k"], leaves["v"], eta=leaves["eta"], alpha=leaves["alpha"],
                            spec="gated_deltanet", initial_state=shared_state.float(), backend=backend)
             for backend in ("triton", "torch")]
    (o, state), (o_ref, state_ref) = scans
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.W, state_ref.W, rtol=1e-5, atol=1e-5)
    grads, grads_ref = (torch.autograd.grad(o.square().sum(), list(leaves.values())) for o, _ in scans)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)


def test_unsupported_specs_give_a_reason():
    """The kernel's row of the dispatch table covers exactly the delta-rule specs."""
    covers = dispatch.IMPLEMENTATIONS["triton/delta_rule"].covers
    for name in SPECS:
        assert covers(SPECS[name]) is None
    assert "bias" in covers(ml.preset("linear_attention"))
    assert "optimizer" in covers(ml.MemorySpec(optimizer="momentum"))
    assert "retention" in covers(ml.MemorySpec(retention="lq"))
    assert "linear" in covers(ml.preset("ttt_mlp"))


def test_scan_refuses_a_chunk_size():
    spec = SPECS["deltanet"]
    x = torch.zeros(1, 1, 2, 3)
    with pytest.raises(ValueError, match="^chunk_size"):
        delta_rule.delta_rule_scan(x, x, x, x[..., 0], x[..., 0] + 1, None, None, spec, torch.zeros(1, 1, 3, 3), None,
                                   4)
