"""Property tests (hypothesis): random specs, shapes and rates.

1. Robustness: for any spec fields (valid or not) and any shapes/rates/options, `memory_scan` either
   returns finite outputs and states of the right shapes, or raises ValueError - never any other
   exception - and it raises exactly when the contract says the input is invalid.
2. Agreement: for random valid inputs, the library equals the slow reference (exact or chunked).
"""

import math
import os

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import miras_lite as ml
from cases import BIASES as BIAS_CASE_LIST
from cases import GRAD_POINTS as GRAD_AT
from cases import MEMORIES, OPTIMIZERS, RETENTIONS
from miras_lite.spec import MemorySpec
from reference import assert_close, reference_minibatch_scan, reference_scan

# Deterministic by default (derandomize, see conftest.py); for a longer random search run e.g.
#   MIRAS_HYPOTHESIS_EXAMPLES=2000 HYPOTHESIS_PROFILE=miras-random pytest tests/test_properties.py
SCALE = int(os.environ.get("MIRAS_HYPOTHESIS_EXAMPLES", "60")) / 60

BIASES = tuple(dict.fromkeys(case["bias"] for case in BIAS_CASE_LIST))
HUBER_MODES = tuple(case["huber_mode"] for case in BIAS_CASE_LIST if case["bias"] == "huber")


BAD_FIELD_VALUES = dict(
    memory=["bogus", "MLP"], bias=["L1", "huber_norm"], retention=["forget", None], optimizer=["adam"],
    grad_at=["next"], huber_mode=["smooth"], p=[0.5, 0.0], q=[0.9, -1.0], delta=[0.0, -1.0], robust_delta=[-0.5],
    gamma=[-0.01], simplex_scale=[0.0], expansion=[0, 1.5], eps=[0.0, -1e-6],
)


@st.composite
def spec_fields(draw):
    """Valid MemorySpec fields, every field drawn (numeric ones included)."""
    f = dict(
        memory=draw(st.sampled_from(MEMORIES)),
        bias=draw(st.sampled_from(BIASES)),
        retention=draw(st.sampled_from(RETENTIONS)),
        optimizer=draw(st.sampled_from(OPTIMIZERS)),
        grad_at=draw(st.sampled_from(GRAD_AT)),
        huber_mode=draw(st.sampled_from(HUBER_MODES)),
        p=draw(st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0])),
        q=draw(st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0])),
        delta=draw(st.sampled_from([0.05, 0.5, 1.0, 5.0])),
        robust_delta=draw(st.sampled_from([0.0, 0.5, 2.0])),
        gamma=draw(st.sampled_from([0.0, 0.01, 0.1])),
        simplex_scale=draw(st.sampled_from([0.5, 1.0, 3.0])),
        expansion=draw(st.sampled_from([1, 2, 3])),
        eps=draw(st.sampled_from([1e-6, 1e-4, 1e-2])),
    )
    if f["optimizer"] == "implicit" and draw(st.integers(0, 3)) > 0:  # mostly a legal implicit spec
        f.update(memory="linear", bias="l2", retention=draw(st.sampled_from(["none", "l2"])))
    return f


def spec_is_valid(f):
    ok = (f["memory"] in MEMORIES and f["bias"] in BIASES and f["retention"] in RETENTIONS
          and f["optimizer"] in OPTIMIZERS and f["grad_at"] in GRAD_AT and f["huber_mode"] in HUBER_MODES
          and f["p"] >= 1 and f["q"] >= 1 and f["delta"] > 0 and f["robust_delta"] >= 0 and f["gamma"] >= 0
          and f["simplex_scale"] > 0 and f["eps"] > 0 and isinstance(f["expansion"], int) and f["expansion"] >= 1)
    if ok and f["optimizer"] == "implicit":
        ok = f["memory"] == "linear" and f["bias"] == "l2" and f["retention"] in ("none", "l2")
    return ok


@st.composite
def rate(draw, B, T, H, dtype, lo, hi, specials, gen):
    """A float, a 0-dim tensor or a [B,T,H] tensor with values in [lo, hi] (plus special values)."""
    kind = draw(st.sampled_from(["float", "scalar", "tensor", "tensor"]))
    if kind != "tensor":
        x = draw(st.one_of(st.sampled_from(specials), st.floats(lo, hi)))
        return x if kind == "float" else torch.tensor(x, dtype=dtype)
    x = lo + (hi - lo) * torch.rand(B, T, H, generator=gen, dtype=dtype)
    if draw(st.booleans()):
        s = draw(st.sampled_from(specials))
        x[..., 0] = s
    return x


