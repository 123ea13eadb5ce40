"""`miras_lite.dispatch`: the one table that picks the implementation of a scan, and what `memory_scan` does
when a Triton kernel cannot run it."""

import inspect
import warnings

import pytest
import torch

import kernels
import miras_lite as ml
from miras_lite import dispatch
from miras_lite.presets import recommended
from miras_lite.spec import BIASES, MEMORIES, OPTIMIZERS, RETENTIONS, MemorySpec


def _inputs(dtype=torch.float32, T=6):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(1, T, 2, 4, generator=g, dtype=dtype), dim=-1) for _ in range(2))
    return q, k, torch.randn(1, T, 2, 3, generator=g, dtype=dtype)


def _specs():
    """Every valid combination of the four axes."""
    for memory in MEMORIES:
        for bias in BIASES:
            for retention in RETENTIONS:
                for optimizer in OPTIMIZERS:
                    try:
                        yield MemorySpec(memory=memory, bias=bias, retention=retention, optimizer=optimizer)
                    except ValueError:
                        continue


@pytest.mark.parametrize("spec, chunk_size, name", [
    (ml.preset("gated_deltanet"), None, "triton/delta_rule"),
    (ml.preset("longhorn"), None, "triton/delta_rule"),
    (ml.preset("titans").replace(memory="linear"), None, "triton/recurrent"),
    (ml.MemorySpec(bias="huber", huber_mode="mixture", retention="kl"), None, "triton/recurrent"),
    (ml.MemorySpec(bias="lp"), 16, "triton/minibatch"),
])
def test_each_scan_goes_to_its_kernel(spec, chunk_size, name):
    plan = dispatch.plan(spec, chunk_size, "triton")
    assert plan.implementation.name == name
    assert all(reason.startswith("triton/delta_rule: ") for reason in plan.passed_over)  # only the one row before


@pytest.mark.parametrize("spec, chunk_size, name, chunk", [
    (ml.preset("gated_deltanet"), None, "torch/delta_rule", dispatch.EXACT_CHUNK),
    (ml.preset("linear_attention"), None, "torch/minibatch_fused", dispatch.EXACT_CHUNK),
    (ml.MemorySpec(bias="dot", retention="kl"), None, "torch/materialised", dispatch.EXACT_CHUNK),
    (ml.MemorySpec(bias="dot", retention="elastic"), None, "torch/recurrent", None),
    (ml.preset("titans"), None, "torch/recurrent", None),
    (ml.preset("titans"), 8, "torch/dual", 8),
    (ml.MemorySpec(bias="huber"), 8, "torch/minibatch_fused", 8),
    (ml.preset("moneta"), 8, "torch/materialised", 8),
])
def test_torch_rows(spec, chunk_size, name, chunk):
    plan = dispatch.plan(spec, chunk_size, "torch")
    assert (plan.implementation.name, plan.chunk_size) == (name, chunk)


def test_snapshots_every_few_tokens_leave_the_exact_chunk_forms_for_the_token_loop():
    plan = dispatch.plan(ml.preset("gated_deltanet"), None, "torch", return_states=4)
    assert plan.implementation.name == "torch/recurrent"
    assert "every 64 tokens" in plan.passed_over[0]
    assert dispatch.plan(ml.preset("gated_deltanet"), None, "torch", return_states=128).implementation.name == \
        "torch/delta_rule"


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_every_spec_has_a_torch_implementation_and_linear_specs_a_kernel(chunk_size):
    for spec in _specs():
        assert dispatch.plan(spec, chunk_size, "torch").implementation.backend == "torch"
        if spec.memory == "linear" and chunk_size is None:
            assert dispatch.plan(spec, chunk_size, "triton").implementation.backend == "triton"


def test_layers_default_to_the_exact_recurrence_where_it_is_chunk_parallel():
    assert dispatch.default_chunk_size(ml.preset("deltanet")) is None
    assert dispatch.default_chunk_size(ml.preset("retnet")) is None
    assert dispatch.default_chunk_size(ml.preset("titans")) == dispatch.MINIBATCH_CHUNK
    assert dispatch.default_chunk_size(MemorySpec(bias="lp")) == dispatch.MINIBATCH_CHUNK


