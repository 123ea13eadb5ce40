"""The fault suite (issue 14), part 1: the public API under fuzzed input, checkpoints under corruption and
malicious files, run directories under concurrent writers, and `fit` under bad settings, divergence and a
disk that stops taking writes. The command-line faults (SIGKILL loops, Ctrl-C, two runs in one directory)
are in tests/test_faults_cli.py, the app in tests/test_faults_app.py, the sweeps in tests/test_sweep.py.

The fuzz tests run ≥ 10,000 cases in all (hypothesis, derandomised: the "miras" profile of conftest.py) on
tiny tensors, about a minute on one core. What they promise:

* every public call either works or raises ValueError naming an argument: no TypeError, RuntimeError,
  NotImplementedError, ... (sizes stay small: a size whose tensors do not fit in memory raises the
  allocator's error, which is not covered);
* memory_scan never returns a non-finite output or memory from finite inputs: it raises the documented
  ValueError ("eta: the memory overflowed") instead;
* in the documented stable range (float32/float64, ‖k_t‖ ≤ 1, |q|, |v| entries of order 1, η ∈ [0, 1],
  α ∈ [0.5, 1], θ ∈ [0, 0.9], p ∈ [1, 3], lq's q ∈ [1, 3] on a linear memory; every preset) a scan raises
  nothing and its outputs, memory and gradients are finite.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import threading
import zipfile
from dataclasses import fields
from pathlib import Path

import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miras_lite as ml
from miras_lite import checkpoint
from miras_lite.checkpoint import CheckpointError
from miras_lite.config import FitConfig, RunConfig
from miras_lite.files import FileWriteError, RunDirectoryError, RunLock, atomic_write
from miras_lite.models import ARMT, MirasLM
from miras_lite.presets import resolve
from miras_lite.spec import BIASES, GRAD_POINTS, HUBER_MODES, MEMORIES, OPTIMIZERS, RETENTIONS, MemorySpec
from miras_lite.tasks import MQAR, BabiLong, LanguageModeling, babilong_sample, gap_distribution, kv_stream, mqar
from miras_lite.train import TrainingDiverged, fit

FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck))
SPEC_FIELDS = [f.name for f in fields(MemorySpec)]
CHOICES = {"memory": MEMORIES, "bias": BIASES, "retention": RETENTIONS, "optimizer": OPTIMIZERS,
           "grad_at": GRAD_POINTS, "huber_mode": HUBER_MODES}

# values of every kind a caller might pass by mistake (SMALL_JUNK: no integers beyond 40, which as sizes would
# ask the allocator for more memory than there is)
SMALL_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.binary(max_size=3),
    st.lists(st.integers(0, 3), max_size=2), st.tuples(st.integers(0, 3)), st.dictionaries(st.text(max_size=2),
                                                                                          st.integers(), max_size=1),
    st.complex_numbers(allow_nan=False, max_magnitude=3), st.floats(-5, 5).map(torch.tensor),
    st.sampled_from([v for values in CHOICES.values() for v in values] + list(ml.PRESETS) + ["qa1", "char"]),
)
JUNK = st.one_of(SMALL_JUNK, st.integers(10**20, 10**400))


def names_an_argument(message, names):
    return any(re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", message) for name in names)


# ------------------------------------------------------------------------------------------ MemorySpec


@settings(max_examples=3000, **FUZZ)
@given(st.dictionaries(st.sampled_from(SPEC_FIELDS), st.one_of(JUNK, st.floats(0.5, 8), st.integers(1, 4)),
                       max_size=5))
def test_fuzzed_memory_specs_raise_only_value_errors_naming_the_field(kwargs):
    try:
        spec = MemorySpec(**kwargs)
    except ValueError as error:
        assert names_an_argument(str(error), kwargs), (kwargs, str(error))
        return
    for name in ("p", "q", "delta", "robust_delta", "gamma", "simplex_scale", "eps"):  # numbers, not bools/tensors
        value = getattr(spec, name)
        assert type(value) is float and math.isfinite(value), (name, value)
    assert type(spec.expansion) is int
    assert all(isinstance(getattr(spec, name), str) for name in CHOICES)


@pytest.mark.parametrize("kwargs", [dict(p=True), dict(q=False), dict(delta=torch.tensor(1.0)), dict(eps=True),
                                    dict(gamma=torch.tensor(0.1)), dict(p="3"), dict(q=None), dict(p=float("inf"))])
def test_booleans_tensors_and_strings_are_not_numbers(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MemorySpec(**kwargs)


def test_lq_settings_that_overflow_float32_are_refused_with_the_rule():
    """lq reads a memory A as A / max(‖A‖_q, ε)^(q−2): a small A is read at up to ε^(3−q) and its gradient
    reaches ε^(1−q). q = 8 with ε = 1e-6 gave outputs ~1e12 and inf gradients; refused, naming the bound."""
    with pytest.raises(ValueError, match=r"q=8\.0 with eps=1e-06.*q <= 6"):
        MemorySpec(retention="lq", q=8.0)
    MemorySpec(retention="lq", q=6.0)
    MemorySpec(retention="lq", q=8.0, eps=1e-4)  # a larger eps keeps it in range
    MemorySpec(retention="l2", q=8.0)  # q only matters for lq


# ------------------------------------------------------------------------------------------ memory_scan


def _spec_strategy(p_high=4.0, q_high=8.0, allow_presets=True):
    axes = st.fixed_dictionaries({
        "memory": st.sampled_from(MEMORIES), "bias": st.sampled_from(BIASES), "retention": st.sampled_from(RETENTIONS),
        "optimizer": st.sampled_from(OPTIMIZERS), "grad_at": st.sampled_from(GRAD_POINTS),
        "huber_mode": st.sampled_from(HUBER_MODES), "p": st.floats(1.0, p_high), "q": st.floats(1.0, q_high),
        "expansion": st.integers(1, 2), "delta": st.floats(0.1, 2.0), "robust_delta": st.floats(0.0, 1.0),
        "gamma": st.floats(0.0, 0.05), "simplex_scale": st.floats(0.5, 4.0)})

    def build(kwargs):
        try:
            return MemorySpec(**kwargs)
        except ValueError:  # implicit off linear/l2, lq beyond its bound: a preset instead
            return ml.preset("gated_deltanet")

    specs = axes.map(build)
    return st.one_of(specs, st.sampled_from(list(ml.PRESETS))) if allow_presets else specs


def _tensor(generator, shape, dtype, scale=1.0):
    if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    return torch.randint(-3, 3, shape, generator=generator).to(dtype)


def mostly(valid, junk, one_in=8):
    """``valid`` values, and ``junk`` about once in ``one_in`` draws (a call with every argument junk says little)."""
    return st.integers(1, one_in).flatmap(lambda i: junk if i == 1 else valid)


RATE = mostly(st.one_of(st.floats(0.0, 1.0), st.just("tensor")),
              st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-0.5, 200.0), st.just("wrong-shape"),
                        st.none(), st.booleans(), st.text(max_size=2)), one_in=6)


@settings(max_examples=3000, **FUZZ)
@given(shape=st.tuples(st.integers(0, 2), st.integers(0, 4), st.integers(0, 2), st.integers(0, 3), st.integers(0, 3)),
       dtype=st.sampled_from([torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]),
       spec=mostly(_spec_strategy(), JUNK), eta=RATE, alpha=RATE, theta=RATE,
       chunk_size=mostly(st.sampled_from([None, 1, 2, 3]), st.one_of(st.integers(-1, 0), st.sampled_from(["4", 2.0, True]))),
       chunk_rule=mostly(st.sampled_from(["minibatch", "boundary"]), st.sampled_from(["exact", None])),
       backend=mostly(st.sampled_from(["torch", "auto"]), st.sampled_from(["cuda", None])),
       return_states=mostly(st.none(), st.integers(0, 3)),
       initial=mostly(st.none(), st.sampled_from(["wrong", "list"])), grad=st.booleans(),
       scale=st.sampled_from([0.1, 1.0, 30.0]), seed=st.integers(0, 2**16))
def test_fuzzed_memory_scan_raises_only_value_errors_and_never_returns_non_finite_from_finite(
        shape, dtype, spec, eta, alpha, theta, chunk_size, chunk_rule, backend, return_states, initial, grad, scale,
        seed):
    B, T, H, Dk, Dv = shape
    g = torch.Generator().manual_seed(seed)
    q, k = _tensor(g, (B, T, H, Dk), dtype, scale), _tensor(g, (B, T, H, Dk), dtype, scale)
    v = _tensor(g, (B, T, H, Dv), dtype, scale)
    leaves = [x.requires_grad_() for x in (q, k, v) if grad and x.is_floating_point()]

    def rate(value):
        if value == "tensor":
            return torch.rand(B, T, H, generator=g, dtype=torch.float64).to(dtype) if dtype.is_floating_point else 0.5
        if value == "wrong-shape":
            return torch.rand(B + 1, T, H, generator=g)
        return value

    initial_state = {None: None, "wrong": torch.zeros(H + 1, Dk, Dv), "list": [1, 2]}[initial]
    try:
        o, state = ml.memory_scan(q, k, v, eta=rate(eta), alpha=rate(alpha), theta=rate(theta), spec=spec,
                                  initial_state=initial_state, chunk_size=chunk_size, backend=backend,
                                  return_states=return_states, chunk_rule=chunk_rule)
        if leaves:
            (o.float() * torch.randn(o.shape, generator=g)).sum().backward()
    except ValueError:
        return
    inputs = [q, k, v] + [x for x in (eta, alpha, theta) if isinstance(x, torch.Tensor)]
    if all(bool(torch.isfinite(x).all()) for x in inputs):
        W = state.W if isinstance(state.W, tuple) else (state.W,)
        assert all(bool(torch.isfinite(x).all()) for x in (o, *W)), "finite inputs gave non-finite outputs"


@settings(max_examples=2500, **FUZZ)
@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 8), st.integers(1, 2), st.integers(1, 4), st.integers(1, 3)),
       dtype=st.sampled_from([torch.float32, torch.float64]), spec=_spec_strategy(p_high=3.0, q_high=3.0),
       per_token=st.booleans(), eta=st.floats(0.0, 1.0), alpha=st.floats(0.5, 1.0), theta=st.floats(0.0, 0.9),
       key_norm=st.floats(0.01, 1.0), scale=st.sampled_from([0.1, 0.5, 1.0]),
       chunk_size=st.sampled_from([None, 1, 2, 4]), chunk_rule=st.sampled_from(["minibatch", "boundary"]),
       seed=st.integers(0, 2**16))
def test_in_the_stable_range_scans_and_their_gradients_are_finite(shape, dtype, spec, per_token, eta, alpha, theta,
                                                                  key_norm, scale, chunk_size, chunk_rule, seed):
    spec = ml.preset(spec) if isinstance(spec, str) else spec
    B, T, H, Dk, Dv = shape
    Dv = Dk if spec.memory == "mlp" else Dv
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, Dk, generator=g, dtype=dtype) * scale
    k = torch.nn.functional.normalize(torch.randn(B, T, H, Dk, generator=g, dtype=dtype), dim=-1) * key_norm
    v = torch.randn(B, T, H, Dv, generator=g, dtype=dtype) * scale

    def rate(low, high, value):
        if not per_token:
            return value
        return (low + (high - low) * torch.rand(B, T, H, generator=g, dtype=dtype)).requires_grad_()

    rates = {"eta": rate(0.0, 1.0, eta), "alpha": 1.0 if spec.retention == "none" else rate(0.5, 1.0, alpha),
             "theta": rate(0.0, 0.9, theta) if spec.optimizer == "momentum" else None}
    leaves = [x.requires_grad_() for x in (q, k, v)] + [x for x in rates.values() if isinstance(x, torch.Tensor)]
    o, state = ml.memory_scan(q, k, v, spec=spec, chunk_size=chunk_size, chunk_rule=chunk_rule, **rates)
    W = state.W if isinstance(state.W, tuple) else (state.W,)
    assert all(bool(torch.isfinite(x).all()) for x in (o, *W))
    grads = torch.autograd.grad((o * torch.randn(o.shape, generator=g, dtype=dtype)).sum(), leaves)
    assert all(bool(torch.isfinite(x).all()) for x in grads), spec


def test_empty_axes_and_half_precision_on_the_cpu_are_value_errors():
    """They crashed with "cannot reshape tensor of 0 elements" (with autograd) and NotImplementedError from
    triangular_solve."""
    for B, T, H, D in ((0, 4, 1, 2), (1, 4, 0, 2), (1, 4, 1, 0)):
        q = torch.randn(B, T, H, D, requires_grad=True)
        with pytest.raises(ValueError, match=r"q: .*empty"):
            ml.memory_scan(q, q, q, eta=0.5, alpha=0.9, spec="gated_deltanet")
    for dtype in (torch.float16, torch.bfloat16):
        q = torch.randn(1, 4, 1, 2).to(dtype)
        with pytest.raises(ValueError, match=r"q: dtype .* not supported on the CPU; allowed values: torch.float32"):
            ml.memory_scan(q, q, q, eta=0.5, alpha=0.9, spec="gated_deltanet")


@pytest.mark.parametrize("spec", ["deltanet", "gated_deltanet", "ttt_linear"])
def test_an_overflowing_delta_rule_is_a_value_error_naming_eta_and_the_stable_range(spec):
    """η = 100 on unit keys: |1 − η‖k‖²| = 99 per token; the memory overflowed to inf/NaN silently before."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(1, 40, 1, 8, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(1, 40, 1, 8, generator=g)
    with pytest.raises(ValueError, match=r"eta: the memory overflowed.*η_t·‖k_t‖² is 100.*<= 2"):
        ml.memory_scan(q, k, v, eta=100.0, alpha=0.99 if spec == "gated_deltanet" else 1.0, spec=spec)
    o, _ = ml.memory_scan(q, k, v, eta=1.0, alpha=0.99 if spec == "gated_deltanet" else 1.0, spec=spec)
    assert torch.isfinite(o).all()
    longhorn, _ = ml.memory_scan(q, k, v, eta=100.0, spec="longhorn")  # the implicit step is stable for every η
    assert torch.isfinite(longhorn).all()