def rates_valid(x, lo, hi, lo_open, hi_open):
    x = torch.as_tensor(x, dtype=torch.float64)
    if not torch.isfinite(x).all():
        return False
    a = (x > lo) if lo_open else (x >= lo)
    b = (x < hi) if hi_open else (x <= hi)
    return bool(a.all() and b.all())


@st.composite
def scan_case(draw, allow_invalid=True):
    """A random call of memory_scan. With allow_invalid, about half the cases get one or two
    corruptions (a bad spec field, mismatched Dk/Dv, a rate out of range, a bad option...)."""
    f = draw(spec_fields())
    if not allow_invalid and f["optimizer"] == "implicit":
        f.update(memory="linear", bias="l2", retention=draw(st.sampled_from(["none", "l2"])))
    corrupt = set()
    if allow_invalid and draw(st.booleans()):
        kinds = ["field", "dims", "eta", "alpha", "alpha_none", "theta", "theta_missing", "chunk", "states"]
        corrupt = set(draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=2)))
    if "field" in corrupt:
        name = draw(st.sampled_from(sorted(BAD_FIELD_VALUES)))
        f[name] = draw(st.sampled_from(BAD_FIELD_VALUES[name]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    dtype = draw(st.sampled_from([torch.float64, torch.float32])) if allow_invalid else torch.float64
    B, T, H = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 2))
    Dk = draw(st.integers(1, 4))
    Dv = Dk if f["memory"] == "mlp" else draw(st.integers(1, 4))
    if "dims" in corrupt:
        Dv = Dk + draw(st.integers(1, 2))
    q = torch.randn(B, T, H, Dk, generator=gen, dtype=dtype) / math.sqrt(Dk)
    k = torch.randn(B, T, H, Dk, generator=gen, dtype=dtype) / math.sqrt(Dk)
    v = torch.randn(B, T, H, Dv, generator=gen, dtype=dtype)
    eta = draw(rate(B, T, H, dtype, 0.0, 1.0, [0.0, 1.0], gen))
    if "eta" in corrupt:
        eta = draw(rate(B, T, H, dtype, -0.5, -1e-3, [-0.1, float("nan")], gen))
    alpha = 1.0 if f["retention"] == "none" else draw(rate(B, T, H, dtype, 0.5, 1.0, [1.0], gen))
    if "alpha" in corrupt:
        alpha = draw(st.sampled_from([0.0, -0.5, 1.5, float("inf")]))
    if "alpha_none" in corrupt:
        f["retention"] = "none" if f["optimizer"] != "implicit" else f["retention"]
        alpha = draw(rate(B, T, H, dtype, 0.5, 0.99, [0.9], gen))
    theta = draw(rate(B, T, H, dtype, 0.0, 0.95, [0.0], gen)) if f["optimizer"] == "momentum" else None
    if "theta" in corrupt:
        theta = draw(st.sampled_from([1.0, 1.5, -0.2]))
    if "theta_missing" in corrupt:
        theta = None
    chunk_size = draw(st.one_of(st.none(), st.integers(1, 7)))
    if "chunk" in corrupt:
        chunk_size = draw(st.sampled_from([0, -1, 2.0]))
    return_states = None
    if allow_invalid and draw(st.booleans()):
        return_states = draw(st.integers(1, 3)) * (chunk_size if isinstance(chunk_size, int) and chunk_size > 0 else 1)
    if "states" in corrupt:
        return_states = draw(st.sampled_from([0, -1, 1.5])) if not chunk_size or chunk_size == 1 else chunk_size + 1
    init = None
    if draw(st.booleans()) and f["memory"] in MEMORIES and isinstance(f["expansion"], int) and f["expansion"] >= 1:
        lead = (H,) if draw(st.booleans()) else (B, H)
        if f["memory"] == "linear":
            init = torch.randn(*lead, Dk, Dv, generator=gen, dtype=dtype) / math.sqrt(Dk)
        elif Dk == Dv:
            Eh = f["expansion"] * Dk
            init = (torch.randn(*lead, Dk, Eh, generator=gen, dtype=dtype) / math.sqrt(Dk),
                    torch.randn(*lead, Eh, Dk, generator=gen, dtype=dtype) / math.sqrt(Eh))
    return dict(fields=f, q=q, k=k, v=v, eta=eta, alpha=alpha, theta=theta, chunk_size=chunk_size,
                return_states=return_states, initial_state=init)


