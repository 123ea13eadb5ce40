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

import torch
import torch.nn.functional as F
from torch import nn

from .scan import memory_scan, mlp_initial_state
from .spec import MemorySpec, preset

__all__ = ["MirasLayer", "AttentionLayer", "CausalDepthwiseConv1d", "apply_rotary"]

BACKENDS = ("auto", "torch", "triton")
_ALPHA_FLOOR = 1e-6  # α = floor + (1 - floor)·sigmoid(z) never underflows to 0
_THETA_CEIL = 1.0 - 1e-5  # θ = ceil·sigmoid(z) never rounds up to 1
ALPHA_MODES = ("auto", "data", "constant")


# --------------------------------------------------------------------------------------------
# argument checks


def _check_int(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _resolve_spec(spec) -> MemorySpec:
    if isinstance(spec, MemorySpec):
        return spec
    if isinstance(spec, str):
        return preset(spec)  # unknown names raise preset()'s ValueError (names the preset and the choices)
    raise ValueError(f"spec={spec!r} must be a MemorySpec or a preset name (str)")


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


# --------------------------------------------------------------------------------------------
# building blocks


class CausalDepthwiseConv1d(nn.Module):
    """Per-channel (depthwise) causal convolution over time: ``y_t = Σ_{j<K} w_j x_{t-j}``.

    Causal through left zero padding by ``K - 1``; no bias. Input and output ``[B, T, C]``.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # [B, C, T]
        x = F.pad(x, (self.kernel_size - 1, 0))
        return self.conv(x).transpose(1, 2)


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
                    token recurrence (DESIGN.md §2-3).
        backend:    ``"auto"`` | ``"torch"`` | ``"triton"``, passed to `memory_scan`.
        alpha_mode: how the retention rate α is produced: ``"data"`` (α_t = sigmoid(Linear(x)),
                    Mamba2 / Gated DeltaNet style), ``"constant"`` (one learned α per head, RetNet
                    style) or ``"auto"`` (``"constant"`` when ``spec == "retnet"`` was given by
                    name, ``"data"`` otherwise; `PRESETS` maps "retnet" and "mamba2" to the same
                    spec, only the α parameterisation differs).
        norm_eps:   epsilon of the per-head output RMSNorm.

    Forward, ``x [B, T, d_model]``:

    1. ``q, k, v = SiLU(ShortConv(Linear(x)))`` (bias-free projections, per-channel causal conv),
       split into H heads of width D; q and k are L2-normalised per head (so ‖k_t‖ = 1 and the
       delta rule with η_t ∈ (0, 1) is a contraction).
    2. Rates, per token and head (sigmoid keeps them in range; initial values below):
       η_t = sigmoid(Linear(x)); α_t = sigmoid(Linear(x)) only when ``spec.retention != "none"``
       (``alpha=1.0`` is passed otherwise, as `memory_scan` requires); θ_t = sigmoid(Linear(x))
       only when ``spec.optimizer == "momentum"``. Projections for rates the spec does not use
       are not created (so every parameter gets a gradient).
       The design also lists a data-dependent δ (Huber threshold) gate; `memory_scan` takes δ
       only as the spec field ``delta``, so this layer does not produce one.
    3. ``o = memory_scan(q, k, v, eta, alpha, theta, spec, initial_state, chunk_size)``.
    4. ``y = Linear(RMSNorm_head(o) * SiLU(Linear(x)))`` (RMSNorm over each head's D channels,
       one learned gain shared by the heads; output gate; bias-free output projection).

    Initial gate values (gate weights start at N(0, 0.02²) so x barely moves them at init):

    * η: l2-type biases (l2, lp, huber, robust) with linear memory start at η ≈ 0.5 — with unit
      keys the delta rule is stable for η ∈ (0, 2) and 0.5 is DeltaNet's usual starting point;
      with MLP memory they start at η ≈ 0.1 (the gradient through the LayerNorm of the MLP memory
      is several times larger than the linear one, so a smaller step keeps the inner loop
      stable); the ``dot`` bias starts at η = 0.5 (the sigmoid's steepest point; a global
      rescaling of η is absorbed by the output RMSNorm, so its level is not a stability issue).
    * α: per-head biases spread evenly in logit space between α = 0.95 and α = 0.99 (multi-scale
      memories: time constants from 20 to 100 tokens). "constant" mode uses the same values.
    * θ: θ ≈ 0.6 (momentum amplifies the step by 1/(1-θ) ≈ 2.5 at steady state).

    MLP memory: the initial memory (the accumulator A, DESIGN.md §3) is a learned parameter pair
    ``init_in [H, D, E·D]``, ``init_out [H, E·D, D]`` initialised from `mlp_initial_state`;
    it is used when ``initial_state`` is None. Linear memory starts at zero unless given.

    ``forward(x, initial_state=None, return_state=False)`` returns ``y`` or ``(y, state)`` with
    the `MemoryState` after the last token (feed it back as ``initial_state`` to continue).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        spec: MemorySpec | str = MemorySpec(),
        head_dim: int | None = None,
        conv_size: int = 4,
        chunk_size: int | None = 64,
        backend: str = "auto",
        alpha_mode: str = "auto",
        norm_eps: float = 1e-5,
        eta_init: float | None = None,
    ):
        super().__init__()
        _check_int("d_model", d_model)
        _check_int("num_heads", num_heads)
        if head_dim is None:
            if d_model % num_heads != 0:
                raise ValueError(
                    f"num_heads={num_heads} must divide d_model={d_model} when head_dim is not given"
                )
            head_dim = d_model // num_heads
        _check_int("head_dim", head_dim)
        _check_int("conv_size", conv_size, minimum=0)
        if chunk_size is not None:
            _check_int("chunk_size", chunk_size)
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not supported; allowed values: {BACKENDS}")
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode={alpha_mode!r} is not supported; allowed values: {ALPHA_MODES}")
        if not (isinstance(norm_eps, (int, float)) and norm_eps > 0):
            raise ValueError(f"norm_eps={norm_eps!r} must be a number > 0")
        preset_name = spec if isinstance(spec, str) else None
        spec = _resolve_spec(spec)
        if alpha_mode == "auto":
            alpha_mode = "constant" if preset_name == "retnet" else "data"

        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.spec, self.preset_name = spec, preset_name
        self.conv_size, self.chunk_size, self.backend = conv_size, chunk_size, backend
        self.alpha_mode = alpha_mode
        H, D = num_heads, head_dim
        inner = H * D

        self.qkv_proj = nn.Linear(d_model, 3 * inner, bias=False)
        self.conv = CausalDepthwiseConv1d(3 * inner, conv_size) if conv_size > 0 else None

        # rates
        self.eta_proj = nn.Linear(d_model, H)
        if eta_init is None:
            eta_init = self._eta_init(spec)
        self._init_gate(self.eta_proj, torch.full((H,), _logit(eta_init)))
        self.uses_alpha = spec.retention != "none"
        self.alpha_proj = None
        self.alpha_logit = None
        alpha_bias = torch.linspace(_logit(0.95), _logit(0.99), H) if H > 1 else torch.tensor([_logit(0.97)])
        if self.uses_alpha and alpha_mode == "data":
            self.alpha_proj = nn.Linear(d_model, H)
            self._init_gate(self.alpha_proj, alpha_bias)
        elif self.uses_alpha:
            self.alpha_logit = nn.Parameter(alpha_bias.clone())
        self.uses_theta = spec.optimizer == "momentum"
        self.theta_proj = None
        if self.uses_theta:
            self.theta_proj = nn.Linear(d_model, H)
            self._init_gate(self.theta_proj, torch.full((H,), _logit(0.6)))

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
    def _eta_init(spec: MemorySpec) -> float:
        if spec.bias == "dot":
            return 0.5
        return 0.1 if spec.memory == "mlp" else 0.5

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
        eta = torch.sigmoid(self.eta_proj(x))
        if not self.uses_alpha:
            alpha = 1.0
        else:
            z = self.alpha_proj(x) if self.alpha_proj is not None else self.alpha_logit.expand(*x.shape[:-1], -1)
            # a saturated float32 sigmoid can reach 0, which memory_scan rightly refuses (α ∈ (0, 1])
            alpha = _ALPHA_FLOOR + (1.0 - _ALPHA_FLOOR) * torch.sigmoid(z)
        # ... and 1, which it refuses for θ ∈ [0, 1)
        theta = _THETA_CEIL * torch.sigmoid(self.theta_proj(x)) if self.uses_theta else None
        return eta, alpha, theta

    def qkv(self, x: torch.Tensor):
        """Queries, keys (unit norm per head) and values, each ``[B, T, H, D]``."""
        B, T, _ = x.shape
        h = self.qkv_proj(x)
        if self.conv is not None:
            h = self.conv(h)
        h = F.silu(h)
        q, k, v = h.view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        q = F.normalize(q, dim=-1, eps=1e-6)
        k = F.normalize(k, dim=-1, eps=1e-6)
        return q, k, v

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False):
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape [B, T, d_model={self.d_model}]; got {tuple(x.shape)}")
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        eta, alpha, theta = self.rates(x)
        if initial_state is None and self.init_in is not None:
            initial_state = (self.init_in.to(x.dtype), self.init_out.to(x.dtype))
        o, state = memory_scan(
            q, k, v, eta=eta, alpha=alpha, theta=theta, spec=self.spec,
            initial_state=initial_state, chunk_size=self.chunk_size, backend=self.backend,
        )
        o = self.norm(o).reshape(B, T, self.num_heads * self.head_dim)
        y = self.out_proj(o * F.silu(self.gate_proj(x)))
        return (y, state) if return_state else y


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
    window, an explicit boolean mask with one), bias-free output projection.

    ``forward(x, initial_state=None, return_state=False)`` has the `MirasLayer` signature; there is
    no recurrent state (no KV cache), so ``initial_state`` must be None and the returned state is None.
    """

    def __init__(self, d_model: int, num_heads: int, window: int | None = None,
                 head_dim: int | None = None, rope_base: float = 10000.0):
        super().__init__()
        _check_int("d_model", d_model)
        _check_int("num_heads", num_heads)
        if head_dim is None:
            if d_model % num_heads != 0:
                raise ValueError(
                    f"num_heads={num_heads} must divide d_model={d_model} when head_dim is not given"
                )
            head_dim = d_model // num_heads
        _check_int("head_dim", head_dim)
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings")
        if window is not None:
            _check_int("window", window)
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
