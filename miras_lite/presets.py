"""Presets: known models as points of the design space, and the layer choices each name implies.

A `Preset` is more than its `MemorySpec`: retnet and mamba2 share one spec and differ in how the layer
produces α (one learned constant per head vs. one per token). Everything a name implies lives here, so
no other module compares preset names.

`PRESETS` (name → MemorySpec) and `preset(name)` are the functional API of docs/design.md §5;
`named_preset(name)` returns the whole `Preset`, and `as_spec` / `resolve` accept any of a spec, a preset
name, a `Preset` or a dict of MemorySpec fields.
"""

from dataclasses import dataclass

from .spec import MemorySpec

ALPHA_MODES = ("data", "constant")


@dataclass(frozen=True)
class Recommended:
    """Settings that train a preset: the layer's chunk size and inner-rate bound η_max, the outer learning rate
    and the number of steps. Chosen on the playground's default task (MQAR with V=64, L=32, 4 pairs; MirasLM
    d_model=64, 2 layers, 1 head, batch 16); `python -m benchmarks.mqar playground` measures how far each
    preset gets with them."""

    chunk_size: int | str | None = "auto"
    eta_max: float | None = None
    lr: float = 1e-2
    steps: int = 400


@dataclass(frozen=True)
class Preset:
    """A named model: its memory `spec`, the update it amounts to (`rule`, plain text), the layer choices
    the name implies (`alpha_mode`: "data", α_t from the token, or "constant", one learned α per head) and
    the settings that train it (`recommended`)."""

    name: str
    spec: MemorySpec
    rule: str
    alpha_mode: str = "data"
    recommended: Recommended = Recommended()

    def __post_init__(self):
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode={self.alpha_mode!r} is not supported; allowed values: {ALPHA_MODES}")

    def layer_options(self):
        """The `MirasLayer` keyword arguments this preset implies."""
        return {"alpha_mode": self.alpha_mode}


_NAMED = (
    Preset("linear_attention", MemorySpec(bias="dot", retention="none"), "W_t = W_{t-1} + η_t k_t v_tᵀ",
           recommended=Recommended(lr=3e-3, steps=600)),
    Preset("retnet", MemorySpec(bias="dot", retention="l2"), "W_t = α W_{t-1} + η_t k_t v_tᵀ, one constant α per head",
           alpha_mode="constant",
           recommended=Recommended(steps=600)),
    Preset("mamba2", MemorySpec(bias="dot", retention="l2"), "W_t = α_t W_{t-1} + η_t k_t v_tᵀ, α_t from the token",
           recommended=Recommended(lr=3e-3, steps=800)),
    Preset("deltanet", MemorySpec(bias="l2", retention="none", grad_at="retained"),
           "W_t = (I - η_t k_t k_tᵀ) W_{t-1} + η_t k_t v_tᵀ",
           recommended=Recommended(eta_max=0.25, steps=500)),
    Preset("gated_deltanet", MemorySpec(bias="l2", retention="l2", grad_at="retained"),
           "W_t = α_t (I - η_t k_t k_tᵀ) W_{t-1} + η_t k_t v_tᵀ",
           recommended=Recommended(steps=600)),
    Preset("longhorn", MemorySpec(bias="l2", retention="none", optimizer="implicit"),
           "W_t = W_{t-1} - ε_t k_t (k_tᵀ W_{t-1} - v_tᵀ), ε_t = η_t / (1 + η_t ‖k_t‖²)",
           recommended=Recommended(eta_max=0.5, lr=3e-3, steps=500)),
    Preset("ttt_linear", MemorySpec(bias="l2", retention="none"), "W_t = W_{t-1} - η_t k_t (k_tᵀ W_{t-1} - v_tᵀ)",
           recommended=Recommended(eta_max=0.25, steps=500)),
    Preset("ttt_mlp", MemorySpec(memory="mlp", bias="l2", retention="none"), "an MLP memory trained by gd on the l2 loss",
           recommended=Recommended(chunk_size=8, eta_max=0.3, lr=3e-3, steps=500)),
    Preset("titans", MemorySpec(memory="mlp", bias="l2", retention="l2", optimizer="momentum"),
           "S_t = θ_t S_{t-1} - η_t ∇ℓ(W_{t-1}),  W_t = α_t W_{t-1} + S_t, an MLP memory",
           recommended=Recommended(chunk_size=16, eta_max=0.1, lr=5e-3, steps=1000)),
    Preset("moneta", MemorySpec(memory="mlp", bias="lp", retention="lq", p=3.0, q=4.0),
           "an MLP memory on the ℓ3 loss, read through the ℓ4-normalised accumulator",
           recommended=Recommended(chunk_size=16, eta_max=0.03, lr=3e-3, steps=1000)),
    # Huber with an ℓ1 tail δ·e/√(e² + ε): ε = 1e-2 smooths sign(e), whose 1/√ε slope at e = 0 makes
    # gradients through time explode with the default ε = 1e-6.
    Preset("yaad", MemorySpec(memory="mlp", bias="huber", huber_mode="mixture", retention="l2", eps=1e-2),
           "an MLP memory on a Huber loss (ℓ2 near 0, δ·ℓ1 beyond δ) with decay",
           recommended=Recommended(chunk_size=16, eta_max=0.5, lr=3e-3, steps=1500)),
    Preset("memora", MemorySpec(memory="mlp", bias="l2", retention="kl"),
           "an MLP memory on the l2 loss whose weights are a softmax of the accumulator (KL retention)",
           recommended=Recommended(chunk_size=16, eta_max=0.3, lr=3e-3, steps=1500)),
)
NAMED_PRESETS = {p.name: p for p in _NAMED}
PRESETS = {p.name: p.spec for p in _NAMED}

