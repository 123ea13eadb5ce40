"""Tests for miras_lite.models: MirasLM and ARMT (with its DPFP associative memory)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from miras_lite.models import ARMT, MIXERS, DPFPMemory, MirasLM, dpfp
from miras_lite.models.blocks import ShortConvMixer
from miras_lite.spec import MemorySpec

ROOT = Path(__file__).resolve().parents[1]


def _ids(B, T, V, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _lm(mixer, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"d_model": 32, "n_layers": 2, "num_heads": 2, "chunk_size": 4, "window": 5, **kw}
    return MirasLM(37, mixer=mixer, **kw)


def _armt(memory="dpfp", seed=0, wake=True, **kw):
    """A tiny ARMT; ``wake`` gives the zero-initialised memory projections random weights so that the
    memory actually carries information (at initialisation every read is 0 by design)."""
    torch.manual_seed(seed)
    kw = {"d_model": 32, "n_layers": 2, "num_heads": 2, "segment_size": 8, "num_mem_tokens": 4, **kw}
    model = ARMT(37, memory=memory, **kw)
    if wake:
        with torch.no_grad():
            for mem in model.memories:
                proj = mem.v_proj if isinstance(mem, DPFPMemory) else mem.out_proj
                proj.weight.normal_(std=0.2)
    return model


# ---------------------------------------------------------------------------------------- MirasLM


@pytest.mark.parametrize("mixer", MIXERS)
def test_lm_shapes(mixer):
    model = _lm(mixer, n_layers=3)
    x = _ids(2, 11, 37)
    out = model(x)
    assert out["logits"].shape == (2, 11, 37) and out["loss"] is None
    labels = torch.full_like(x, -100)
    labels[0, 3], labels[1, 7], labels[1, 10] = 5, 6, 7
    out = model(x, labels=labels)
    assert out["logits"].shape == (3, 37) and out["loss"].dim() == 0
    assert out["predictions"].shape == x.shape
    assert (out["predictions"][labels == -100] == -100).all()


@pytest.mark.parametrize("mixer", MIXERS)
def test_lm_is_causal(mixer):
    model = _lm(mixer)
    x = _ids(1, 16, 37)
    y = x.clone()
    y[0, 9] = (x[0, 9] + 1) % 37
    a, b = model(x)["logits"], model(y)["logits"]
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=0)
    assert (a[:, 9:] - b[:, 9:]).abs().amax() > 1e-4


def test_hybrid_alternates_memory_and_sliding_attention():
    model = _lm("hybrid", n_layers=4)
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == ["MirasLayer", "AttentionLayer"] * 2
    assert all(b.mixer.window == 5 for b in model.blocks[1::2])
    assert _lm("attention").blocks[0].mixer.window is None


@pytest.mark.parametrize("mixer", ["miras", "hybrid"])
def test_logits_only_at_labels_equal_full_logits(mixer):
    model = _lm(mixer)
    x = _ids(3, 12, 37, seed=1)
    labels = torch.where(torch.rand(3, 12, generator=torch.Generator().manual_seed(2)) < 0.3, _ids(3, 12, 37, 3), -100)
    full = model(x)["logits"]
    out = model(x, labels=labels)
    mask = labels != -100
    torch.testing.assert_close(out["logits"], full[mask])
    torch.testing.assert_close(out["loss"], F.cross_entropy(full[mask], labels[mask]))
    torch.testing.assert_close(out["predictions"][mask], full[mask].argmax(-1))
    # the same gradients as the full-logits loss
    g1 = torch.autograd.grad(out["loss"], list(model.parameters()))
    g2 = torch.autograd.grad(F.cross_entropy(model(x)["logits"][mask], labels[mask]), list(model.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_no_labelled_position_gives_zero_loss():
    model = _lm("miras")
    x = _ids(2, 6, 37)
    out = model(x, labels=torch.full_like(x, -100))
    assert out["loss"].item() == 0 and out["logits"].shape == (0, 37)
    out["loss"].backward()


@pytest.mark.parametrize("mixer", ["miras", "hybrid"])
def test_lm_gradients_reach_every_parameter(mixer):
    model = _lm(mixer, spec="titans")
    x = _ids(2, 10, 37)
    model(x, labels=_ids(2, 10, 37, seed=5))["loss"].backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


@pytest.mark.parametrize("spec", ["retnet", "gated_deltanet", MemorySpec(memory="mlp", bias="lp", retention="lq")])
def test_lm_config_is_json_and_rebuilds(spec):
    model = _lm("hybrid", spec=spec, tie_weights=False)
    config = json.loads(json.dumps(model.config))
    assert isinstance(config["spec"], dict)
    clone = MirasLM(**config)
    clone.load_state_dict(model.state_dict())  # strict: the same parameters
    x = _ids(1, 9, 37)
    torch.testing.assert_close(clone(x)["logits"], model(x)["logits"])


def test_tied_head_shares_the_embedding():
    model = _lm("miras")
    assert model.lm_head is None
    n_tied = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in _lm("miras", tie_weights=False).parameters()) == n_tied + 37 * 32


@pytest.mark.parametrize("kwargs, name", [
    ({"mixer": "mamba"}, "mixer"), ({"vocab_size": 0}, "vocab_size"), ({"spec": "nope"}, "nope"),
    ({"window": 0}, "window"), ({"tie_weights": 1}, "tie_weights"),
])
def test_lm_bad_arguments(kwargs, name):
    kwargs = {"vocab_size": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        MirasLM(**kwargs)


def test_attention_gets_the_short_conv_of_the_config():
    """`MirasLMConfig.conv_size` goes to every mixer, attention too; 0 gives Zoology's plain attention."""
    from miras_lite.config import MirasLMConfig

    for mixer in ("attention", "sliding", "hybrid"):
        model = MirasLMConfig(mixer=mixer, conv_size=3).build(37, "gated_deltanet")
        assert [block.mixer.conv_size for block in model.blocks] == [3, 3], mixer
        rebuilt = MirasLM(**model.config)
        rebuilt.load_state_dict(model.state_dict())
        ids = _ids(2, 9, 37)
        torch.testing.assert_close(rebuilt(ids)["logits"], model(ids)["logits"])
    plain = MirasLMConfig(mixer="attention", conv_size=0).build(37, "gated_deltanet")
    assert all(block.mixer.conv is None for block in plain.blocks)
    assert _lm("attention").blocks[0].mixer.conv is None  # MirasLM's own default: no attention_kwargs


