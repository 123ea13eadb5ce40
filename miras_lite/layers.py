"""Token-mixing layers: `MirasLayer` (a test-time-trained associative memory) and `AttentionLayer`.

Both map ``x [B, T, d_model] -> y [B, T, d_model]`` causally and share one call signature,
``forward(x, initial_state=None, return_state=False)``, so models can swap one for the other.

`MirasLayer` turns a `MemorySpec` (DESIGN.md §1) into a layer: it produces the per-token queries,
keys, values and the inner-optimiser rates (η_t, α_t, θ_t) from ``x`` and hands them to
`memory_scan`, which runs the memory's inner loop (DESIGN.md §2-4). `AttentionLayer` is the
non-parametric baseline: causal softmax attention with rotary position embeddings and an optional
sliding window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_int
from .scan import BACKENDS, MemoryState, exact_parallel_update, memory_scan, mlp_initial_state
from .spec import MemorySpec, preset

__all__ = ["MirasLayer", "MirasLayerState", "AttentionLayer", "CausalDepthwiseConv1d", "apply_rotary",
           "default_eta_max"]

_ALPHA_FLOOR = 1e-6  # α = floor + (1 - floor)·sigmoid(z) never underflows to 0
_THETA_CEIL = 1.0 - 1e-5  # θ = ceil·sigmoid(z) never rounds up to 1
_DELTA_FLOOR = 1e-4  # δ = floor + softplus(z) stays > 0
ALPHA_MODES = ("auto", "data", "constant")
DEFAULT_CHUNK_SIZE = 64


# --------------------------------------------------------------------------------------------
# argument checks


def _head_dim(d_model, num_heads, head_dim):
    """The per-head width: `head_dim`, or d_model // num_heads when that divides evenly."""
    check_int("d_model", d_model)
    check_int("num_heads", num_heads)
    if head_dim is None:
        if d_model % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model} when head_dim is not given")
        head_dim = d_model // num_heads
    check_int("head_dim", head_dim)
    return head_dim


def _resolve_spec(spec) -> MemorySpec:
    if isinstance(spec, MemorySpec):
        return spec
    if isinstance(spec, str):
        return preset(spec)  # unknown names raise preset()'s ValueError (names the preset and the choices)
    raise ValueError(f"spec={spec!r} must be a MemorySpec or a preset name (str)")


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def default_eta_max(spec: MemorySpec, chunk_size: int | None) -> float:
    """The largest inner learning rate `MirasLayer` produces by default (η_t = η_max · sigmoid(·)).

    ``η_max = min(cap, 2 / C)`` with ``cap = 1`` for a linear memory and ``0.1`` for an MLP memory;
    the ``2 / C`` term applies only to chunked scans (``C = chunk_size >= 3``).

    * Linear memory, exact recurrence: with unit keys the delta rule ``W ← (I − η k kᵀ) W + ...``
      is a contraction for η ∈ (0, 2), so η < 1 is always stable.
    * Chunked (mini-batch) scans take every gradient of a chunk at the same point, so one chunk
      applies the summed step ``Σ_i η_i k_i k_iᵀ``, whose norm reaches ``C · η_max`` for aligned
      keys; ``η_max = 2 / C`` bounds it by 2 whatever the keys. Measured without it: deltanet /
      gated_deltanet / longhorn with C=64 and η≈0.5 grow their state geometrically, chunk after
      chunk (|A| ~ 1e13 at T=2048). The dot bias on a linear memory is exempt: its gradient
      −k ⊗ v does not depend on the memory, chunking changes nothing, η_max stays 1.
    * MLP memory (LayerNorm inside): no such bound exists; measured on fresh layers, the outer
      gradients of the exact recurrence explode over a few hundred tokens for η ≳ 0.03-0.1
      (moneta, memora), hence the cap 0.1 (and an initial η of 0.01, see `MirasLayer`).
    """
    cap = 0.1 if spec.memory == "mlp" else 1.0
    if (spec.memory == "linear" and spec.bias == "dot") or chunk_size is None or chunk_size <= 2:
        return cap
    return min(cap, 2.0 / chunk_size)