# ------------------------------------------------------------------------------------------ constructors

# (callable, keyword arguments that work, the names its messages may use for an argument)
TARGETS = {
    "MQAR": (MQAR, dict(vocab_size=16, seq_len=16, num_kv_pairs=2, train_examples=8, test_examples=4)),
    "mqar": (mqar, dict(vocab_size=16, seq_len=16, num_kv_pairs=2, num_examples=4)),
    "gap_distribution": (gap_distribution, dict(num_slots=4, power_a=0.01)),
    "BabiLong": (BabiLong, dict(task="qa1", context_length=64, test_examples=2)),
    "babilong_sample": (babilong_sample, dict(task="qa1", context_length=64)),
    "LanguageModeling": (LanguageModeling, dict(seq_len=16, test_windows=4)),
    "kv_stream": (kv_stream, dict(num_pairs=4, key_dim=4, value_dim=4)),
    "MirasLM": (MirasLM, dict(vocab_size=16, d_model=8, n_layers=1, num_heads=1)),
    "ARMT": (ARMT, dict(vocab_size=16, d_model=8, n_layers=1, num_heads=1, segment_size=8, num_mem_tokens=2)),
    "MirasLayer": (ml.MirasLayer, dict(d_model=8, num_heads=1)),
    "FitConfig": (FitConfig, dict()),
    "resolve": (resolve, dict(value="gated_deltanet")),
}
# a message may name the argument through the quantity it sets (ARMT: head_dim = d_model / num_heads)
ALIASES = {("ARMT", "d_model"): ("head_dim",), ("ARMT", "num_heads"): ("head_dim",), ("resolve", "value"): ("spec",)}