def test_attention_kwargs_are_checked():
    with pytest.raises(ValueError, match="attention_kwargs"):
        _lm("attention", attention_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match="attention_kwargs"):
        _lm("attention", attention_kwargs={"window": 3})
    with pytest.raises(ValueError, match="attention_kwargs"):
        _lm("attention", attention_kwargs=[("conv_size", 4)])


def test_lm_bad_inputs():
    model = _lm("attention")
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[0, 37]]))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels"):
        model(_ids(1, 4, 37), labels=_ids(1, 3, 37))
    with pytest.raises(ValueError, match="labels"):
        model(_ids(1, 4, 37), labels=torch.tensor([[0, -1, 2, 3]]))


# ---------------------------------------------------------------------------------------- DPFP memory


def test_dpfp_feature_map_matches_its_formula():
    x = torch.randn(3, 5)
    nu, d = 3, 5
    r = torch.cat([x.clamp_min(0), (-x).clamp_min(0)], -1)
    phi = dpfp(x, nu)
    assert phi.shape == (3, 2 * d * nu)
    for j in range(1, nu + 1):
        for i in range(2 * d):
            torch.testing.assert_close(phi[:, (j - 1) * 2 * d + i], r[:, i] * r[:, (i + j) % (2 * d)])
    assert (phi >= 0).all()


