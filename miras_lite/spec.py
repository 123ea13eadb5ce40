"""`MemorySpec`: the four Miras axes (arXiv 2504.13173) and the presets that name known models.

A spec says *how* the memory learns at test time; the per-token rates η_t, α_t, θ_t are inputs of
`memory_scan`, not part of the spec. See DESIGN.md §1-2 for the equations each field selects.
"""

from dataclasses import dataclass, fields, replace

from .checks import check_int

MEMORIES = ("linear", "mlp")
BIASES = ("dot", "l2", "lp", "huber", "robust")
HUBER_MODES = ("coord", "norm", "mixture")
RETENTIONS = ("none", "l2", "lq", "kl", "elastic")
OPTIMIZERS = ("gd", "momentum", "implicit")
GRAD_POINTS = ("previous", "retained")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")


def _positive(name, value, minimum=0.0, inclusive=False, meaning=""):
    ok = value >= minimum if inclusive else value > minimum
    if not ok:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
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


PRESETS = {
    # W_t = W_{t-1} + η_t k_t v_tᵀ
    "linear_attention": MemorySpec(bias="dot", retention="none"),
    # W_t = α W_{t-1} + η k_t v_tᵀ with a constant per-head α (RetNet) ...
    "retnet": MemorySpec(bias="dot", retention="l2"),
    # ... or a data-dependent α_t (Mamba2); the layer decides how α is produced.
    "mamba2": MemorySpec(bias="dot", retention="l2"),
    # W_t = (I - η_t k_t k_tᵀ) W_{t-1} + η_t k_t v_tᵀ
    "deltanet": MemorySpec(bias="l2", retention="none", grad_at="retained"),
    # W_t = α_t (I - η_t k_t k_tᵀ) W_{t-1} + η_t k_t v_tᵀ
    "gated_deltanet": MemorySpec(bias="l2", retention="l2", grad_at="retained"),
    # W_t = W_{t-1} - ε_t k_t (k_tᵀ W_{t-1} - v_tᵀ),  ε_t = η_t / (1 + η_t ‖k_t‖²)
    "longhorn": MemorySpec(bias="l2", retention="none", optimizer="implicit"),
    "ttt_linear": MemorySpec(bias="l2", retention="none"),
    "ttt_mlp": MemorySpec(memory="mlp", bias="l2", retention="none"),
    # S_t = θ_t S_{t-1} - η_t ∇ℓ(W_{t-1}),  W_t = α_t W_{t-1} + S_t
    "titans": MemorySpec(memory="mlp", bias="l2", retention="l2", optimizer="momentum"),
    "moneta": MemorySpec(memory="mlp", bias="lp", retention="lq", p=3.0, q=4.0),
    # Huber with an ℓ1 tail δ·e/√(e² + ε): ε = 1e-2 smooths sign(e), whose 1/√ε slope at e = 0 makes
    # gradients through time explode with the default ε = 1e-6.
    "yaad": MemorySpec(memory="mlp", bias="huber", huber_mode="mixture", retention="l2", eps=1e-2),
    "memora": MemorySpec(memory="mlp", bias="l2", retention="kl"),
}


def preset(name: str) -> MemorySpec:
    """The `MemorySpec` of a known model, e.g. `preset("gated_deltanet")`."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not known; allowed values: {', '.join(map(repr, PRESETS))}")
    return PRESETS[name]
