"""`memory_scan(backend=...)`: which Triton kernel runs a scan, and what happens when none can."""

import warnings

import pytest
import torch

import kernels
import miras_lite as ml
from kernels import chunk_delta, chunk_minibatch, fused_recurrent
from miras_lite import scan


def _inputs(dtype=torch.float32, T=6):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(1, T, 2, 4, generator=g, dtype=dtype), dim=-1) for _ in range(2))
    return q, k, torch.randn(1, T, 2, 3, generator=g, dtype=dtype)


@pytest.mark.parametrize("spec, chunk_size, module", [
    (ml.preset("gated_deltanet"), None, chunk_delta),
    (ml.preset("longhorn"), None, chunk_delta),
    (ml.preset("titans").replace(memory="linear"), None, fused_recurrent),
    (ml.MemorySpec(bias="huber", huber_mode="mixture", retention="kl"), None, fused_recurrent),
    (ml.MemorySpec(bias="lp"), 16, chunk_minibatch),
])
def test_each_scan_goes_to_its_kernel(spec, chunk_size, module):
    run, reason = kernels.kernel_for(spec, chunk_size, None)
    assert run is module.run and reason is None


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
    """On CUDA, "auto" runs torch, with one warning per spec, when the kernel refuses its inputs."""
    def refusing_kernel(*args):
        raise kernels.KernelLimit("q: too large for the test")

    monkeypatch.setattr(scan, "_triton_kernel", lambda backend, *args: None if backend == "torch" else refusing_kernel)
    monkeypatch.setattr(scan, "_WARNED_NO_KERNEL", set())
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
