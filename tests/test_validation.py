"""Every ValueError the contract promises, with a message that names the offending argument (and, for
choices, the allowed values)."""

import dataclasses

import pytest
import torch

import miras_lite as ml
from cases import BIASES, GRAD_POINTS, MEMORIES, OPTIMIZERS, RETENTIONS
from miras_lite.spec import MemorySpec


# --- MemorySpec -------------------------------------------------------------------------------------

CHOICES = {
    "memory": MEMORIES,
    "bias": tuple(dict.fromkeys(case["bias"] for case in BIASES)),
    "retention": RETENTIONS,
    "optimizer": OPTIMIZERS,
    "grad_at": GRAD_POINTS,
    "huber_mode": tuple(case["huber_mode"] for case in BIASES if case["bias"] == "huber"),
}


@pytest.mark.parametrize("field", list(CHOICES))
@pytest.mark.parametrize("bad", ["nope", "", "L2", None, 3])
def test_bad_choice_names_field_and_allowed(field, bad):
    with pytest.raises(ValueError, match=field) as err:
        MemorySpec(**{field: bad})
    for allowed in CHOICES[field]:
        assert allowed in str(err.value)


@pytest.mark.parametrize("field", list(CHOICES))
def test_every_allowed_choice_accepted(field):
    for value in CHOICES[field]:
        if field == "optimizer" and value == "implicit":
            MemorySpec(optimizer="implicit", bias="l2", retention="l2")
        else:
            assert getattr(MemorySpec(**{field: value}), field) == value


@pytest.mark.parametrize("field,bad", [
    ("p", 0.5), ("p", 0.0), ("p", -2.0),
    ("q", 0.99), ("q", 0.0),
    ("delta", 0.0), ("delta", -1.0),
    ("robust_delta", -0.1),
    ("gamma", -0.01),
    ("simplex_scale", 0.0), ("simplex_scale", -1.0),
    ("eps", 0.0), ("eps", -1e-6),
    ("expansion", 0), ("expansion", -1), ("expansion", 1.5), ("expansion", True),
])
def test_bad_numeric_field(field, bad):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        MemorySpec(**{field: bad})


def test_numeric_boundaries_accepted():
    MemorySpec(p=1.0, q=1.0, robust_delta=0.0, gamma=0.0, expansion=1)


@pytest.mark.parametrize("kw", [
    dict(memory="mlp"),
    dict(bias="lp"), dict(bias="dot"), dict(bias="huber"), dict(bias="robust"),
    dict(retention="lq"), dict(retention="kl"), dict(retention="elastic"),
    dict(memory="mlp", retention="none"),
])
def test_implicit_only_for_linear_l2(kw):
    base = dict(optimizer="implicit", bias="l2", retention="l2", memory="linear")
    base.update(kw)
    with pytest.raises(ValueError, match="implicit"):
        MemorySpec(**base)


@pytest.mark.parametrize("retention", ["none", "l2"])
@pytest.mark.parametrize("grad_at", ["previous", "retained"])
def test_implicit_accepted(retention, grad_at):
    MemorySpec(optimizer="implicit", bias="l2", retention=retention, grad_at=grad_at)


def test_spec_frozen_and_replace():
    s = MemorySpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bias = "dot"
    r = s.replace(bias="lp", p=2.5)
    assert (r.bias, r.p) == ("lp", 2.5)
    assert (s.bias, s.p) == ("l2", 3.0)  # the original is unchanged
    assert r == MemorySpec(bias="lp", p=2.5)
    assert hash(r) == hash(MemorySpec(bias="lp", p=2.5))
    with pytest.raises(ValueError, match=r"\bp\b"):
        s.replace(p=0.1)
    with pytest.raises(ValueError, match="retention"):
        s.replace(retention="forget")
    with pytest.raises(ValueError, match="implicit"):
        s.replace(optimizer="implicit", retention="kl")
    with pytest.raises(ValueError, match="bogus"):
        s.replace(bogus=1)