def _parameters(fn):
    import inspect

    target = fn.__init__ if isinstance(fn, type) else fn
    return [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]


@settings(max_examples=2000, **FUZZ)
@given(target=st.sampled_from(sorted(TARGETS)), data=st.data())
def test_fuzzed_tasks_models_and_configs_raise_value_errors_naming_the_argument(target, data):
    fn, base = TARGETS[target]
    name = data.draw(st.sampled_from(_parameters(fn)))
    value = data.draw(SMALL_JUNK)
    try:
        fn(**{**base, name: value})
    except ValueError as error:
        assert names_an_argument(str(error), (name, *ALIASES.get((target, name), ()))), (target, name, value, error)


def test_miras_lm_refuses_unknown_layer_arguments_with_a_value_error():
    with pytest.raises(ValueError, match="miras_kwargs"):
        MirasLM(16, d_model=8, n_layers=1, num_heads=1, miras_kwargs={"bogus": 1})


def test_a_cli_spec_value_of_the_wrong_type_names_the_field():
    """--spec p=abc said "could not convert string to float"."""
    from miras_lite.__main__ import parse_spec

    with pytest.raises(ValueError, match=r"--spec: p='abc' must be a number"):
        parse_spec("p=abc")


@settings(max_examples=400, **FUZZ)
@given(text=st.text(alphabet="=,pqbias0123.-eltaxnf ", max_size=16))
def test_fuzzed_cli_spec_strings_raise_value_errors_naming_spec(text):
    from miras_lite.__main__ import parse_spec

    try:
        parse_spec(text)
    except ValueError as error:
        assert "--spec" in str(error) or names_an_argument(str(error), SPEC_FIELDS), error


