"""Tests for miras_lite.layers: MirasLayer and AttentionLayer."""

import math

import pytest
import torch
from torch import nn

from miras_lite.gates import default_eta_max
from miras_lite.layers import AttentionLayer, MirasLayer, MirasLayerState
from miras_lite.scan import MemoryState
from miras_lite.presets import PRESETS
from miras_lite.spec import MemorySpec

ALL_PRESETS = sorted(PRESETS)
# one of each family: dot/none, dot/l2, delta rule, implicit, momentum+mlp, lq, kl, huber
CAUSAL_PRESETS = ["linear_attention", "mamba2", "gated_deltanet", "longhorn", "titans", "moneta", "memora", "yaad"]


def _x(B, T, d, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=g) * scale


def _layer(spec, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("d_model", 32)
    kw.setdefault("num_heads", 2)
    return MirasLayer(spec=spec, **kw)


# ----------------------------------------------------------------------------------------------
# shapes and state


@pytest.mark.parametrize("name", ["gated_deltanet", "titans", "retnet"])
def test_miras_shapes_and_state(name):
    layer = _layer(name, d_model=24, num_heads=3, chunk_size=4)
    x = _x(2, 10, 24)
    y = layer(x)
    assert y.shape == x.shape
    y2, state = layer(x, return_state=True)
    torch.testing.assert_close(y, y2)
    assert state is not None
    if layer.spec.memory == "linear":
        assert state.A.shape == (2, 3, 8, 8)
    else:
        E = layer.spec.expansion
        assert state.A[0].shape == (2, 3, 8, E * 8) and state.A[1].shape == (2, 3, E * 8, 8)


def test_miras_explicit_head_dim():
    layer = _layer("deltanet", d_model=20, num_heads=3, head_dim=6, chunk_size=None)
    x = _x(1, 5, 20)
    assert layer(x).shape == x.shape


def test_spec_object_and_retnet_constant_alpha():
    spec = MemorySpec(bias="dot", retention="l2")
    assert _layer(spec).alpha_mode == "data"
    assert _layer("mamba2").alpha_mode == "data"
    layer = _layer("retnet")
    assert layer.alpha_mode == "constant" and layer.alpha_proj is None
    _, alpha, _ = layer.rates(_x(2, 6, 32))
    assert alpha.shape == (2, 6, 2)
    torch.testing.assert_close(alpha, alpha[:1, :1].expand_as(alpha))
    # unused rate projections are not created
    la = _layer("linear_attention")
    assert la.alpha_proj is None and la.alpha_logit is None and la.theta_proj is None
    assert _layer("titans").theta_proj is not None


@pytest.mark.parametrize("name,chunk", [("gated_deltanet", None), ("titans", 4), ("memora", None), ("moneta", 4)])
def test_state_continuation(name, chunk):
    """Running [0, 8) then [8, T) from the returned state equals one run over [0, T) (the state
    carries the memory and the short conv's history)."""
    layer = _layer(name, chunk_size=chunk)
    x = _x(2, 12, 32)
    with torch.no_grad():
        y = layer(x)
        y1, s1 = layer(x[:, :8], return_state=True)
        y2, s2 = layer(x[:, 8:], initial_state=s1, return_state=True)
    assert isinstance(s1, MemoryState) and isinstance(s1, MirasLayerState)
    assert s1.conv.shape == (2, 3, 3 * 32)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-4)
    # a plain MemoryState (no conv history: the conv restarts from zero padding) is accepted too
    with torch.no_grad():
        y3 = layer(x[:, 8:], initial_state=MemoryState(s1.A, s1.S, s1.W))
    assert y3.shape == y2.shape and torch.isfinite(y3).all()


def test_gate_initial_values():
    x = torch.zeros(1, 3, 32)
    for name in ["gated_deltanet", "titans", "linear_attention"]:
        for chunk in [None, 1, 16]:
            layer = _layer(name, num_heads=4, chunk_size=chunk)
            eta, alpha, theta = layer.rates(x)
            assert layer.eta_max == default_eta_max(layer.spec, chunk)
            assert (eta > 0).all() and (eta < layer.eta_max).all()
            if name == "linear_attention":
                assert layer.eta_max == 1.0 and alpha == 1.0 and theta is None
                continue
            frac = 0.1 if layer.spec.memory == "mlp" else 0.5
            torch.testing.assert_close(eta, torch.full_like(eta, frac * layer.eta_max))
            lo, hi = (0.99, 0.999) if layer.spec.memory == "mlp" else (0.95, 0.99)
            assert alpha.min() >= lo - 1e-6 and alpha.max() <= hi + 1e-6
            torch.testing.assert_close(alpha[0, 0, [0, -1]], torch.tensor([lo, hi]))
            if name == "titans":
                torch.testing.assert_close(theta, torch.full_like(theta, 0.6))
    assert default_eta_max(PRESETS["gated_deltanet"], 64) == 2 / 64
    assert default_eta_max(PRESETS["gated_deltanet"], None) == 1.0
    assert default_eta_max(PRESETS["mamba2"], 64) == 1.0


