"""Presets: each named model reproduces its published update rule.

The closed forms below are written out explicitly as matrix recursions (row convention: the memory
W is Dk×Dv, the prediction for key k is kᵀW, the read is o_t = q_tᵀ W_t), one per (batch, head).
"""

import pytest
import torch

import cases
import miras_lite as ml
from miras_lite.presets import PRESETS, preset
from miras_lite.spec import MemorySpec
from reference import assert_close, random_inputs, reference_minibatch_scan, reference_scan

LINEAR_PRESETS = ("linear_attention", "retnet", "mamba2", "deltanet", "gated_deltanet", "longhorn", "ttt_linear")
MLP_PRESETS = ("ttt_mlp", "titans", "moneta", "yaad", "memora")


def test_preset_names():
    assert set(PRESETS) == set(LINEAR_PRESETS) | set(MLP_PRESETS)
    assert ml.PRESETS is PRESETS
    for name in PRESETS:
        assert isinstance(preset(name), MemorySpec)
        assert ml.preset(name) == PRESETS[name]


def test_unknown_preset_lists_allowed_names():
    with pytest.raises(ValueError) as err:
        preset("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in PRESETS:
        assert name in msg


def test_preset_fields():
    assert preset("linear_attention").bias == "dot" and preset("linear_attention").retention == "none"
    assert preset("gated_deltanet").grad_at == "retained"
    assert preset("deltanet").grad_at == "retained" and preset("deltanet").retention == "none"
    assert preset("longhorn").optimizer == "implicit"
    t = preset("titans")
    assert (t.memory, t.bias, t.retention, t.optimizer, t.grad_at) == ("mlp", "l2", "l2", "momentum", "previous")
    m = preset("moneta")
    assert (m.memory, m.bias, m.retention, m.p, m.q) == ("mlp", "lp", "lq", 3.0, 4.0)
    y = preset("yaad")
    assert (y.memory, y.bias, y.huber_mode) == ("mlp", "huber", "mixture")
    assert preset("memora").retention == "kl" and preset("memora").memory == "mlp"
    assert preset("ttt_mlp").memory == "mlp" and preset("ttt_linear").memory == "linear"


def _rates_for(name, d):
    spec = preset(name)
    B, T, H = d["eta"].shape
    alpha = d["alpha"]
    if spec.retention == "none":
        alpha = torch.ones_like(alpha)
    elif name == "retnet":  # a constant per-head decay
        alpha = torch.tensor([0.9, 0.75], dtype=torch.float64)[:H].expand(B, T, H).contiguous()
    return alpha


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_every_preset_runs(name, chunk_size):
    spec = preset(name)
    Dv = 3 if spec.memory == "mlp" else 4
    d = random_inputs(spec, B=2, T=5, H=2, Dk=3, Dv=Dv, seed=1)
    theta = d["theta"] if spec.optimizer == "momentum" else None
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=_rates_for(name, d), theta=theta, spec=spec,
                           chunk_size=chunk_size)
    assert o.shape == (2, 5, 2, Dv)
    assert torch.isfinite(o).all()
    Ws = st.W if isinstance(st.W, tuple) else (st.W,)
    assert all(torch.isfinite(w).all() for w in Ws)
    # float32, the dtype a model runs in
    o32, _ = ml.memory_scan(d["q"].float(), d["k"].float(), d["v"].float(), eta=d["eta"].float(),
                            alpha=_rates_for(name, d).float(), theta=None if theta is None else theta.float(),
                            spec=spec, chunk_size=chunk_size)
    assert o32.dtype == torch.float32 and torch.isfinite(o32).all()


# --- closed forms ---------------------------------------------------------------------------------