def _reference_write(mem, m, A, z, first):
    """ARMT's write, one equation at a time, for one batch element and one head, as the reference code's
    `experimental` branch (commit 067fb10) computes it: ε in γ's numerator, γ = 1 on the first segment."""
    phi = lambda x: F.normalize(dpfp(x, mem.nu), dim=-1) if mem.normalize else dpfp(x, mem.nu)  # noqa: E731
    A_new, z_new = A.clone(), z.clone()
    for m_i in m:
        k = phi(mem.k_proj(m_i))
        v = mem.v_proj(m_i)
        beta = torch.sigmoid(mem.beta_proj(m_i))
        v_bar = (k @ A) / (z @ k + mem.eps)                    # against A_{s-1}, z_{s-1}
        gamma = torch.tensor(1.0) if first else (1 - (z @ k + mem.eps) / (k @ k)).clamp(0, 1)
        A_new = A_new + beta * torch.outer(k, v - v_bar)
        z_new = z_new + gamma * k
    return A_new, z_new


@pytest.mark.parametrize("normalize", [True, False])
def test_dpfp_write_and_read_follow_the_paper(normalize):
    torch.manual_seed(0)
    mem = DPFPMemory(d_model=6, d_mem=4, num_heads=1, nu=3, normalize=normalize)
    torch.nn.init.normal_(mem.v_proj.weight)
    state = mem.initial_state(1)
    A, z = state.A[0, 0], state.z[0, 0]
    for segment in range(3):  # three segments of M = 5 memory tokens
        m = torch.randn(1, 5, 6)
        state = mem.write(m, state)
        A, z = _reference_write(mem, m[0], A, z, first=segment == 0)
        torch.testing.assert_close(state.A[0, 0], A)
        torch.testing.assert_close(state.z[0, 0], z, rtol=1e-7, atol=1e-7)
    x = torch.randn(1, 7, 6)
    q = dpfp(mem.q_proj(x[0]), 3)
    q = F.normalize(q, dim=-1) if normalize else q
    torch.testing.assert_close(mem.read(x, state)[0], (q @ A) / (q @ z + mem.eps)[:, None])


@pytest.mark.parametrize("gamma", [True, False])
def test_dpfp_gamma_correction_lets_a_key_be_rewritten(gamma):
    """Write (x → a), then (x → b) with β ≈ 1: the delta rule replaces a by b, and γ = 0 on the second
    write keeps z from double counting x, so the read returns b. Without the correction (γ = 1 on every write)
    z holds x twice and the read returns b/2."""
    mem = DPFPMemory(d_model=8, d_mem=4, num_heads=1, gamma=gamma)
    with torch.no_grad():
        select_key = torch.cat([torch.eye(4), torch.zeros(4, 4)], 1)
        mem.q_proj.weight.copy_(select_key)
        mem.k_proj.weight.copy_(select_key)
        mem.v_proj.weight.copy_(torch.diag(torch.tensor([0.0] * 4 + [1.0] * 4)))
        mem.beta_proj.weight.zero_()
        mem.beta_proj.bias.fill_(30.0)
    x, a, b = torch.tensor([1.0, -0.5, 0.3, 0.8]), torch.tensor([1.0, 2, 3, 4]), torch.tensor([-4.0, 0, 1, 2])
    state = mem.initial_state(1)
    assert mem.read(torch.cat([x, torch.zeros(4)])[None, None], state).abs().max() == 0  # empty memory reads 0
    state = mem.write(torch.cat([x, a])[None, None], state)
    state = mem.write(torch.cat([x, b])[None, None], state)
    out = mem.read(torch.cat([x, torch.zeros(4)])[None, None], state)[0, 0]
    k = F.normalize(dpfp(x, 3), dim=-1)
    torch.testing.assert_close(state.z[0, 0], k if gamma else 2 * k)
    torch.testing.assert_close(out, torch.cat([torch.zeros(4), b if gamma else b / 2]), atol=1e-3, rtol=1e-3)


def test_the_gamma_switch_belongs_to_the_dpfp_memory():
    from miras_lite.config import ARMTConfig, RunConfig

    with pytest.raises(ValueError, match="gamma=1 must be True or False"):
        DPFPMemory(d_model=8, d_mem=4, gamma=1)
    with pytest.raises(ValueError, match="model: dpfp_gamma=False .* needs memory='dpfp', not 'gated_deltanet'"):
        RunConfig(model=ARMTConfig(memory="gated_deltanet", dpfp_gamma=False))
    model = RunConfig(model=ARMTConfig(dpfp_gamma=False)).build_model(32)
    assert not any(memory.gamma for memory in model.memories) and model.config["dpfp_gamma"] is False