# ------------------------------------------------------------------------------------------ silent wrong training


def tiny_model(**kwargs):
    torch.manual_seed(0)
    return MirasLM(64, d_model=16, n_layers=1, num_heads=1, spec="gated_deltanet", chunk_size=None, **kwargs)


def tiny_task():
    return MQAR(vocab_size=64, seq_len=16, num_kv_pairs=2, train_examples=64, test_examples=8)


@pytest.mark.parametrize("kwargs, field", [
    (dict(clip=-1.0), "clip"), (dict(min_lr=-1.0), "min_lr"), (dict(weight_decay=-1.0), "weight_decay"),
    (dict(weight_decay=float("nan")), "weight_decay"), (dict(lr=float("inf")), "lr"), (dict(min_lr=1.0), "min_lr"),
    (dict(betas=(1.5, 0.9)), "betas"), (dict(eval_batch_size=0), "eval_batch_size"), (dict(seed=-1), "seed"),
    (dict(callbacks=[1]), "callbacks"),
])
def test_settings_that_train_silently_wrong_are_refused(kwargs, field):
    """clip=-1 flipped the gradient (loss 2.8 -> 7.7), min_lr=-1 made the learning rate negative."""
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        fit(tiny_model(), tiny_task(), steps=2, batch_size=4, **kwargs)