def closed_form(name, q, k, v, eta, alpha, W0):
    """The published recursion of each linear preset, one (batch, head) at a time."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    I = torch.eye(Dk, dtype=q.dtype)
    o = torch.zeros(B, T, H, Dv, dtype=q.dtype)
    Wf = torch.zeros(B, H, Dk, Dv, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            W = W0[b, h].clone()
            for t in range(T):
                kt, vt, qt = k[b, t, h][:, None], v[b, t, h][:, None], q[b, t, h][:, None]  # columns
                n, a = eta[b, t, h], alpha[b, t, h]
                if name == "linear_attention":
                    W = W + n * kt @ vt.T
                elif name in ("retnet", "mamba2"):
                    W = a * W + n * kt @ vt.T
                elif name == "deltanet":
                    W = (I - n * kt @ kt.T) @ W + n * kt @ vt.T
                elif name == "gated_deltanet":
                    W = a * (I - n * kt @ kt.T) @ W + n * kt @ vt.T
                elif name == "longhorn":
                    eps_t = n / (1 + n * (kt.T @ kt))
                    W = W - eps_t * kt @ (kt.T @ W - vt.T)
                elif name == "ttt_linear":  # one GD step on ½‖kᵀW − vᵀ‖² at the previous memory
                    W = W - n * kt @ (kt.T @ W - vt.T)
                else:
                    raise KeyError(name)
                o[b, t, h] = (qt.T @ W)[0]
            Wf[b, h] = W
    return o, Wf


@pytest.mark.parametrize("name", LINEAR_PRESETS)
@pytest.mark.parametrize("with_init", [False, True])
def test_linear_preset_closed_form(name, with_init):
    spec = preset(name)
    d = random_inputs(spec, B=2, T=7, H=2, Dk=3, Dv=4, seed=3 + with_init, init=with_init, k_scale=0.8)
    alpha = _rates_for(name, d)
    B, T, H = d["eta"].shape
    W0 = d["initial_state"] if with_init else torch.zeros(B, H, 3, 4, dtype=torch.float64)
    o_cf, W_cf = closed_form(name, d["q"], d["k"], d["v"], d["eta"], alpha, W0)
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=alpha, spec=spec,
                           initial_state=d["initial_state"])
    assert_close(o, o_cf, rtol=1e-9, atol=1e-12, what="o")
    assert_close(st.W, W_cf, rtol=1e-9, atol=1e-12, what="W")
    assert_close(st.A, W_cf, rtol=1e-9, atol=1e-12, what="A")
    # the reference agrees with the closed form too (self-consistency of the test suite)
    ro, _, _, rW = reference_scan(d["q"], d["k"], d["v"], d["eta"], alpha, None, spec, d["initial_state"])
    assert_close(ro, o_cf, rtol=1e-10, atol=1e-12)
    assert_close(rW, W_cf, rtol=1e-10, atol=1e-12)


def test_retnet_and_mamba2_decay_scalar_and_tensor():
    """RetNet: constant α (a python float); Mamba2: data-dependent α_t. Same recursion."""
    d = random_inputs(preset("mamba2"), B=1, T=6, H=2, seed=5)
    B, T, H = d["eta"].shape
    W0 = torch.zeros(B, H, 3, 4, dtype=torch.float64)
    o_cf, _ = closed_form("retnet", d["q"], d["k"], d["v"], torch.full((B, T, H), 0.5, dtype=torch.float64),
                          torch.full((B, T, H), 0.8, dtype=torch.float64), W0)
    o, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=0.5, alpha=0.8, spec=preset("retnet"))
    assert_close(o, o_cf, rtol=1e-10, atol=1e-12)
    o_cf, _ = closed_form("mamba2", d["q"], d["k"], d["v"], d["eta"], d["alpha"], W0)
    o, _ = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], spec=preset("mamba2"))
    assert_close(o, o_cf, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "linear_attention", "retnet"])
def test_delta_rule_presets_chunked_equal_closed_form(name):
    """For the delta-rule presets (retained, l2 or dot bias) chunked outputs must not drift from the
    closed form when C=1, and for dot-bias presets any C is exact."""
    spec = preset(name)
    d = random_inputs(spec, B=1, T=7, H=2, Dk=3, Dv=4, seed=6, k_scale=0.8)
    alpha = _rates_for(name, d)
    W0 = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    o_cf, W_cf = closed_form(name, d["q"], d["k"], d["v"], d["eta"], alpha, W0)
    for C in (1, 2, 3) if spec.bias == "dot" else (1,):
        o, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=alpha, spec=spec, chunk_size=C)
        assert_close(o, o_cf, rtol=1e-9, atol=1e-12)
        assert_close(st.W, W_cf, rtol=1e-9, atol=1e-12)


def test_deltanet_memorises_exactly():
    """DeltaNet with η = 1 and orthonormal keys stores each pair exactly: k_iᵀW = v_iᵀ afterwards."""
    Dk, Dv = 4, 3
    Q, _ = torch.linalg.qr(torch.randn(Dk, Dk, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    k = Q.T[None, :, None, :]  # [1, 4, 1, 4]: orthonormal rows
    v = torch.randn(1, Dk, 1, Dv, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, st = ml.memory_scan(k, k, v, eta=1.0, alpha=1.0, spec=preset("deltanet"))
    torch.testing.assert_close(k[0, :, 0] @ st.W[0, 0], v[0, :, 0], rtol=1e-10, atol=1e-12)


# --- MLP presets: against the reference -----------------------------------------------------------


@pytest.mark.parametrize("name", MLP_PRESETS)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_mlp_preset_matches_reference(name, chunk_size):
    spec = preset(name)
    D = 3
    d = random_inputs(spec, B=2, T=5, H=2, Dk=D, seed=9)
    theta = d["theta"]
    alpha = _rates_for(name, d)
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=alpha, theta=theta, spec=spec,
                           chunk_size=chunk_size)
    if chunk_size is None:
        ro, rA, rS, rW = reference_scan(d["q"], d["k"], d["v"], d["eta"], alpha, theta, spec)
    else:
        ro, rA, rS, rW = reference_minibatch_scan(d["q"], d["k"], d["v"], d["eta"], alpha, theta, spec,
                                                  chunk_size=chunk_size)
    assert isinstance(st.W, tuple) and st.W[0].shape == (2, 2, D, spec.expansion * D)
    assert st.W[1].shape == (2, 2, spec.expansion * D, D)
    assert_close(o, ro, what="o")
    assert_close(st.W, rW, what="W")
    assert_close(st.S, rS, what="S")


def test_titans_momentum_closed_form():
    """Titans: S_t = θ_t S_{t-1} − η_t ∇ℓ(W_{t-1}; k_t, v_t), W_t = α_t W_{t-1} + S_t, with the
    gradient at the *undecayed* previous memory, written out with torch.func on the MLP memory."""
    spec = preset("titans")
    D, E = 3, spec.expansion
    d = random_inputs(spec, B=1, T=6, H=1, Dk=D, seed=10)
    W_in0, W_out0 = ml.mlp_initial_state(1, D, E, dtype=torch.float64)

    def mlp(params, x):
        W_in, W_out = params
        z = torch.nn.functional.gelu(x @ W_in) @ W_out
        return x + torch.nn.functional.layer_norm(z, (D,), eps=1e-5)

    def loss(params, k, v):
        return 0.5 * ((mlp(params, k) - v) ** 2).sum()

    params = (W_in0[0], W_out0[0])
    S = (torch.zeros_like(params[0]), torch.zeros_like(params[1]))
    outs = []
    for t in range(6):
        k, v, q = d["k"][0, t, 0], d["v"][0, t, 0], d["q"][0, t, 0]
        n, a, th = d["eta"][0, t, 0], d["alpha"][0, t, 0], d["theta"][0, t, 0]
        G = torch.func.grad(loss)(params, k, v)
        S = tuple(th * s - n * g for s, g in zip(S, G))
        params = tuple(a * p + s for p, s in zip(params, S))
        outs.append(mlp(params, q))
    o, st = ml.memory_scan(d["q"], d["k"], d["v"], eta=d["eta"], alpha=d["alpha"], theta=d["theta"], spec=spec)
    assert_close(o[0, :, 0], torch.stack(outs), rtol=1e-9, atol=1e-12)
    assert_close((st.W[0][0, 0], st.W[1][0, 0]), params, rtol=1e-9, atol=1e-12)
    assert_close((st.S[0][0, 0], st.S[1][0, 0]), S, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["gated_deltanet", "titans"])
def test_read_memory_answers_like_the_scan(name):
    """Reading the final memory at q_T gives the scan's last output (read after write)."""
    torch.manual_seed(0)
    spec = ml.preset(name)
    q, k, v = (torch.randn(2, 6, 3, 4, dtype=torch.float64) for _ in range(3))
    o, state = ml.memory_scan(q, k, v, eta=0.1, alpha=0.9 if spec.retention != "none" else 1.0, theta=0.5, spec=spec)
    torch.testing.assert_close(ml.read_memory(spec, state.W, q[:, -1:]), o[:, -1:])


def test_cases_cover_every_axis_value():
    """The axis values every reference test runs (tests/cases.py) are exactly the library's."""
    from miras_lite import spec

    assert set(cases.MEMORIES) == set(spec.MEMORIES)
    assert {c["bias"] for c in cases.BIASES} == {c["bias"] for c in cases.BIAS_CASES.values()} == set(spec.BIASES)
    for bias_cases in (cases.BIASES, list(cases.BIAS_CASES.values())):
        assert {c["huber_mode"] for c in bias_cases if c["bias"] == "huber"} == set(spec.HUBER_MODES)
    assert set(cases.RETENTIONS) == set(spec.RETENTIONS)
    assert set(cases.OPTIMIZERS) == set(spec.OPTIMIZERS)
    assert set(cases.GRAD_POINTS) == set(spec.GRAD_POINTS)