# ---------------------------------------------------------------------------------------- ARMT


@pytest.mark.parametrize("memory", ["dpfp", "gated_deltanet"])
def test_armt_shapes_and_labels(memory):
    model = _armt(memory)
    x = _ids(2, 21, 37)
    out = model(x)
    assert out["logits"].shape == (2, 21, 37) and len(out["memory_state"]) == 2
    labels = torch.full_like(x, -100)
    labels[:, -1] = 3
    lab = model(x, labels=labels)
    torch.testing.assert_close(lab["logits"], out["logits"][:, -1])
    torch.testing.assert_close(lab["loss"], F.cross_entropy(out["logits"][:, -1], labels[:, -1]))


def test_armt_memory_starts_silent():
    model = _armt(wake=False)
    x = _ids(1, 24, 37)
    for mem, state in zip(model.memories, model(x)["memory_state"]):
        assert mem.read(torch.randn(1, 3, 32), state).abs().max() == 0


@pytest.mark.parametrize("memory", ["dpfp", "gated_deltanet", "titans"])
def test_armt_segment_recurrence_equals_carrying_the_state(memory):
    model = _armt(memory)
    x = _ids(2, 8 * 4 + 3, 37)
    whole = model(x)
    state, logits = None, []
    for ids in x.split(8, dim=1):
        out = model(ids, memory_state=state)
        state = out["memory_state"]
        logits.append(out["logits"])
    torch.testing.assert_close(torch.cat(logits, 1), whole["logits"])
    # the memory matters: the last segment reads something different from an empty memory
    assert (model(x[:, 32:])["logits"] - whole["logits"][:, 32:]).abs().amax() > 1e-4


@pytest.mark.parametrize("memory", ["dpfp", "gated_deltanet"])
def test_armt_bptt_segments_truncates_the_gradient_only(memory):
    """bptt_segments=K: the same values; the gradient is that of the last K segments run on the memory the
    earlier ones leave, detached (computed here by hand, one segment at a time)."""
    model = _armt(memory, bptt_segments=2)
    x, labels = _ids(2, 8 * 4 + 3, 37), _ids(2, 8 * 4 + 3, 37, seed=4)
    labels[:, :24] = -100  # as in BABILong, the answers come at the end
    out = model(x, labels=labels)
    out["loss"].backward()
    truncated = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.bptt_segments = None
    full = model(x, labels=labels)
    torch.testing.assert_close(out["logits"], full["logits"])
    full["loss"].backward()
    assert any(not torch.allclose(p.grad, truncated[n]) for n, p in model.named_parameters())
    model.zero_grad()
    with torch.no_grad():
        state = model(x[:, :24])["memory_state"]  # segments 1-3 of 5: no gradient
    model(x[:, 24:], labels=labels[:, 24:], memory_state=state)["loss"].backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(truncated[name], param.grad, msg=name)