def case_is_valid(c):
    f = c["fields"]
    if not spec_is_valid(f):
        return False
    if f["memory"] == "mlp" and c["q"].shape[-1] != c["v"].shape[-1]:
        return False
    if not rates_valid(c["eta"], 0.0, math.inf, False, True):
        return False
    if not rates_valid(c["alpha"], 0.0, 1.0, True, False):
        return False
    if f["retention"] == "none" and not bool((torch.as_tensor(c["alpha"]) == 1).all()):
        return False
    if f["optimizer"] == "momentum" and (c["theta"] is None or not rates_valid(c["theta"], 0.0, 1.0, False, True)):
        return False
    C, s = c["chunk_size"], c["return_states"]
    if C is not None and (not isinstance(C, int) or C < 1):
        return False
    if s is not None and (not isinstance(s, int) or s < 1 or (C is not None and s % C)):
        return False
    return True


def _finite(x):
    return all(bool(torch.isfinite(t).all()) for t in ((x,) if torch.is_tensor(x) else x))


def _reference(c, spec):
    d = {k: (v.double() if torch.is_tensor(v) else v) for k, v in c.items()}
    init = c["initial_state"]
    if isinstance(init, tuple):
        init = tuple(t.double() for t in init)
    elif init is not None:
        init = init.double()
    args = (d["q"], d["k"], d["v"], d["eta"], d["alpha"], d["theta"], spec, init)
    if c["chunk_size"] is None:
        return reference_scan(*args)
    return reference_minibatch_scan(*args, chunk_size=c["chunk_size"])


@settings(max_examples=max(1, int(60 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scan_case())
def test_scan_returns_finite_or_raises_valueerror(c):
    valid = case_is_valid(c)
    event("valid" if valid else "invalid")
    try:
        spec = MemorySpec(**c["fields"])
    except ValueError:
        assert not spec_is_valid(c["fields"]), f"MemorySpec rejected valid fields {c['fields']}"
        return
    assert spec_is_valid(c["fields"]), f"MemorySpec accepted invalid fields {c['fields']}"
    try:
        o, state = ml.memory_scan(c["q"], c["k"], c["v"], eta=c["eta"], alpha=c["alpha"], theta=c["theta"],
                                  spec=spec, initial_state=c["initial_state"], chunk_size=c["chunk_size"],
                                  return_states=c["return_states"])
    except ValueError as err:
        assert not valid, f"valid input rejected: {err}"
        return
    assert valid, "invalid input accepted"
    B, T, H, Dk = c["q"].shape
    Dv = c["v"].shape[-1]
    assert o.shape == (B, T, H, Dv) and o.dtype == c["q"].dtype
    if spec.memory == "linear":
        shapes = [(B, H, Dk, Dv)]
    else:
        E = spec.expansion
        shapes = [(B, H, Dk, E * Dk), (B, H, E * Dk, Dk)]
    for field in ("A", "S", "W"):
        x = getattr(state, field)
        xs = (x,) if spec.memory == "linear" else x
        assert torch.is_tensor(x) == (spec.memory == "linear")
        assert [tuple(t.shape) for t in xs] == shapes, field
    s = c["return_states"]
    if s is None:
        assert state.snapshots is None
    elif T >= s:  # (T < s, zero snapshots, is pinned down in test_reference_exact.py)
        snaps = (state.snapshots,) if spec.memory == "linear" else state.snapshots
        assert [tuple(t.shape) for t in snaps] == [(sh[0], T // s) + sh[1:] for sh in shapes]
    if not (_finite(o) and _finite(state.W) and _finite(state.A)):
        # only acceptable when the mathematics itself overflows: the float64 reference must agree
        ro, rA, _, rW = _reference(c, spec)
        big = 1e30 if o.dtype == torch.float64 else 3e38
        assert not (_finite(ro) and float(ro.abs().max()) < big), "non-finite output where the reference is finite"


@settings(max_examples=max(1, int(40 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scan_case(allow_invalid=False))
def test_scan_matches_reference_on_random_valid_inputs(c):
    spec = MemorySpec(**c["fields"])
    o, state = ml.memory_scan(c["q"], c["k"], c["v"], eta=c["eta"], alpha=c["alpha"], theta=c["theta"], spec=spec,
                              initial_state=c["initial_state"], chunk_size=c["chunk_size"])
    ro, rA, rS, rW = _reference(c, spec)
    event(f"{spec.memory} chunked={c['chunk_size'] is not None}")
    if not (_finite(ro) and _finite(rW)) or float(ro.detach().abs().max()) > 1e8:
        return  # numerically wild dynamics (e.g. lq with a tiny accumulator): nothing sensible to compare
    scale = max(1.0, float(ro.detach().abs().max()))
    assert_close(o, ro, rtol=1e-6, atol=1e-8 * scale, what="o")
    assert_close(state.W, rW, rtol=1e-6, atol=1e-8 * scale, what="W")