# --------------------------------------------------------------------------------------------
# building blocks


class CausalDepthwiseConv1d(nn.Module):
    """Per-channel (depthwise) causal convolution over time: ``y_t = Σ_{j<K} w_j x_{t-j}``.

    Causal through left padding by ``K - 1``: zeros, or ``cache`` (the last ``K - 1`` inputs of
    the previous call, ``[B, K-1, C]``) to continue a sequence. No bias. Input/output ``[B, T, C]``.
    `forward` returns ``(y, new_cache)``.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None):
        B, T, C = x.shape
        pad = self.kernel_size - 1
        if cache is None:
            cache = x.new_zeros(B, pad, C)
        elif tuple(cache.shape) != (B, pad, C):
            raise ValueError(f"initial_state: conv cache has shape {tuple(cache.shape)}, expected {(B, pad, C)}")
        xp = torch.cat([cache.to(x.dtype), x], dim=1)  # [B, K-1+T, C]
        y = self.conv(xp.transpose(1, 2)).transpose(1, 2)
        return y, xp[:, xp.shape[1] - pad:]


def rotary_cos_sin(seq_len: int, dim: int, base: float = 10000.0, device=None, dtype=None):
    """cos/sin tables ``[T, dim/2]`` for RoPE, angle of pair i at position t: ``t · base^(-2i/dim)``."""
    inv_freq = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    ang = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., T, D]`` in the "half split" convention: pair (x_i, x_{i+D/2}) is rotated
    by the angle of pair i (GPT-NeoX / LLaMA layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# --------------------------------------------------------------------------------------------
# Miras layer


@dataclass
class MirasLayerState(MemoryState):
    """A `MemoryState` (A, S, W, snapshots; see `memory_scan`) plus the short conv's cache
    ``conv [B, K-1, 3·H·D]``: the last K-1 projected inputs, so that feeding the state back as
    ``initial_state`` continues the sequence exactly. Anything that accepts a `MemoryState`
    accepts it (`memory_scan` reads only A and S)."""

    conv: object = None


class MirasLayer(nn.Module):
    """A multi-head test-time-memory token mixer for any `MemorySpec`.

    Args:
        d_model:    model width.
        num_heads:  number of memory heads H.
        spec:       a `MemorySpec` or a preset name (``"gated_deltanet"``, ``"titans"``, ...).
        head_dim:   per-head key/value width D (default ``d_model // num_heads``, which then must
                    divide evenly). Keys and values have the same width (MLP memory needs Dk == Dv).
        conv_size:  kernel of the short depthwise causal convolution on q, k, v (0 disables it).
        chunk_size: mini-batch size of the inner optimiser (DESIGN.md §4); ``None`` runs the exact
                    recurrence (DESIGN.md §2-3); ``"auto"`` (default) is ``None`` where the exact
                    recurrence has a chunk-parallel form (delta rule, dot-bias linear memories: as
                    fast as mini-batches, without their η limit) and 64 otherwise. It also sets the
                    default ``eta_max``.
        backend:    ``"auto"`` | ``"torch"`` | ``"triton"``, passed to `memory_scan`.
        alpha_mode: how the retention rate α is produced: ``"data"`` (α_t = sigmoid(Linear(x)),
                    Mamba2 / Gated DeltaNet style), ``"constant"`` (one learned α per head, RetNet
                    style) or ``"auto"`` (``"constant"`` when ``spec="retnet"`` was given by
                    name, ``"data"`` otherwise: `PRESETS` maps "retnet" and "mamba2" to the same
                    spec, only the α parameterisation differs).
        norm_eps:   epsilon of the per-head output RMSNorm.
        eta_max:    upper bound of η_t (default `default_eta_max(spec, chunk_size)`).
        eta_init:   initial η (default ``eta_max / 2`` for a linear memory, ``eta_max / 10`` for
                    an MLP memory); must lie in (0, eta_max).
        alpha_init: (low, high): initial α of the first and the last head, the others spread
                    evenly in logit space between them (default (0.95, 0.99) for a linear memory,
                    (0.99, 0.999) for an MLP memory).
        theta_init: initial momentum θ (default 0.6).
        delta_gate: produce a per-token Huber threshold δ_t (default: True exactly when
                    ``spec.bias == "huber"``; True with another bias is an error).

    Forward, ``x [B, T, d_model]``:

    1. ``q, k, v = SiLU(ShortConv(Linear(x)))`` (bias-free projections, per-channel causal conv),
       split into H heads of width D; q and k are L2-normalised per head (‖k_t‖ = 1).
    2. Rates, per token and head: ``η_t = eta_max · sigmoid(Linear(x))``;
       ``α_t = sigmoid(Linear(x))`` only when ``spec.retention != "none"`` (``alpha=1.0`` is passed
       otherwise, as `memory_scan` requires); ``θ_t = sigmoid(Linear(x))`` only when
       ``spec.optimizer == "momentum"``. Projections for rates the spec does not use are not
       created (so every parameter gets a gradient). α is kept >= 1e-6 and θ <= 1 - 1e-5 so a
       saturated float32 sigmoid never leaves the ranges `memory_scan` accepts.
       Huber bias: a data-dependent threshold ``δ_t = 1e-4 + softplus(Linear(x))`` (Yaad),
       initialised to ``spec.delta`` and passed as `memory_scan`'s ``delta``; ``delta_gate=False``
       keeps the constant ``spec.delta``.
    3. ``o = memory_scan(q, k, v, eta, alpha, theta, spec, initial_state, chunk_size)``.
    4. ``y = Linear(RMSNorm_head(o) * SiLU(Linear(x)))`` (RMSNorm over each head's D channels,
       one learned gain shared by the heads; output gate; bias-free output projection).

    Initial gate values (rate weights start at N(0, 0.02²), so at init the rates are set by the
    biases and barely depend on x):

    * η (see `default_eta_max` for the bound): linear memory starts at η_max/2 — 0.5 for the exact
      recurrence (DeltaNet's usual start; the unit-key delta rule is contractive for η < 2) and
      1/C for chunks of C tokens. For the ``dot`` bias the level of η is immaterial (a global
      rescaling is absorbed by the output RMSNorm); 0.5 sits at the sigmoid's steepest point.
      MLP memory starts at η_max/10: 0.01 exact, 0.1·2/C chunked. Larger values (0.1) made the
      outer gradients of fresh moneta/memora layers explode (1e5-1e13 at T=256-512).
    * α: per-head biases spread evenly in logit space over [0.95, 0.99] for linear memory
      (multi-scale time constants of 20-100 tokens) and over [0.99, 0.999] for MLP memory: weight
      decay drives an MLP memory towards zero weights, where the LayerNorm inside it has a huge
      Jacobian, and the backward pass through time explodes (titans with α≈0.9: 1e6 at T=256).
      ``"constant"`` mode starts from the same values.
    * θ: 0.6 (momentum multiplies the steady-state step by 1/(1-θ) = 2.5).

    Known limits (fresh layers, random inputs): the Huber-mixture bias (yaad) has large outer
    gradients over long sequences (input-gradient norm ≈ 1.5 at T=512, C=64; 6e4 for the exact
    recurrence at T=192) whatever η and α: its gradient is sign-like (δ·e/√(e²+ε), ε = spec.eps =
    1e-2 in the preset) and its derivative 1/√ε at e = 0 is amplified through time. MLP memories with a retention gate
    (titans, moneta, memora) are fine at T=512 with the defaults but can explode at T=2048.

    MLP memory: the initial memory (the accumulator A, DESIGN.md §3) is a learned parameter pair
    ``init_in [H, D, E·D]``, ``init_out [H, E·D, D]`` initialised from `mlp_initial_state`;
    it is used when ``initial_state`` is None. Linear memory starts at zero unless given.

    ``forward(x, initial_state=None, return_state=False)`` returns ``y`` or ``(y, state)``, where
    state is a `MirasLayerState`: the `MemoryState` after the last token plus the short conv's
    history; feeding it back as ``initial_state`` continues the sequence exactly.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        spec: MemorySpec | str = MemorySpec(),
        head_dim: int | None = None,
        conv_size: int = 4,
        chunk_size: int | str | None = "auto",
        backend: str = "auto",
        alpha_mode: str = "auto",
        norm_eps: float = 1e-5,
        eta_max: float | None = None,
        eta_init: float | None = None,
        alpha_init: tuple[float, float] | None = None,
        theta_init: float = 0.6,
        delta_gate: bool | None = None,
    ):
        super().__init__()
        head_dim = _head_dim(d_model, num_heads, head_dim)
        check_int("conv_size", conv_size, minimum=0)
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not supported; allowed values: {BACKENDS}")
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode={alpha_mode!r} is not supported; allowed values: {ALPHA_MODES}")
        if not _is_number(norm_eps) or norm_eps <= 0:
            raise ValueError(f"norm_eps={norm_eps!r} must be a number > 0")
        preset_name = spec if isinstance(spec, str) else None
        spec = _resolve_spec(spec)
        if chunk_size == "auto":
            chunk_size = None if exact_parallel_update(spec) else DEFAULT_CHUNK_SIZE
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be 'auto', None or an integer >= 1")
        if alpha_mode == "auto":
            alpha_mode = "constant" if preset_name == "retnet" else "data"
        if eta_max is None:
            eta_max = default_eta_max(spec, chunk_size)
        if not _is_number(eta_max) or eta_max <= 0:
            raise ValueError(f"eta_max={eta_max!r} must be a number > 0")
        if eta_init is None:
            eta_init = eta_max * (0.1 if spec.memory == "mlp" else 0.5)
        if not _is_number(eta_init) or not 0 < eta_init < eta_max:
            raise ValueError(f"eta_init={eta_init!r} must lie in (0, eta_max={eta_max})")
        if alpha_init is None:
            alpha_init = (0.99, 0.999) if spec.memory == "mlp" else (0.95, 0.99)
        if (not isinstance(alpha_init, (tuple, list)) or len(alpha_init) != 2
                or not all(_is_number(a) and 0 < a < 1 for a in alpha_init)):
            raise ValueError(f"alpha_init={alpha_init!r} must be a pair (low, high) of numbers in (0, 1)")
        if not _is_number(theta_init) or not 0 < theta_init < 1:
            raise ValueError(f"theta_init={theta_init!r} must be a number in (0, 1)")
        if delta_gate is None:
            delta_gate = spec.bias == "huber"
        if not isinstance(delta_gate, bool):
            raise ValueError(f"delta_gate={delta_gate!r} must be None, True or False")
        if delta_gate and spec.bias != "huber":
            raise ValueError(f"delta_gate=True needs bias='huber' (the threshold δ is a Huber parameter); "
                             f"got bias={spec.bias!r}")

        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.spec, self.preset_name = spec, preset_name
        self.conv_size, self.chunk_size, self.backend = conv_size, chunk_size, backend
        self.alpha_mode, self.eta_max = alpha_mode, float(eta_max)
        H, D = num_heads, head_dim
        inner = H * D

        self.qkv_proj = nn.Linear(d_model, 3 * inner, bias=False)
        self.conv = CausalDepthwiseConv1d(3 * inner, conv_size) if conv_size > 0 else None

        # rates
        self.eta_proj = nn.Linear(d_model, H)
        self._init_gate(self.eta_proj, torch.full((H,), logit(eta_init / eta_max)))
        self.uses_alpha = spec.retention != "none"
        self.alpha_proj = None
        self.alpha_logit = None
        lo, hi = alpha_init
        alpha_bias = torch.linspace(logit(lo), logit(hi), H) if H > 1 else torch.tensor([logit((lo + hi) / 2)])
        if self.uses_alpha and alpha_mode == "data":
            self.alpha_proj = nn.Linear(d_model, H)
            self._init_gate(self.alpha_proj, alpha_bias)
        elif self.uses_alpha:
            self.alpha_logit = nn.Parameter(alpha_bias.clone())
        self.uses_theta = spec.optimizer == "momentum"
        self.theta_proj = None
        if self.uses_theta:
            self.theta_proj = nn.Linear(d_model, H)
            self._init_gate(self.theta_proj, torch.full((H,), logit(theta_init)))
        self.delta_proj = None
        if delta_gate:
            self.delta_proj = nn.Linear(d_model, H)
            softplus_inv = math.log(math.expm1(max(spec.delta - _DELTA_FLOOR, 1e-6)))
            self._init_gate(self.delta_proj, torch.full((H,), softplus_inv))

        # learned initial MLP memory (the accumulator A)
        self.init_in = self.init_out = None
        if spec.memory == "mlp":
            w_in, w_out = mlp_initial_state(H, D, spec.expansion)
            self.init_in = nn.Parameter(w_in.detach().clone().float())
            self.init_out = nn.Parameter(w_out.detach().clone().float())

        # output
        self.norm = nn.RMSNorm(D, eps=norm_eps)
        self.gate_proj = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    @staticmethod
    def _init_gate(lin: nn.Linear, bias: torch.Tensor):
        nn.init.normal_(lin.weight, std=0.02)
        with torch.no_grad():
            lin.bias.copy_(bias)

    def extra_repr(self) -> str:
        name = self.preset_name if self.preset_name is not None else self.spec
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, spec={name}, "
            f"conv_size={self.conv_size}, chunk_size={self.chunk_size}, backend={self.backend!r}, "
            f"alpha_mode={self.alpha_mode!r}"
        )

    def rates(self, x: torch.Tensor):
        """``(eta, alpha, theta)`` for `memory_scan`: ``[B, T, H]`` tensors, or ``1.0`` / ``None``."""
        eta = self.eta_max * torch.sigmoid(self.eta_proj(x))
        if not self.uses_alpha:
            alpha = 1.0
        else:
            z = self.alpha_proj(x) if self.alpha_proj is not None else self.alpha_logit.expand(*x.shape[:-1], -1)
            # a saturated float32 sigmoid can reach 0, which memory_scan rightly refuses (α ∈ (0, 1])
            alpha = _ALPHA_FLOOR + (1.0 - _ALPHA_FLOOR) * torch.sigmoid(z)
        # ... and 1, which it refuses for θ ∈ [0, 1)
        theta = _THETA_CEIL * torch.sigmoid(self.theta_proj(x)) if self.uses_theta else None
        return eta, alpha, theta

    def huber_delta(self, x: torch.Tensor):
        """Per-token Huber threshold ``δ_t = 1e-4 + softplus(Linear(x))`` ``[B, T, H]``, or None
        (then `memory_scan` uses ``spec.delta``)."""
        if self.delta_proj is None:
            return None
        return _DELTA_FLOOR + F.softplus(self.delta_proj(x))

    def qkv(self, x: torch.Tensor, conv_cache: torch.Tensor | None = None):
        """Queries, keys (unit norm per head) and values, each ``[B, T, H, D]``, and the new conv
        cache (None without a conv)."""
        B, T, _ = x.shape
        h = self.qkv_proj(x)
        if self.conv is not None:
            h, conv_cache = self.conv(h, conv_cache)
        h = F.silu(h)
        q, k, v = h.view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        q = F.normalize(q, dim=-1, eps=1e-6)
        k = F.normalize(k, dim=-1, eps=1e-6)
        return q, k, v, conv_cache

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False):
        """``x [B, T, d_model]`` -> ``y`` or ``(y, MirasLayerState)``.

        ``initial_state``: None (zeros / the learned MLP initial memory), anything `memory_scan`
        accepts (accumulator tensor, (W_in, W_out) tuple, `MemoryState`), or the `MirasLayerState`
        of a previous call, which also restores the short conv's history.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [B, T, d_model={self.d_model}]; got {shape}")
        B, T, _ = x.shape
        conv_cache = initial_state.conv if isinstance(initial_state, MirasLayerState) else None
        q, k, v, conv_cache = self.qkv(x, conv_cache)
        eta, alpha, theta = self.rates(x)
        delta = self.huber_delta(x)
        if initial_state is None and self.init_in is not None:
            initial_state = (self.init_in.to(x.dtype), self.init_out.to(x.dtype))
        o, state = memory_scan(
            q, k, v, eta=eta, alpha=alpha, theta=theta, spec=self.spec,
            initial_state=initial_state, chunk_size=self.chunk_size, backend=self.backend, delta=delta,
        )
        o = self.norm(o).reshape(B, T, self.num_heads * self.head_dim)
        y = self.out_proj(o * F.silu(self.gate_proj(x)))
        if not return_state:
            return y
        state = MirasLayerState(**{f.name: getattr(state, f.name) for f in fields(MemoryState)}, conv=conv_cache)
        return y, state


# --------------------------------------------------------------------------------------------
# softmax attention baseline


class AttentionLayer(nn.Module):
    """Causal multi-head softmax attention with rotary position embeddings (the baseline).

    Args:
        d_model:   model width.
        num_heads: number of heads H.
        window:    ``None`` for full causal attention, or an int W >= 1: token t attends to the
                   positions (t - W, t] (itself and the W - 1 before it).
        head_dim:  per-head width (default ``d_model // num_heads``); must be even (RoPE rotates pairs).
        rope_base: RoPE base frequency.

    ``q, k, v = Linear(x)`` (bias-free), RoPE on q and k (positions 0..T-1, "half split"
    layout), ``torch.nn.functional.scaled_dot_product_attention`` (``is_causal=True`` without a
    window or when ``window >= T``, else the explicit boolean `mask`), bias-free output projection.

    ``forward(x, initial_state=None, return_state=False)`` has the `MirasLayer` signature; there is
    no recurrent state (no KV cache), so ``initial_state`` must be None and the returned state is None.
    """

    def __init__(self, d_model: int, num_heads: int, window: int | None = None,
                 head_dim: int | None = None, rope_base: float = 10000.0):
        super().__init__()
        head_dim = _head_dim(d_model, num_heads, head_dim)
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings")
        if window is not None:
            check_int("window", window)
        if not (isinstance(rope_base, (int, float)) and rope_base > 1):
            raise ValueError(f"rope_base={rope_base!r} must be a number > 1")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.window, self.rope_base = window, float(rope_base)
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, window={self.window}"

    def mask(self, T: int, device=None) -> torch.Tensor:
        """Boolean ``[T, T]`` mask, True where query t may attend key s: ``t - window < s <= t``."""
        t = torch.arange(T, device=device)
        diff = t[:, None] - t[None, :]
        allowed = diff >= 0
        if self.window is not None:
            allowed = allowed & (diff < self.window)
        return allowed

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False):
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape [B, T, d_model={self.d_model}]; got {tuple(x.shape)}")
        if initial_state is not None:
            raise ValueError("initial_state must be None for AttentionLayer (it keeps no recurrent state)")
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, H, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)
        cos, sin = rotary_cos_sin(T, D, self.rope_base, device=x.device, dtype=x.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.window is None or self.window >= T:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(T, device=x.device))
        y = self.out_proj(o.transpose(1, 2).reshape(B, T, H * D))
        return (y, None) if return_state else y