@pytest.mark.parametrize("spec, chunk_size, return_states, reason", [
    (ml.preset("titans"), None, None, "linear memory only"),
    (ml.MemorySpec(retention="lq"), 8, None, "retention"),
    (ml.MemorySpec(optimizer="momentum"), 8, None, "optimizer"),
    (ml.preset("deltanet"), None, 2, "return_states"),
])
def test_triton_refuses_what_no_kernel_covers(spec, chunk_size, return_states, reason):
    q, k, v = _inputs()
    if spec.memory == "mlp":
        v = torch.randn(1, 6, 2, 4)
    with pytest.raises(ValueError, match=rf"^backend: no Triton kernel for .*{reason}"):
        ml.memory_scan(q, k, v, eta=0.5, theta=0.5, spec=spec, chunk_size=chunk_size, backend="triton",
                       return_states=return_states)


def test_triton_names_the_input_a_kernel_cannot_take():
    q, k, v = _inputs(torch.float64)
    with pytest.raises(kernels.KernelLimit, match=r"^q: dtype torch.float64 is not supported"):
        ml.memory_scan(q, k, v, eta=0.5, alpha=0.9, spec="gated_deltanet", backend="triton")


def test_auto_falls_back_to_torch_once_with_a_warning(monkeypatch):
    """On CUDA, "auto" runs torch, with one warning per spec, when the kernels refuse its inputs. Here the CPU
    plays CUDA: every row is a candidate, and every kernel refuses."""
    every_row = dispatch._candidates
    monkeypatch.setattr(dispatch, "_candidates", lambda semantics, backend, like: every_row(semantics, "triton", like)
                        + every_row(semantics, "torch", like) if backend == "auto" else every_row(semantics, backend, like))
    monkeypatch.setattr(dispatch, "_input_limits", lambda *args: "q: too large for the test")
    monkeypatch.setattr(ml.scan, "_WARNED_NO_KERNEL", set())
    q, k, v = _inputs()
    expected, _ = ml.memory_scan(q, k, v, eta=0.5, alpha=0.9, spec="gated_deltanet", backend="torch")
    with pytest.warns(UserWarning, match=r"no Triton kernel for .*q: too large for the test"):
        o, _ = ml.memory_scan(q, k, v, eta=0.5, alpha=0.9, spec="gated_deltanet", backend="auto")
    torch.testing.assert_close(o, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ml.memory_scan(q, k, v, eta=0.5, alpha=0.9, spec="gated_deltanet", backend="auto")


def test_auto_on_cpu_tensors_runs_torch_silently():
    q, k, v = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, _ = ml.memory_scan(q, k, v, eta=0.5, alpha=0.9, theta=0.5, spec=ml.preset("titans").replace(memory="linear"),
                              backend="auto")
    assert torch.isfinite(o).all()


@pytest.mark.parametrize("name", list(ml.PRESETS))
def test_every_preset_runs_on_a_kernel_at_its_training_settings(name):
    """On CUDA (`backend="auto"`) every preset's layer, at its recommended chunk size and the layers' default
    boundary rule, has a Triton row: the table is checked, not a GPU."""
    spec, chunk_size = ml.preset(name), recommended(name).chunk_size
    if chunk_size == "auto":
        chunk_size = dispatch.default_chunk_size(spec)
    chunk_rule = inspect.signature(ml.MirasLayer).parameters["chunk_rule"].default
    row = dispatch.plan(spec, chunk_size, "triton", chunk_rule=chunk_rule).implementation
    expected = {"ttt_mlp": "mlp_minibatch", "titans": "mlp_minibatch", "yaad": "mlp_minibatch",
                "moneta": "mlp_boundary", "memora": "mlp_boundary"}
    assert row.backend == "triton"
    if name in expected:
        assert row.name == f"triton/{expected[name]}"