# The softmax-attention baseline (`MirasLM(mixer="attention")`, with the short conv on q, k, v that
# `MirasLMConfig.conv_size` gives every mixer), chosen on the same task as the presets' settings: at lr 1e-2
# it passed 0.99 by step 210 on three seeds, at 3e-3 it was at 0.27-0.87 after 600 steps on the same seeds.
ATTENTION_RECOMMENDED = Recommended(chunk_size=None, lr=1e-2, steps=400)


def recommended(name: str) -> Recommended:
    """The settings that train a preset (`Preset.recommended`) or, for ``"attention"``, the attention baseline."""
    return ATTENTION_RECOMMENDED if name == "attention" else named_preset(name).recommended


def named_preset(name: str) -> Preset:
    """The `Preset` called `name`."""
    if name not in NAMED_PRESETS:
        raise ValueError(f"preset={name!r} is not known; allowed values: {', '.join(map(repr, NAMED_PRESETS))}")
    return NAMED_PRESETS[name]


def preset(name: str) -> MemorySpec:
    """The `MemorySpec` of a known model, e.g. `preset("gated_deltanet")`."""
    return named_preset(name).spec


def resolve(value, name="spec"):
    """(MemorySpec, Preset or None) from a MemorySpec, a preset name, a `Preset` or a dict of MemorySpec fields
    (how model configs store a spec); ValueError naming `name` for anything else."""
    if isinstance(value, Preset):
        return value.spec, value
    if isinstance(value, MemorySpec):
        return value, None
    if isinstance(value, str):
        if value not in NAMED_PRESETS:
            raise ValueError(f"{name}={value!r} is not a known preset; allowed values: "
                             f"{', '.join(map(repr, NAMED_PRESETS))} (or a MemorySpec, or a dict of its fields)")
        found = NAMED_PRESETS[value]
        return found.spec, found
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"{name}={value!r}: a dict of MemorySpec fields needs string keys")
        try:
            return MemorySpec().replace(**value), None
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    raise ValueError(f"{name}={value!r} must be a MemorySpec, a preset name or a dict of MemorySpec fields")


def as_spec(value, name="spec") -> MemorySpec:
    """The `MemorySpec` of anything `resolve` accepts."""
    return resolve(value, name)[0]