def test_the_cli_refuses_a_negative_clip():
    from miras_lite.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["train", "--clip", "-1", "--steps", "1", "--out", "/nonexistent/never-written"])
    assert info.value.code == 2
    assert not Path("/nonexistent/never-written").exists()


# ------------------------------------------------------------------------------------------ divergence


def poisoned_model():
    """A model whose weights are not finite (what weight_decay=nan or lr=inf did in one step)."""
    model = tiny_model()
    with torch.no_grad():
        model.embed.weight[3].fill_(float("nan"))
    return model


def test_an_lr_that_overflows_float32_in_the_optimiser_is_refused():
    """lr=1e300 is a finite Python float, but AdamW's float32 step overflowed with a raw RuntimeError."""
    with pytest.raises(ValueError, match=r"lr=1e\+300 .*overflows float32"):
        fit(tiny_model(), tiny_task(), steps=2, batch_size=4, lr=1e300)
    with pytest.raises(ValueError, match=r"lr=1e\+30 .*weight_decay=10000000000\.0"):
        fit(tiny_model(), tiny_task(), steps=2, batch_size=4, lr=1e30, weight_decay=1e10)


def test_a_run_whose_weights_become_non_finite_says_it_wrote_no_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged) as info:
        fit(poisoned_model(), tiny_task(), steps=4, batch_size=4, eval_every=0, out_dir=tmp_path)
    error = info.value
    assert error.step == 1 and error.quantity == "parameter embed.weight" and error.kept_step is None
    assert "wrote no checkpoint" in str(error) and not (tmp_path / "checkpoint.pt").exists()
    assert pl.read_parquet(tmp_path / "metrics.parquet").height == 1