def test_defaults():
    s = MemorySpec()
    assert (s.memory, s.bias, s.retention, s.optimizer, s.grad_at) == ("linear", "l2", "l2", "gd", "previous")
    assert (s.p, s.q, s.delta, s.huber_mode, s.robust_delta) == (3.0, 4.0, 1.0, "coord", 0.5)
    assert (s.gamma, s.simplex_scale, s.expansion, s.eps) == (0.01, 1.0, 4, 1e-6)


# --- memory_scan --------------------------------------------------------------------------------------


def _qkv(B=2, T=5, H=2, Dk=3, Dv=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, T, H, Dk, generator=g, dtype=dtype), torch.randn(B, T, H, Dk, generator=g, dtype=dtype),
            torch.randn(B, T, H, Dv, generator=g, dtype=dtype))


def _scan(**over):
    q, k, v = _qkv()
    kw = dict(q=q, k=k, v=v, eta=0.3, alpha=0.9, spec=MemorySpec())
    kw.update(over)
    return ml.memory_scan(kw.pop("q"), kw.pop("k"), kw.pop("v"), **kw)


def test_valid_call_works():
    o, st = _scan()
    assert o.shape == (2, 5, 2, 4) and st.W.shape == (2, 2, 3, 4)


def test_mlp_needs_dk_equal_dv():
    q, k, v = _qkv(Dk=3, Dv=4)
    with pytest.raises(ValueError, match=r"Dk|Dv|\bv\b"):
        ml.memory_scan(q, k, v, eta=0.3, alpha=0.9, spec=MemorySpec(memory="mlp"))


@pytest.mark.parametrize("alpha", [0.9, torch.full((2, 5, 2), 0.99, dtype=torch.float64), 1.0 + 1e-9])
def test_retention_none_requires_alpha_one(alpha):
    with pytest.raises(ValueError, match="alpha"):
        _scan(alpha=alpha, spec=MemorySpec(retention="none"))


def test_retention_none_alpha_one_ok():
    _scan(alpha=1.0, spec=MemorySpec(retention="none"))
    _scan(alpha=torch.ones(2, 5, 2, dtype=torch.float64), spec=MemorySpec(retention="none"))


def test_momentum_needs_theta():
    with pytest.raises(ValueError, match="theta"):
        _scan(spec=MemorySpec(optimizer="momentum"))
    _scan(spec=MemorySpec(optimizer="momentum"), theta=0.5)


def _bad_tensor(value, where=(1, 3, 0)):
    x = torch.full((2, 5, 2), 0.5, dtype=torch.float64)
    x[where] = value
    return x


@pytest.mark.parametrize("name,bad", [
    ("eta", -0.1), ("eta", -1e-12), ("eta", float("nan")), ("eta", float("inf")),
    ("alpha", 1.5), ("alpha", 0.0), ("alpha", -0.3), ("alpha", float("nan")),
    ("theta", 1.0), ("theta", 1.2), ("theta", -0.1),
])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor"])
def test_rate_ranges(name, bad, as_tensor):
    over = dict(spec=MemorySpec(optimizer="momentum"), theta=0.5)
    over[name] = _bad_tensor(bad) if as_tensor else bad
    with pytest.raises(ValueError, match=name):
        _scan(**over)


def test_rate_boundaries_accepted():
    _scan(eta=0.0, alpha=1.0, spec=MemorySpec(optimizer="momentum"), theta=0.0)


@pytest.mark.parametrize("name", ["eta", "alpha", "theta"])
@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 3), (1, 5, 2), (2, 5, 2, 1), (5,)])
def test_rate_shape(name, shape):
    over = dict(spec=MemorySpec(optimizer="momentum"), theta=0.5)
    over[name] = torch.full(shape, 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=name):
        _scan(**over)