def test_armt_write_l1_adds_the_mean_write_gate_of_the_backpropagated_segments():
    model = _armt(bptt_segments=2, write_l1=0.5)
    x, labels = _ids(2, 8 * 4 + 3, 37), _ids(2, 8 * 4 + 3, 37, seed=4)
    penalised = model(x, labels=labels)["loss"]
    model.write_l1 = 0.0
    plain = model(x, labels=labels)["loss"]
    with torch.no_grad():
        state, gates = model(x[:, :24])["memory_state"], []  # segments 1-3: not backpropagated, not penalised
        for ids in x[:, 24:].split(8, dim=1):
            h = torch.cat([model.embed(ids), model.mem_tokens.expand(2, -1, -1)], dim=1)
            for layer, (block, mem) in enumerate(zip(model.blocks, model.memories)):
                h = block(h + mem.read(h, state[layer]))
                gates.append(torch.sigmoid(mem.beta_proj(h[:, ids.shape[1]:])).flatten())
                state[layer] = mem.write(h[:, ids.shape[1]:], state[layer])
    torch.testing.assert_close(penalised - plain, 0.5 * torch.cat(gates).mean())
    (penalised - plain).backward()  # the penalty's gradient: it trains the write gates W_β only
    for name, param in model.named_parameters():
        if "beta_proj" in name:
            assert param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None or param.grad.abs().max() < 1e-6, name
    model.write_l1 = 0.5
    with torch.no_grad():
        assert model(x, labels=labels)["loss"] == plain  # evaluation is not penalised
    short = model(x[:, :16], labels=labels[:, :16])["loss"]  # 2 segments: nothing truncated, nothing penalised
    model.write_l1 = 0.0
    assert short == model(x[:, :16], labels=labels[:, :16])["loss"]
    with pytest.raises(ValueError, match="write_l1"):
        _armt("gated_deltanet", bptt_segments=2, write_l1=0.1)
    with pytest.raises(ValueError, match="bptt_segments"):
        _armt(write_l1=0.1)
    with pytest.raises(ValueError, match="write_l1"):
        _armt(bptt_segments=2, write_l1=-1.0)


def test_armt_is_causal():
    model = _armt()
    x = _ids(1, 30, 37)
    y = x.clone()
    y[0, 13] = (x[0, 13] + 1) % 37
    a, b = model(x)["logits"], model(y)["logits"]
    torch.testing.assert_close(a[:, :13], b[:, :13], rtol=0, atol=0)
    assert (a[:, 16:] - b[:, 16:]).abs().amax() > 1e-4  # later segments see it through the memory


@pytest.mark.parametrize("memory, conv_size", [("dpfp", 0), ("moneta", 0), ("dpfp", 3)])
def test_armt_stream_equals_forward(memory, conv_size):
    model = _armt(memory, conv_size=conv_size)
    x = _ids(2, 8 * 5 + 6, 37)
    context, question = x[:, :-4], x[:, -4:]
    sizes = [3, 0, 11, 8, 1, 5, 100]  # ragged chunks, one empty; the last is cut short by the context end
    chunks, start = [], 0
    for n in sizes:
        chunks.append(context[:, start:start + n])
        start += n
    logits, state = model.stream(iter(chunks), question, return_state=True)
    out = model(x)
    torch.testing.assert_close(logits, out["logits"][:, -1])
    for s1, s2 in zip(state, out["memory_state"]):
        torch.testing.assert_close(s1[0] if isinstance(s1, tuple) else s1.A, s2[0] if isinstance(s2, tuple) else s2.A)
    # one sample: 1-D chunks and question, python lists accepted
    one = model.stream((c[0].tolist() for c in chunks), question[0])
    torch.testing.assert_close(one, logits[:1])


def test_armt_stream_question_only_and_exact_segments():
    model = _armt()
    q = _ids(1, 8, 37)
    torch.testing.assert_close(model.stream([], q), model(q)["logits"][:, -1])
    x = _ids(1, 24, 37)  # context of exactly 2 segments, question of exactly 1
    torch.testing.assert_close(model.stream([x[:, :16]], x[:, 16:]), model(x)["logits"][:, -1])


def test_armt_stream_consumes_segments_lazily():
    model = _armt()
    calls = []
    model.embed.register_forward_hook(lambda *_: calls.append(1))

    def segments():
        for i in range(20):
            assert len(calls) == i, "stream pulled a segment before processing the previous one"
            yield torch.randint(0, 37, (1, 8))

    model.stream(segments(), torch.tensor([1, 2]))
    assert len(calls) == 21