def test_huber_delta_gate():
    layer = _layer("yaad")
    assert layer.delta_proj is not None
    delta = layer.huber_delta(torch.zeros(2, 5, 32))
    torch.testing.assert_close(delta, torch.full((2, 5, 2), PRESETS["yaad"].delta))
    spec = MemorySpec(bias="huber", huber_mode="norm", delta=0.3)
    torch.testing.assert_close(_layer(spec).huber_delta(torch.zeros(1, 2, 32)), torch.full((1, 2, 2), 0.3))
    fixed = _layer("yaad", delta_gate=False)
    assert fixed.delta_proj is None and fixed.huber_delta(torch.zeros(1, 2, 32)) is None
    assert _layer("titans").delta_proj is None
    # the gate changes the output once it moves away from spec.delta
    x = _x(1, 8, 32)
    with torch.no_grad():
        y0 = layer(x)
        layer.delta_proj.bias.add_(2.0)
        assert not torch.allclose(layer(x), y0)


def test_attention_shapes():
    layer = AttentionLayer(32, 4)
    x = _x(2, 7, 32)
    assert layer(x).shape == x.shape
    y, state = layer(x, return_state=True)
    assert state is None
    torch.testing.assert_close(y, layer(x))


# ----------------------------------------------------------------------------------------------
# causality


def _check_causal(layer, T=12, t0=5, d=32):
    x = _x(2, T, d, seed=1)
    x2 = x.clone()
    x2[:, t0 + 1:] = _x(2, T - t0 - 1, d, seed=2)
    with torch.no_grad():
        y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[:, : t0 + 1], y2[:, : t0 + 1], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(y[:, t0 + 1:], y2[:, t0 + 1:])


@pytest.mark.parametrize("chunk", [None, 4])
@pytest.mark.parametrize("name", CAUSAL_PRESETS)
def test_miras_causal(name, chunk):
    _check_causal(_layer(name, chunk_size=chunk))


@pytest.mark.parametrize("window", [None, 1, 3])
def test_attention_causal(window):
    torch.manual_seed(0)
    _check_causal(AttentionLayer(32, 4, window=window))


# ----------------------------------------------------------------------------------------------
# attention against a slow reference


def _rope_reference(x):
    """RoPE through complex numbers: pair (x_i, x_{i+D/2}) at position t times exp(i·t·10000^(-2i/D))."""
    B, H, T, D = x.shape
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double())
    freq = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    z = z * torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.arange(T)[:, None] * freq)
    return torch.cat([z.real, z.imag], -1)


def _short_conv_reference(p, weight):
    """``c_t = Σ_{j<K} w_{K−1−j} ⊙ p_{t−j}`` (p_s = 0 for s < 0), one channel at a time; weight ``[C, K]``."""
    T, K = p.shape[1], weight.shape[1]
    out = torch.zeros_like(p)
    for t in range(T):
        for j in range(min(K, t + 1)):
            out[:, t] += weight[:, K - 1 - j] * p[:, t - j]
    return out


def _attention_reference(layer, x):
    B, T, _ = x.shape
    H, D = layer.num_heads, layer.head_dim
    projected = [lin(x).double() for lin in (layer.q_proj, layer.k_proj, layer.v_proj)]
    if layer.conv_size:
        weight = layer.conv.conv.weight.double()[:, 0].split(H * D)  # [3·H·D, K]: q's channels, then k's, v's
        projected = [_short_conv_reference(p, w) for p, w in zip(projected, weight)]

    def heads(p):
        return p.view(B, T, H, D).transpose(1, 2)

    q, k, v = (heads(p) for p in projected)
    q, k = _rope_reference(q), _rope_reference(k)
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    W = layer.window if layer.window is not None else T
    for t in range(T):
        lo = max(0, t - W + 1)
        scores = (q[:, :, t, None, :] * k[:, :, lo: t + 1]).sum(-1) / math.sqrt(D)  # [B, H, n]
        p = torch.softmax(scores, -1)
        out[:, :, t] = (p[..., None] * v[:, :, lo: t + 1]).sum(-2)
    return layer.out_proj(out.transpose(1, 2).reshape(B, T, H * D).float())