def test_a_diverging_run_never_passes_an_earlier_runs_checkpoint_off_as_its_own(tmp_path):
    """The directory holds an earlier run's checkpoint (step 2); the new run diverges at its step 1: the message says
    the checkpoint there is the earlier run's, and the file is untouched."""
    fit(tiny_model(), tiny_task(), steps=2, batch_size=4, eval_every=0, out_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(TrainingDiverged) as info:
        fit(poisoned_model(), tiny_task(), steps=4, batch_size=4, eval_every=0, out_dir=tmp_path)
    message = str(info.value)
    assert info.value.kept_step is None and "wrote no checkpoint" in message
    assert "checkpoint of step 2 of an earlier run" in message and "before this run started" in message
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_an_overflowing_memory_during_training_is_a_divergence(tmp_path):
    """The scan's overflow ValueError inside a forward pass is a TrainingDiverged, like NaN rates."""
    model = tiny_model()
    original = model.blocks[0].mixer.forward

    def huge_keys(x, *args, **kwargs):
        raise ValueError("eta: the memory overflowed: finite inputs gave non-finite outputs (...)")

    model.blocks[0].mixer.forward = huge_keys
    with pytest.raises(TrainingDiverged) as info:
        fit(model, tiny_task(), steps=3, batch_size=4, eval_every=0, out_dir=tmp_path)
    model.blocks[0].mixer.forward = original
    assert info.value.step == 1 and "overflowed" in info.value.quantity


# ------------------------------------------------------------------------------------------ disk faults


def test_a_disk_that_stops_taking_writes_mid_run_is_one_error_naming_the_file(tmp_path):
    """A file-size limit (what a full disk looks like to the writer) after the first checkpoint: torch's raw
    "PytorchStreamWriter failed writing file" error became a FileWriteError naming the file and what is kept."""
    import resource
    import signal as signals

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signals.signal(signals.SIGXFSZ, signals.SIG_IGN)

    def fill_disk(row):
        if row["step"] == 2:
            resource.setrlimit(resource.RLIMIT_FSIZE, (2000, limits[1]))

    try:
        with pytest.raises(FileWriteError) as info:
            fit(tiny_model(), tiny_task(), steps=6, batch_size=4, eval_every=0, checkpoint_every=1,
                callbacks=[fill_disk], out_dir=tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signals.signal(signals.SIGXFSZ, handler)
    message = str(info.value)
    assert isinstance(info.value, OSError) and str(tmp_path) in message
    assert re.search(r"cannot write .*(checkpoint\.pt|metrics\.parquet): File too large", message), message
    assert "the run stopped at step 2" in message and "keeps the checkpoint of step 1" in message
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")["extra"]["step"] == 1  # the last good one, whole
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_run_directory_is_one_error_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match=re.escape(str(blocker / "run"))):
        fit(tiny_model(), tiny_task(), steps=1, batch_size=4, out_dir=blocker / "run")
    with pytest.raises(FileWriteError, match=r"cannot write .*x\.pt"):
        checkpoint.save(blocker / "x.pt", tiny_model())


# ------------------------------------------------------------------------------------------ concurrent writers


def test_concurrent_atomic_writes_never_tear_or_share_a_temporary_file(tmp_path):
    target = tmp_path / "metrics.parquet"
    errors, seen = [], set()

    def writer(n):
        frame = pl.DataFrame({"writer": [n] * 2000, "x": list(range(2000))})
        try:
            for _ in range(15):
                atomic_write(target, frame.write_parquet)
        except Exception as error:  # noqa: BLE001 - any error is a failure
            errors.append(error)

    def reader():
        for _ in range(60):
            if target.exists():
                frame = pl.read_parquet(target)
                assert frame.height == 2000 and frame["writer"].n_unique() == 1
                seen.add(frame["writer"][0])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not list(tmp_path.glob(".*.tmp"))
    assert pl.read_parquet(target).height == 2000


def test_two_fits_into_one_directory_at_once_one_is_refused(tmp_path):
    started, results = threading.Event(), {}

    def slow(row):
        started.set()
        return False

    def first():
        try:
            fit(tiny_model(), tiny_task(), steps=60, batch_size=4, eval_every=0, callbacks=[slow], out_dir=tmp_path)
            results["first"] = "done"
        except Exception as error:  # noqa: BLE001
            results["first"] = error

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(60)
    with pytest.raises(RunDirectoryError, match="in use"):
        fit(tiny_model(), tiny_task(), steps=2, batch_size=4, out_dir=tmp_path)
    thread.join()
    assert results["first"] == "done"
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")["extra"]["step"] == 60
    with RunLock(tmp_path), RunLock(tmp_path):  # re-entrant in one thread
        pass


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    checkpoint.save(path, tiny_model(), extra={"step": 7, "note": "ok"})
    return path


def _expect_checkpoint_error(path, cause):
    with pytest.raises(CheckpointError) as info:
        ml.load(path)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)
    assert re.search(cause, str(info.value)), str(info.value)
    return info.value