def test_armt_stream_memory_is_constant():
    """Peak RSS of a fresh process barely moves from 8 to 256 streamed segments (O(1) memory): keeping
    the logits of every segment (256·32·4096 floats = 134 MB) or the autograd graph would show."""
    script = textwrap.dedent("""
        import resource, torch
        from miras_lite.models import ARMT
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = ARMT(4096, d_model=32, n_layers=2, segment_size=32, num_mem_tokens=4)
        def segments(n):
            for _ in range(n):
                yield torch.randint(0, 4096, (1, 32))
        model.stream(segments(8), torch.tensor([1, 2, 3]))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model.stream(segments(256), torch.tensor([1, 2, 3]))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before, after)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    before, after = map(int, result.stdout.split())
    assert after - before < 8 * 1024, f"peak RSS grew by {(after - before) / 1024:.1f} MB from 8 to 256 segments"


@pytest.mark.parametrize("memory", ["dpfp", "titans", MemorySpec(bias="l2", retention="kl")])
def test_armt_gradients_reach_every_parameter(memory):
    model = _armt(memory)
    x = _ids(2, 27, 37)
    model(x, labels=_ids(2, 27, 37, seed=4))["loss"].backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_short_conv_mixer_adds_the_last_k_tokens():
    """ShortConvMixer(identity): y_t = x_t + Σ_{j<K} w_j ⊙ x_{t−j}, from the conv weights by hand."""
    torch.manual_seed(0)
    mixer = ShortConvMixer(torch.nn.Identity(), 5, 3)
    x = torch.randn(2, 9, 5)
    w = mixer.conv.conv.weight[:, 0]  # [channels, K]; w[:, K−1] multiplies x_t
    expected = x.clone()
    for t in range(9):
        for j in range(min(3, t + 1)):
            expected[:, t] += w[:, 2 - j] * x[:, t - j]
    torch.testing.assert_close(mixer(x), expected)


@pytest.mark.parametrize("memory, conv_size", [("dpfp", 0), ("memora", 0), ("dpfp", 4)])
def test_armt_config_is_json_and_rebuilds(memory, conv_size):
    model = _armt(memory, max_segments=10, conv_size=conv_size)
    clone = ARMT(**json.loads(json.dumps(model.config)))
    clone.load_state_dict(model.state_dict())
    x = _ids(1, 20, 37)
    torch.testing.assert_close(clone(x)["logits"], model(x)["logits"])


def test_armt_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="memory"):
        ARMT(10, memory="hopfield")
    with pytest.raises(ValueError, match="segment_size"):
        ARMT(10, segment_size=0)
    with pytest.raises(ValueError, match="conv_size"):
        ARMT(10, conv_size=-1)
    with pytest.raises(ValueError, match="bptt_segments"):
        ARMT(10, bptt_segments=0)
    with pytest.raises(ValueError, match="mem_heads"):
        ARMT(10, d_model=32, mem_heads=3)
    model = _armt(max_segments=2)
    with pytest.raises(ValueError, match="max_segments"):
        model(_ids(1, 17, 37))
    with pytest.raises(ValueError, match="memory_state"):
        model(_ids(1, 4, 37), memory_state=[])
    with pytest.raises(ValueError, match="question_ids"):
        model.stream([], torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="segments"):
        model.stream([torch.tensor([[1, 2]])], torch.tensor([[1], [2]]))


# ---------------------------------------------------------------------------------------- learning


def _overfit(model, x, labels, steps, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(x, labels=labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_lm_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = MirasLM(16, d_model=32, n_layers=2, num_heads=2, mixer="hybrid", chunk_size=8, window=8)
    x = _ids(4, 24, 16, seed=7)
    labels = torch.cat([x[:, 1:], torch.full((4, 1), -100)], 1)  # next-token prediction
    assert _overfit(model, x, labels, steps=100, lr=1e-2) < 0.05


def test_armt_overfits_a_tiny_batch():
    """The answer sits in the first segment and is asked for at the end of the third; segments 2 and 3
    are the same for every sample, so only the memory can carry the answer."""
    torch.manual_seed(0)
    model = ARMT(16, d_model=32, n_layers=2, num_heads=2, segment_size=8, num_mem_tokens=4)
    x = _ids(8, 24, 16, seed=8)
    x[:, 8:] = x[0, 8:]
    assert len(set(x[:, 2].tolist())) >= 5
    labels = torch.full_like(x, -100)
    labels[:, -1] = x[:, 2]
    assert _overfit(model, x, labels, steps=200, lr=1e-2) < 0.05