@pytest.mark.parametrize("window", [None, 1, 4, 20])
def test_attention_matches_slow_reference(window):
    torch.manual_seed(0)
    layer = AttentionLayer(32, 2, window=window)
    x = _x(2, 13, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _attention_reference(layer, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("conv_size,window", [(1, None), (4, None), (4, 3)])
def test_attention_with_short_conv_matches_slow_reference(conv_size, window):
    torch.manual_seed(0)
    layer = AttentionLayer(32, 2, window=window, conv_size=conv_size)
    x = _x(2, 13, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _attention_reference(layer, x), atol=1e-5, rtol=1e-4)


def test_attention_short_conv_is_causal_and_off_by_default():
    torch.manual_seed(0)
    _check_causal(AttentionLayer(32, 4, conv_size=4))
    assert AttentionLayer(32, 4).conv is None


def test_attention_window_one_is_value_projection():
    torch.manual_seed(0)
    layer = AttentionLayer(16, 2, window=1)
    x = _x(1, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.out_proj(layer.v_proj(x)), atol=1e-6, rtol=1e-5)


def test_attention_mask():
    m = AttentionLayer(8, 2, window=3).mask(6)
    for t in range(6):
        for s in range(6):
            assert bool(m[t, s]) == (t - 3 < s <= t)


# ----------------------------------------------------------------------------------------------
# gradients, stability, chunked == exact


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_gradients_reach_every_parameter(name):
    layer = _layer(name, chunk_size=4)
    x = _x(2, 10, 32).requires_grad_(True)
    y = layer(x)
    (y * _x(2, 10, 32, seed=3)).sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert torch.isfinite(x.grad).all()


def test_attention_gradients():
    torch.manual_seed(0)
    layer = AttentionLayer(32, 4, window=3)
    x = _x(2, 10, 32).requires_grad_(True)
    (layer(x) * _x(2, 10, 32, seed=3)).sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


YAAD_XFAIL = pytest.mark.xfail(
    reason="known limit: the sign-like Huber-mixture gradient (δ·e/√(e²+ε), ε=1e-2 in the preset) makes the "
    "outer gradients of a fresh yaad layer explode over long exact sequences (see MirasLayer docstring)",
    strict=True,
)
STABLE_PRESETS = [pytest.param(n, marks=YAAD_XFAIL) if n == "yaad" else n for n in ALL_PRESETS]


def _check_stable(layer, T, grad_bound=1.0):
    x = _x(2, T, 64).requires_grad_(True)
    y, state = layer(x, return_state=True)
    assert torch.isfinite(y).all()
    std = y.std().item()
    assert 1e-2 < std < 10.0, std
    A = state.A if isinstance(state.A, tuple) else (state.A,)
    assert all(torch.isfinite(a).all() for a in A)
    y.square().mean().backward()
    for pname, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all(), pname
    assert torch.isfinite(x.grad).all()
    # the backward pass through time does not blow up (healthy layers give ~1e-3 here)
    assert x.grad.norm().item() < grad_bound, x.grad.norm().item()


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_fresh_layer_is_stable(name):
    """A fresh layer (default chunk_size=64) on random unit-scale inputs at T=512: finite outputs
    of a moderate scale, finite state and finite parameter gradients -- for every preset."""
    torch.manual_seed(0)
    layer = MirasLayer(64, 4, name)
    x = _x(2, 512, 64).requires_grad_(True)
    y, state = layer(x, return_state=True)
    assert torch.isfinite(y).all()
    assert 1e-2 < y.std().item() < 10.0, y.std().item()
    A = state.A if isinstance(state.A, tuple) else (state.A,)
    assert all(torch.isfinite(a).all() for a in A)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", STABLE_PRESETS)
def test_fresh_layer_gradients_stay_moderate(name):
    """Stricter: the input gradient stays moderate, chunked at T=512 and exact at T=192."""
    torch.manual_seed(0)
    _check_stable(MirasLayer(64, 4, name), 512)
    torch.manual_seed(0)
    _check_stable(MirasLayer(64, 4, name, chunk_size=None), 192)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_chunk_size_one_equals_exact(name):
    # float64: the semantics must agree; in float32 the sign-like Huber gradient of yaad amplifies
    # rounding differences to ~1e-5 within 9 tokens
    exact = _layer(name, chunk_size=None).double()
    chunked = _layer(name, chunk_size=1).double()
    chunked.load_state_dict(exact.state_dict())
    x = _x(2, 9, 32).double()
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), exact(x), atol=1e-10, rtol=1e-8)