@pytest.mark.parametrize("cut", [0, 1, 30, 0.5, -1])
def test_truncated_checkpoints_raise_checkpoint_error_naming_the_file(saved, tmp_path, cut):
    data = saved.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut if cut >= 0 else len(data) + cut])
    _expect_checkpoint_error(path, "truncated, corrupt|checksum")


def test_flipped_bytes_never_load_silently(saved, tmp_path):
    """200 single-bit flips: each either raises CheckpointError or loads exactly the saved contents (a flip in
    the zip's padding or timestamps changes nothing)."""
    import random

    data, original = saved.read_bytes(), checkpoint.load_checkpoint(saved)
    rng, path, refused = random.Random(0), tmp_path / "flipped.pt", 0
    for _ in range(200):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        try:
            loaded = checkpoint.load_checkpoint(path)
        except CheckpointError as error:
            assert str(path) in str(error)
            refused += 1
            continue
        assert loaded["sha256"] == original["sha256"]
        assert all(torch.equal(loaded["state_dict"][k], v) for k, v in original["state_dict"].items())
        assert loaded["config"] == original["config"] and loaded["extra"] == original["extra"]
    assert refused > 100


def test_a_flipped_weight_is_caught_by_the_checksum(saved, tmp_path):
    path = tmp_path / "weight.pt"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if "/data/" in info.filename and len(data) >= 8:
                data = bytes([data[0] ^ 0x40]) + data[1:]
            target.writestr(info, data)
    _expect_checkpoint_error(path, "checksum mismatch")


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path(f"/tmp/miras-faults-pwned-{os.getpid()}")


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "subprocess", "custom class"])
def test_malicious_pickles_run_nothing_and_raise_checkpoint_error(tmp_path, kind):
    import subprocess

    path = tmp_path / "evil.pt"
    payloads = {"os.system": _Boom(), "eval": None, "exec": None, "subprocess": None, "custom class": None}
    if kind == "os.system":
        torch.save({"format": "miras_lite.checkpoint", "x": payloads[kind]}, path)
    else:
        call = {"eval": (eval, (f"open('{MARKER}', 'w')",)), "exec": (exec, (f"open('{MARKER}', 'w')",)),
                "subprocess": (subprocess.call, (["touch", str(MARKER)],)),
                "custom class": (threading.Thread, ())}[kind]

        class Evil:
            def __reduce__(self):
                return call

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", pickle.dumps({"format": "miras_lite.checkpoint", "x": Evil()}, protocol=2))
            archive.writestr("evil/version", "3\n")
            archive.writestr("evil/byteorder", "little")
    _expect_checkpoint_error(path, "weights_only load refuses|truncated, corrupt")
    assert not MARKER.exists()


