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

from ..spec import MemorySpec, preset

IGNORE_INDEX = -100


def check_int(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def resolve_spec(name, spec) -> MemorySpec:
    """A `MemorySpec` from a spec, a preset name or a dict of MemorySpec fields (``dataclasses.asdict``)."""
    if isinstance(spec, MemorySpec):
        return spec
    if isinstance(spec, str):
        return preset(spec)
    if isinstance(spec, dict):
        return MemorySpec(**spec)
    raise ValueError(f"{name}={spec!r} must be a MemorySpec, a preset name or a dict of MemorySpec fields")


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


def init_ffn_(block: Block, std: float = 0.02, n_layers: int = 1):
    """nanoGPT-style init of the feed-forward weights: N(0, std²), the residual projection scaled by
    1/√(2·n_layers). The mixers keep their own initialisation (`MirasLayer` sets its gate biases)."""
    nn.init.normal_(block.ffn.gate_up.weight, std=std)
    nn.init.normal_(block.ffn.down.weight, std=std / math.sqrt(2 * n_layers))


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
    ONLY on the labelled positions (DESIGN §7), ``logits`` is ``[N, V]`` in row-major order of
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
