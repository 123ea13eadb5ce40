"""Token-mixing layers: `MirasLayer` (a test-time-trained associative memory) and `AttentionLayer`.

Both map ``x [B, T, d_model] -> y [B, T, d_model]`` causally and share one call signature,
``forward(x, initial_state=None, return_state=False)``, so models can swap one for the other.

`MirasLayer` turns a `MemorySpec` (docs/design.md §1) into a layer: it produces the per-token queries,
keys, values and the inner-optimiser rates (η_t, α_t, θ_t) from ``x`` and hands them to
`memory_scan`, which runs the memory's inner loop (docs/design.md §2-4). `AttentionLayer` is the
non-parametric baseline: causal softmax attention with rotary position embeddings and an optional
sliding window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from . import gates
from .checks import check_int
from .dispatch import BACKENDS, CHUNK_RULES, default_chunk_size
from .gates import default_eta_max
from .presets import resolve
from .memory import branch_read, fittable_value
from .scan import MemoryState, memory_scan, mlp_initial_state
from .spec import MemorySpec

__all__ = ["MirasLayer", "MirasLayerState", "AttentionLayer", "CausalDepthwiseConv1d", "apply_rotary"]

ALPHA_MODES = ("auto", "data", "constant")


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


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
        spec:       a `MemorySpec`, a preset name (``"gated_deltanet"``, ``"titans"``, ...) or a `Preset`.
        head_dim:   per-head key/value width D (default ``d_model // num_heads``, which then must
                    divide evenly). Keys and values have the same width (MLP memory needs Dk == Dv).
        conv_size:  kernel of the short depthwise causal convolution on q, k, v (0 disables it).
        chunk_size: mini-batch size of the inner optimiser (docs/design.md §4); ``None`` runs the exact
                    recurrence (docs/design.md §2-3); ``"auto"`` (default) is
                    `dispatch.default_chunk_size`: ``None`` where the exact recurrence has a
                    chunk-parallel form (delta rule, dot-bias linear memories: as fast as mini-batches,
                    without their η limit) and 64 otherwise. It also sets the default ``eta_max``.
        chunk_rule: ``"boundary"`` (default: the Miras paper's parallel training, lq and kl read out at chunk
                    boundaries only; the same as ``"minibatch"`` for every other retention) or ``"minibatch"``
                    (the reference rule), passed to `memory_scan` with ``chunk_size``.
        backend:    ``"auto"`` | ``"torch"`` | ``"triton"``, passed to `memory_scan`.
        alpha_mode: how the retention rate α is produced: ``"data"`` (α_t = sigmoid(Linear(x)),
                    Mamba2 / Gated DeltaNet style), ``"constant"`` (one learned α per head, RetNet
                    style) or ``"auto"`` (the preset's choice, `Preset.alpha_mode`, when ``spec`` is a
                    preset; ``"data"`` for a bare `MemorySpec`).
        norm_eps:   epsilon of the per-head output RMSNorm.
        eta_max:    upper bound of η_t (default `gates.default_eta_max(spec, chunk_size)`).
        eta_init:   initial η (default ``eta_max · gates.initial_eta_fraction(spec)``: 1/2 for a linear
                    memory, 1/10 for an MLP memory); must lie in (0, eta_max).
        alpha_init: (low, high): initial α of the first and the last head, the others spread
                    evenly in logit space between them (default `gates.initial_alpha_range`).
        theta_init: initial momentum θ (default 0.6).
        delta_gate: produce a per-token Huber threshold δ_t (default: True exactly when
                    ``spec.bias == "huber"``; True with another bias is an error).

    Forward, ``x [B, T, d_model]``:

    1. ``q, k, v = SiLU(ShortConv(Linear(x)))`` (bias-free projections, per-channel causal conv),
       split into H heads of width D; q and k are L2-normalised per head (‖k_t‖ = 1).
    2. Rates, per token and head (`miras_lite/gates.py`): ``η_t`` always; ``α_t`` only when
       ``spec.retention != "none"`` (``alpha=1.0`` is passed otherwise, as `memory_scan` requires);
       ``θ_t`` only when ``spec.optimizer == "momentum"``; for the Huber bias a data-dependent
       threshold ``δ_t`` (Yaad), initialised to ``spec.delta`` (``delta_gate=False`` keeps the constant
       ``spec.delta``). Projections for rates the spec does not use are not created (so every
       parameter gets a gradient).
    3. ``o = memory_scan(q, k, v, eta, alpha, theta, spec, initial_state, chunk_size)``.
    4. ``y = Linear(RMSNorm_head(o) * SiLU(Linear(x)))`` (RMSNorm over each head's D channels,
       one learned gain shared by the heads; output gate; bias-free output projection).

    Initial gate values: `gates.default_eta_max`, `gates.initial_eta_fraction` and
    `gates.initial_alpha_range` give them with the measurements behind them; θ starts at 0.6 (momentum
    multiplies the steady-state step by 1/(1-θ) = 2.5).

    Known limits (fresh layers, random inputs): the Huber-mixture bias (yaad) has large outer
    gradients over long sequences (input-gradient norm ≈ 1.5 at T=512, C=64; 6e4 for the exact
    recurrence at T=192) whatever η and α: its gradient is sign-like (δ·e/√(e²+ε), ε = spec.eps =
    1e-2 in the preset) and its derivative 1/√ε at e = 0 is amplified through time. MLP memories with a retention gate
    (titans, moneta, memora) are fine at T=512 with the defaults but can explode at T=2048.

    MLP memory: the initial memory (the accumulator A, docs/design.md §3) is a learned parameter pair
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
        spec=MemorySpec(),
        head_dim: int | None = None,
        conv_size: int = 4,
        chunk_size: int | str | None = "auto",
        chunk_rule: str = "boundary",
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
        if chunk_rule not in CHUNK_RULES:
            raise ValueError(f"chunk_rule={chunk_rule!r} is not supported; allowed values: {CHUNK_RULES}")
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode={alpha_mode!r} is not supported; allowed values: {ALPHA_MODES}")
        if not _is_number(norm_eps) or norm_eps <= 0:
            raise ValueError(f"norm_eps={norm_eps!r} must be a number > 0")
        spec, named = resolve(spec)
        if chunk_size == "auto":
            chunk_size = default_chunk_size(spec)
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be 'auto', None or an integer >= 1")
        if alpha_mode == "auto":
            alpha_mode = named.alpha_mode if named is not None else "data"
        if eta_max is None:
            eta_max = default_eta_max(spec, chunk_size)
        if not _is_number(eta_max) or eta_max <= 0:
            raise ValueError(f"eta_max={eta_max!r} must be a number > 0")
        if eta_init is None:
            eta_init = eta_max * gates.initial_eta_fraction(spec)
        if not _is_number(eta_init) or not 0 < eta_init < eta_max:
            raise ValueError(f"eta_init={eta_init!r} must lie in (0, eta_max={eta_max})")
        if alpha_init is None:
            alpha_init = gates.initial_alpha_range(spec)
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
        self.spec, self.preset_name = spec, None if named is None else named.name
        self.conv_size, self.chunk_size, self.chunk_rule, self.backend = conv_size, chunk_size, chunk_rule, backend
        self.alpha_mode, self.eta_max = alpha_mode, float(eta_max)
        H, D = num_heads, head_dim
        inner = H * D

        self.qkv_proj = nn.Linear(d_model, 3 * inner, bias=False)
        self.conv = CausalDepthwiseConv1d(3 * inner, conv_size) if conv_size > 0 else None

        # rates
        self.eta_proj = gates.gate(d_model, H, gates.logit(eta_init / eta_max))
        self.uses_alpha = spec.retention != "none"
        self.alpha_proj = None
        self.alpha_logit = None
        alpha_bias = gates.alpha_biases(*alpha_init, H)
        if self.uses_alpha and alpha_mode == "data":
            self.alpha_proj = gates.gate(d_model, H, alpha_bias)
        elif self.uses_alpha:
            self.alpha_logit = nn.Parameter(alpha_bias.clone())
        self.uses_theta = spec.optimizer == "momentum"
        self.theta_proj = gates.gate(d_model, H, gates.logit(theta_init)) if self.uses_theta else None
        self.delta_proj = gates.gate(d_model, H, gates.delta_gate_bias(spec.delta)) if delta_gate else None

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

    def extra_repr(self) -> str:
        name = self.preset_name if self.preset_name is not None else self.spec
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, spec={name}, "
            f"conv_size={self.conv_size}, chunk_size={self.chunk_size}, chunk_rule={self.chunk_rule!r}, "
            f"backend={self.backend!r}, "
            f"alpha_mode={self.alpha_mode!r}"
        )

    def rates(self, x: torch.Tensor):
        """``(eta, alpha, theta)`` for `memory_scan`: ``[B, T, H]`` tensors, or ``1.0`` / ``None``."""
        eta = gates.eta_gate(self.eta_proj(x), self.eta_max)
        alpha = 1.0
        if self.uses_alpha:
            z = self.alpha_proj(x) if self.alpha_proj is not None else self.alpha_logit.expand(*x.shape[:-1], -1)
            alpha = gates.alpha_gate(z)
        theta = gates.theta_gate(self.theta_proj(x)) if self.uses_theta else None
        return eta, alpha, theta

    def huber_delta(self, x: torch.Tensor):
        """Per-token Huber threshold ``δ_t = 1e-4 + softplus(Linear(x))`` ``[B, T, H]``, or None
        (then `memory_scan` uses ``spec.delta``)."""
        if self.delta_proj is None:
            return None
        return gates.delta_gate(self.delta_proj(x))

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
            q, k, fittable_value(self.spec.memory, k, v), eta=eta, alpha=alpha, theta=theta, spec=self.spec,
            initial_state=initial_state, chunk_size=self.chunk_size, backend=self.backend, delta=delta,
            chunk_rule=self.chunk_rule,
        )
        o = self.norm(branch_read(self.spec.memory, q, o)).reshape(B, T, self.num_heads * self.head_dim)
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
        conv_size: kernel K of a short depthwise causal convolution on q, k, v (0, the default: none,
                   the plain Transformer attention of Zoology; `MirasLayer` has one of K = 4).

    ``q, k, v = Linear(x)`` (bias-free), or ``ShortConv(Linear(x))`` with ``conv_size = K > 0``
    (``c_t = Σ_{j<K} w_j ⊙ p_{t−j}`` per channel, as `MirasLayer` without its SiLU), then RoPE on q and k
    (positions 0..T-1, "half split" layout) and

        o_t = Σ_{s ≤ t} softmax_s(q_t · k_s / √D) v_s

    by ``torch.nn.functional.scaled_dot_product_attention`` (``is_causal=True`` without a window or when
    ``window >= T``, else the explicit boolean `mask`), bias-free output projection. The convolution lets
    token t see its K − 1 predecessors before attending: on MQAR a value then carries its key, and one
    attention layer recalls it. Without it attention must first form a previous-token head and an
    induction head across its two layers, a plateau that lasts about ten times as many steps on the
    playground's MQAR (README, `benchmarks.mqar`).

    ``forward(x, initial_state=None, return_state=False)`` has the `MirasLayer` signature; there is
    no recurrent state (no KV cache), so ``initial_state`` must be None and the returned state is None.
    """

    def __init__(self, d_model: int, num_heads: int, window: int | None = None,
                 head_dim: int | None = None, rope_base: float = 10000.0, conv_size: int = 0):
        super().__init__()
        head_dim = _head_dim(d_model, num_heads, head_dim)
        check_int("conv_size", conv_size, minimum=0)
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
        self.conv_size = conv_size
        self.conv = CausalDepthwiseConv1d(3 * inner, conv_size) if conv_size > 0 else None

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, window={self.window}, "
                f"conv_size={self.conv_size}")

    def qkv(self, x: torch.Tensor):
        """Queries, keys and values ``[B, H, T, D]`` before RoPE: the projections, through the short conv if any."""
        B, T, _ = x.shape
        projected = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        if self.conv is not None:
            projected = self.conv(torch.cat(projected, dim=-1))[0].chunk(3, dim=-1)
        return [p.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2) for p in projected]

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
        q, k, v = self.qkv(x)  # [B, H, T, D]
        cos, sin = rotary_cos_sin(T, D, self.rope_base, device=x.device, dtype=x.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.window is None or self.window >= T:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(T, device=x.device))
        y = self.out_proj(o.transpose(1, 2).reshape(B, T, H * D))
        return (y, None) if return_state else y