def test_bad_q_k_v():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"\bq\b"):
        _scan(q=q[0])  # ndim 3
    with pytest.raises(ValueError, match=r"\bq\b"):
        _scan(q=q[..., None])  # ndim 5
    with pytest.raises(ValueError, match=r"\bq\b"):
        _scan(q=q.numpy())
    with pytest.raises(ValueError, match=r"\bk\b"):
        _scan(k=k[0])
    with pytest.raises(ValueError, match=r"\bk\b"):
        _scan(k=k[..., :2])  # Dk differs from q's
    with pytest.raises(ValueError, match=r"\bk\b"):
        _scan(k=k[:, :4])  # T differs
    with pytest.raises(ValueError, match=r"\bv\b"):
        _scan(v=v[0])
    with pytest.raises(ValueError, match=r"\bv\b"):
        _scan(v=v[:1])  # B differs
    with pytest.raises(ValueError, match=r"\bv\b"):
        _scan(v=v[:, :, :1])  # H differs
    with pytest.raises(ValueError, match=r"\bq\b|\bk\b|\bv\b"):
        _scan(q=q.long(), k=k.long(), v=v.long())


@pytest.mark.parametrize("chunk_size", [0, -1, 2.0, "2", 1.5])
def test_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        _scan(chunk_size=chunk_size)


@pytest.mark.parametrize("backend", ["cuda", "numpy", "", None, "Torch"])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="backend") as err:
        _scan(backend=backend)
    assert "torch" in str(err.value)


def test_backend_auto_and_torch_agree():
    o1, _ = _scan(backend="torch")
    o2, _ = _scan(backend="auto")
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)


@pytest.mark.parametrize("chunk_size,s", [(2, 3), (3, 4), (2, 1), (4, 2)])
def test_return_states_multiple_of_chunk_size(chunk_size, s):
    with pytest.raises(ValueError, match="return_states"):
        _scan(chunk_size=chunk_size, return_states=s)


@pytest.mark.parametrize("s", [0, -2, 1.5, "2"])
def test_bad_return_states(s):
    with pytest.raises(ValueError, match="return_states"):
        _scan(return_states=s)


def test_bad_initial_state():
    with pytest.raises(ValueError, match="initial_state"):
        _scan(initial_state=torch.zeros(2, 2, 4, 3, dtype=torch.float64))  # transposed
    with pytest.raises(ValueError, match="initial_state"):
        _scan(initial_state=torch.zeros(3, 2, 3, 4, dtype=torch.float64))  # wrong batch
    q, k, v = _qkv(Dv=3)
    with pytest.raises(ValueError, match="initial_state"):
        ml.memory_scan(q, k, v, eta=0.3, alpha=0.9, spec=MemorySpec(memory="mlp", expansion=2),
                       initial_state=torch.zeros(2, 3, 6, dtype=torch.float64))  # not a tuple
    with pytest.raises(ValueError, match="initial_state"):
        ml.memory_scan(q, k, v, eta=0.3, alpha=0.9, spec=MemorySpec(memory="mlp", expansion=2),
                       initial_state=(torch.zeros(2, 3, 6, dtype=torch.float64),
                                      torch.zeros(2, 3, 6, dtype=torch.float64)))  # W_out transposed


def test_messages_name_allowed_values_for_spec_and_backend():
    with pytest.raises(ValueError) as err:
        MemorySpec(retention="forget")
    assert all(r in str(err.value) for r in CHOICES["retention"])
    with pytest.raises(ValueError) as err:
        _scan(backend="jax")
    assert "torch" in str(err.value) and "auto" in str(err.value)


@pytest.mark.parametrize("name", ["eta", "alpha"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_rates_say_so(name, bad):
    rates = torch.full((2, 5, 2), 0.5)
    rates[1, 3, 0] = bad
    with pytest.raises(ValueError, match=rf"^{name}: contains NaN or inf.*lower the learning rate"):
        _scan(**{name: rates})


def test_triton_backend_with_the_interpreter_switched_off_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"^backend: 'triton' needs CUDA tensors on this machine"):
        _scan(backend="triton")