# ----------------------------------------------------------------------------------------------
# argument validation


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(d_model=0, num_heads=2), "d_model"),
        (dict(d_model=32.0, num_heads=2), "d_model"),
        (dict(d_model=32, num_heads=0), "num_heads"),
        (dict(d_model=30, num_heads=4), "num_heads"),
        (dict(d_model=32, num_heads=2, head_dim=0), "head_dim"),
        (dict(d_model=32, num_heads=2, conv_size=-1), "conv_size"),
        (dict(d_model=32, num_heads=2, chunk_size=0), "chunk_size"),
        (dict(d_model=32, num_heads=2, chunk_size=2.5), "chunk_size"),
        (dict(d_model=32, num_heads=2, backend="cuda"), "backend"),
        (dict(d_model=32, num_heads=2, alpha_mode="learned"), "alpha_mode"),
        (dict(d_model=32, num_heads=2, spec=3), "spec"),
        (dict(d_model=32, num_heads=2, spec="no_such_model"), "preset"),
        (dict(d_model=32, num_heads=2, eta_max=0.0), "eta_max"),
        (dict(d_model=32, num_heads=2, eta_init=1.5), "eta_init"),
        (dict(d_model=32, num_heads=2, eta_max=0.5, eta_init=0.5), "eta_init"),
        (dict(d_model=32, num_heads=2, alpha_init=(0.9, 1.0)), "alpha_init"),
        (dict(d_model=32, num_heads=2, alpha_init=0.9), "alpha_init"),
        (dict(d_model=32, num_heads=2, theta_init=1.0), "theta_init"),
        (dict(d_model=32, num_heads=2, norm_eps=0), "norm_eps"),
        (dict(d_model=32, num_heads=2, spec="titans", delta_gate=True), "delta_gate"),
        (dict(d_model=32, num_heads=2, spec="yaad", delta_gate=1), "delta_gate"),
    ],
)
def test_miras_invalid_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MirasLayer(**kwargs)


def test_miras_invalid_input():
    layer = _layer("deltanet")
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="x must have shape"):
        AttentionLayer(32, 2)(torch.randn(5, 32))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(d_model=0, num_heads=2), "d_model"),
        (dict(d_model=32, num_heads=-1), "num_heads"),
        (dict(d_model=30, num_heads=4), "num_heads"),
        (dict(d_model=30, num_heads=2), "head_dim"),  # head_dim 15 is odd
        (dict(d_model=32, num_heads=2, window=0), "window"),
        (dict(d_model=32, num_heads=2, window=1.5), "window"),
        (dict(d_model=32, num_heads=2, conv_size=-1), "conv_size"),
    ],
)
def test_attention_invalid_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AttentionLayer(**kwargs)


def test_attention_rejects_state():
    with pytest.raises(ValueError, match="initial_state"):
        AttentionLayer(16, 2)(torch.randn(1, 3, 16), initial_state=torch.zeros(1))


# ----------------------------------------------------------------------------------------------
# a tiny learning check: associative recall


class _RecallModel(nn.Module):
    def __init__(self, vocab, d, mixer):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mixer = mixer
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.emb(tokens)
        h = h + self.mixer(h)
        return self.head(self.norm(h[:, -1]))


def _recall_batch(B, pairs, n_keys, n_values, g):
    """k1 v1 ... kn vn q: keys are tokens [0, n_keys), values [n_keys, n_keys + n_values);
    distinct keys, the query is one of them, the target is its value."""
    keys = torch.argsort(torch.rand(B, n_keys, generator=g), -1)[:, :pairs]
    values = n_keys + torch.randint(0, n_values, (B, pairs), generator=g)
    which = torch.randint(0, pairs, (B,), generator=g)
    seq = torch.stack([keys, values], -1).reshape(B, 2 * pairs)
    query = keys.gather(1, which[:, None])
    return torch.cat([seq, query], 1), values.gather(1, which[:, None])[:, 0]


def test_gated_deltanet_learns_associative_recall():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n_keys = n_values = 8
    model = _RecallModel(n_keys + n_values, 64, MirasLayer(64, 4, "gated_deltanet", chunk_size=None))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        tokens, target = _recall_batch(64, 4, n_keys, n_values, g)
        loss = nn.functional.cross_entropy(model(tokens), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tokens, target = _recall_batch(1024, 4, n_keys, n_values, g)
    with torch.no_grad():
        acc = (model(tokens).argmax(-1) == target).float().mean().item()
    assert acc > 0.5, acc  # chance is 1/8
