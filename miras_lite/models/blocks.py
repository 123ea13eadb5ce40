"""The pieces every model here shares: a pre-norm residual block and argument checks.

    h ← h + mixer(RMSNorm(h))
    h ← h + SwiGLU(RMSNorm(h)),    SwiGLU(x) = W_down (SiLU(x W_gate) ⊙ (x W_up))

The mixer is any token mixer with the `MirasLayer` call signature (``MirasLayer`` or ``AttentionLayer``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from ..labels import IGNORE_INDEX
from ..layers import CausalDepthwiseConv1d
from ..spec import MemorySpec

def spec_config(spec: MemorySpec) -> dict:
    """The JSON-serialisable form of a spec stored in a model's ``.config``."""
    return dataclasses.asdict(spec)


def default_ffn_hidden(d_model: int) -> int:
    """SwiGLU width: 8/3 · d_model (same parameter count as a 4·d GELU MLP), rounded up to a multiple of 8."""
    return 8 * math.ceil(8 * d_model / 3 / 8)


class SwiGLU(nn.Module):
    """``W_down (SiLU(x W_gate) ⊙ (x W_up))``, bias-free (Shazeer 2020)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: ``h + mixer(RMSNorm(h))``, then ``h + SwiGLU(RMSNorm(h))``."""

    def __init__(self, d_model: int, mixer: nn.Module, ffn_hidden: int, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.norm2 = nn.RMSNorm(d_model, eps=norm_eps)
        self.ffn = SwiGLU(d_model, ffn_hidden)

    def forward(self, h):
        h = h + self.mixer(self.norm1(h))
        return h + self.ffn(self.norm2(h))


class ShortConvMixer(nn.Module):
    """``mixer(x + ShortConv(x))``: a depthwise causal convolution over the last K tokens
    (``y_t = x_t + Σ_{j<K} w_j ⊙ x_{t−j}``) in front of a token mixer, so every token already carries
    its K − 1 predecessors (e.g. a bAbI place token its sentence's person) before attention."""

    def __init__(self, mixer: nn.Module, d_model: int, kernel_size: int):
        super().__init__()
        self.conv = CausalDepthwiseConv1d(d_model, kernel_size)
        self.mixer = mixer

    def forward(self, x):
        return self.mixer(x + self.conv(x)[0])


def init_ffn_(block: Block, std: float = 0.02, n_layers: int = 1):
    """nanoGPT-style init of the feed-forward weights: N(0, std²), the residual projection scaled by
    1/√(2·n_layers). The mixers keep their own initialisation (`MirasLayer` sets its gate biases)."""
    nn.init.normal_(block.ffn.gate_up.weight, std=std)
    nn.init.normal_(block.ffn.down.weight, std=std / math.sqrt(2 * n_layers))


class TokenLM(nn.Module):
    """The ends every language model here shares: the token embedding E ∈ R^{V×d} (N(0, 0.02²)), the
    final RMSNorm and the output head, ``logits = RMSNorm(h) Eᵀ`` (tied) or ``RMSNorm(h) W_outᵀ``
    (``tie_weights=False``: an untied bias-free Linear, N(0, 0.02²)). Subclasses build the blocks."""

    def __init__(self, vocab_size: int, d_model: int, tie_weights: bool):
        super().__init__()
        check_int("vocab_size", vocab_size)
        check_int("d_model", d_model)
        if not isinstance(tie_weights, bool):
            raise ValueError(f"tie_weights={tie_weights!r} must be True or False")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.lm_head = None
        if not tie_weights:
            self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``h Eᵀ`` (tied) or ``lm_head(h)``."""
        if self.lm_head is not None:
            return self.lm_head(h)
        return h @ self.embed.weight.t()

    def check_inputs(self, input_ids, labels):
        """``input_ids`` [B, T] token ids and ``labels`` (None or the same shape, -100 = no label)."""
        check_tokens("input_ids", input_ids, self.vocab_size)
        if labels is not None:
            check_tokens("labels", labels, self.vocab_size, allow_ignore=True)
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels has shape {tuple(labels.shape)}; it must equal input_ids' shape "
                                 f"{tuple(input_ids.shape)} (one label per position, -100 where there is none)")


def residual_blocks(d_model: int, mixers, ffn_hidden: int) -> nn.ModuleList:
    """One `Block` per mixer, its feed-forward weights initialised by `init_ffn_`."""
    blocks = nn.ModuleList(Block(d_model, mixer, ffn_hidden) for mixer in mixers)
    for block in blocks:
        init_ffn_(block, n_layers=len(blocks))
    return blocks


def check_tokens(name, ids, vocab_size, allow_ignore=False):
    """``ids`` must be an integer tensor [B, T] (T ≥ 1) with values in [0, vocab_size) (or -100 for labels)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex \
            or ids.dtype == torch.bool or ids.dim() != 2 or ids.shape[1] == 0:
        got = f"{ids.dtype} tensor of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be an integer tensor of shape [B, T] with T >= 1; got {got}")
    if ids.numel():
        valid = (ids >= 0) & (ids < vocab_size)
        if allow_ignore:
            valid |= ids == IGNORE_INDEX
        if not bool(valid.all()):
            allowed = f"[0, {vocab_size})" + (f" or {IGNORE_INDEX} (ignored)" if allow_ignore else "")
            raise ValueError(f"{name} has values outside {allowed}: min {int(ids.min())}, max {int(ids.max())}")


def lm_output(hidden, head, labels):
    """Logits and loss from final hidden states ``[B, T, d]``.

    Without labels: ``{"loss": None, "logits": [B, T, V]}``. With labels ``[B, T]`` (aligned with the
    inputs: the logit at position t is scored against ``labels[:, t]``; -100 = no label): the head runs
    ONLY on the labelled positions (docs/design.md §7), ``logits`` is ``[N, V]`` in row-major order of
    ``labels != -100``, ``loss`` is the mean cross-entropy there (0, still differentiable, when N = 0),
    ``label_mask`` is that mask and ``predictions`` ``[B, T]`` holds the argmax at labelled positions and
    -100 elsewhere.
    """
    if labels is None:
        return {"loss": None, "logits": head(hidden)}
    mask = labels != IGNORE_INDEX
    logits = head(hidden[mask])
    target = labels[mask]
    if target.numel():
        loss = F.cross_entropy(logits.float(), target)
    else:
        loss = hidden.sum() * 0.0
    predictions = torch.full_like(labels, IGNORE_INDEX)
    predictions[mask] = logits.detach().argmax(-1)
    return {"loss": loss, "logits": logits, "label_mask": mask, "predictions": predictions}