@pytest.mark.parametrize("edit, cause", [
    (lambda p: p.update(version=99), "version 99"),
    (lambda p: p.update(version="2"), "invalid version"),
    (lambda p: p.pop("state_dict"), "'state_dict' is missing"),
    (lambda p: p.update(state_dict={"w": 3}), "map names to tensors"),
    (lambda p: p.pop("sha256"), "carry a sha256 checksum"),
    (lambda p: p.update(model="Nope"), "model='Nope' is not a known model"),
    (lambda p: p["config"].update(d_model=-4), "does not build a MirasLM"),
    (lambda p: p["config"].update(spec={"__MemorySpec__": {"bias": "l9"}}), "invalid model config"),
    (lambda p: p.update(format="other"), "is not a miras_lite checkpoint"),
])
def test_crafted_payloads_raise_checkpoint_error_with_the_cause(saved, tmp_path, edit, cause):
    payload = torch.load(saved, weights_only=True)
    edit(payload)
    if "sha256" in payload:
        payload["sha256"] = checkpoint.digest(payload)  # crafted consistently: the checks after the checksum
    path = tmp_path / "crafted.pt"
    torch.save(payload, path)
    _expect_checkpoint_error(path, cause)


def test_wrong_shaped_weights_raise_checkpoint_error(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = torch.zeros(3)
    payload["sha256"] = checkpoint.digest(payload)
    torch.save(payload, tmp_path / "shape.pt")
    _expect_checkpoint_error(tmp_path / "shape.pt", "weights do not fit")


def test_missing_paths_directories_and_foreign_files(tmp_path):
    _expect_checkpoint_error(tmp_path / "absent.pt", "no such file")
    _expect_checkpoint_error(tmp_path, "is a directory")
    (tmp_path / "text.pt").write_text("hello")
    _expect_checkpoint_error(tmp_path / "text.pt", "truncated, corrupt")
    torch.save([1, 2], tmp_path / "list.pt")
    _expect_checkpoint_error(tmp_path / "list.pt", "not a miras_lite checkpoint")


def test_version_1_checkpoints_without_a_checksum_still_load(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    payload.pop("sha256")
    payload["version"] = 1
    torch.save(payload, tmp_path / "v1.pt")
    model, extra = ml.load(tmp_path / "v1.pt", return_extra=True)
    assert extra["step"] == 7 and isinstance(model, MirasLM)


def test_the_cli_eval_of_a_corrupt_checkpoint_prints_one_line(saved, tmp_path, capsys):
    from miras_lite.__main__ import main

    (tmp_path / "checkpoint.pt").write_bytes(saved.read_bytes()[:100])
    assert main(["eval", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint ") and str(tmp_path) in err and len(err.splitlines()) == 1


def test_run_config_round_trip_keeps_working(tmp_path):
    """What eval reads next to a checkpoint: run.json (written by RunConfig)."""
    run = RunConfig(task={"vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2}, model={"d_model": 8, "n_layers": 1})
    run.write(tmp_path / "run.json")
    assert RunConfig.from_dict(__import__("json").loads((tmp_path / "run.json").read_text())) == run
