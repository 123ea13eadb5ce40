"""`MemorySpec`: one point of the four Miras axes (arXiv 2504.13173).

A spec says *how* the memory learns at test time; the per-token rates η_t, α_t, θ_t are inputs of
`memory_scan`, not part of the spec. docs/design.md §1-2 gives the equations each field selects, and one
file per axis holds them in code: `memory.py`, `bias.py`, `retention.py`, `optimizer.py`. Named models
are in `presets.py`.
"""

import math
import numbers
from dataclasses import dataclass, fields, replace

from .checks import check_int

MEMORIES = ("linear", "mlp")
BIASES = ("dot", "l2", "lp", "huber", "robust")
HUBER_MODES = ("coord", "norm", "mixture")
RETENTIONS = ("none", "l2", "lq", "kl", "elastic")
OPTIMIZERS = ("gd", "momentum", "implicit")
GRAD_POINTS = ("previous", "retained")


# lq's read-out A / max(‖A‖_q, ε)^{q−2} reaches ε^{3−q} and its gradient ε^{1−q} when the accumulator is
# small (η small, or early in a sequence): (q − 1)·log10(1/ε) is kept at or below this many decades, so
# that both stay far inside float32's range (3.4e38) with room for the products around them.
LQ_MAX_DECADES = 30


def _choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")


def _finite(value):
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def _positive(name, value, minimum=0.0, inclusive=False, meaning=""):
    bound = f">= {minimum}" if inclusive else f"> {minimum}"
    # a real number: not a bool (True would pass as 1), not a tensor or a string; finite
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not _finite(value):
        raise ValueError(f"{name}={value!r} must be a finite number {bound}{meaning}")
    ok = value >= minimum if inclusive else value > minimum
    if not ok:
        raise ValueError(f"{name}={value!r} must be {bound}{meaning}")


@dataclass(frozen=True)
class MemorySpec:
    """One point of the Miras design space.

    memory:     "linear" (W ∈ R^{Dk×Dv}, prediction k @ W) or "mlp" (M(x) = x + LN(GELU(x W_in) W_out)).
    bias:       attentional bias ℓ(M(k), v): "dot", "l2", "lp" (p), "huber" (δ, huber_mode), "robust" (Δ).
    retention:  "none", "l2" (decay α_t), "lq" (q-norm normalised read-out, Moneta),
                "kl" (W = c·softmax(A), Memora), "elastic" (soft threshold γ after the decay).
    optimizer:  "gd", "momentum" (θ_t, Titans), "implicit" (closed-form step, Longhorn).
    grad_at:    where the gradient is taken: "previous" (P = W_{t-1}) or "retained" (P = N(α_t A_{t-1})).
    """

    memory: str = "linear"
    bias: str = "l2"
    retention: str = "l2"
    optimizer: str = "gd"
    grad_at: str = "previous"
    p: float = 3.0
    q: float = 4.0
    delta: float = 1.0
    huber_mode: str = "coord"
    robust_delta: float = 0.5
    gamma: float = 0.01
    simplex_scale: float = 1.0
    expansion: int = 4
    eps: float = 1e-6

    def __post_init__(self):
        _choice("memory", self.memory, MEMORIES)
        _choice("bias", self.bias, BIASES)
        _choice("retention", self.retention, RETENTIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("grad_at", self.grad_at, GRAD_POINTS)
        _choice("huber_mode", self.huber_mode, HUBER_MODES)
        _positive("p", self.p, 1.0, inclusive=True, meaning=" (the lp bias is a norm only for p >= 1)")
        _positive("q", self.q, 1.0, inclusive=True, meaning=" (the lq retention is a norm only for q >= 1)")
        _positive("delta", self.delta)
        _positive("robust_delta", self.robust_delta, inclusive=True)
        _positive("gamma", self.gamma, inclusive=True)
        _positive("simplex_scale", self.simplex_scale)
        _positive("eps", self.eps)
        check_int("expansion", self.expansion)
        for name in ("p", "q", "delta", "robust_delta", "gamma", "simplex_scale", "eps"):  # plain floats from here on
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.retention == "lq" and self.q > 3 and (self.q - 1) * math.log10(1 / self.eps) > LQ_MAX_DECADES:
            raise ValueError(
                f"q={self.q!r} with eps={self.eps!r}: retention='lq' divides by max(‖A‖_q, eps)^(q-2), so a small "
                f"memory is read at up to eps^(3-q) and its gradient reaches eps^(1-q) = {self.eps ** (1 - self.q):.1e}, "
                f"which overflows float32; allowed: (q - 1)·log10(1/eps) <= {LQ_MAX_DECADES} (with eps={self.eps:g}: "
                f"q <= {1 + LQ_MAX_DECADES / math.log10(1 / self.eps):.3g}), or a larger eps")
        if self.optimizer == "implicit":
            if self.memory != "linear" or self.bias != "l2" or self.retention not in ("none", "l2"):
                raise ValueError(
                    "optimizer='implicit' has a closed form only for memory='linear', bias='l2' and "
                    f"retention in ('none', 'l2'); got memory={self.memory!r}, bias={self.bias!r}, "
                    f"retention={self.retention!r}"
                )

    def replace(self, **changes) -> "MemorySpec":
        """A copy with `changes` applied (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown MemorySpec field(s) {sorted(unknown)}; allowed: {[f.name for f in fields(self)]}")
        return replace(self, **changes)

    @property
    def identity_readout(self) -> bool:
        """True when the memory is the accumulator itself (W = A): retention none, l2 or elastic."""
        return self.retention not in ("lq", "kl")
