"""`MirasLM`: a small language model whose token mixer is a test-time memory, attention, or both.

    h_0 = E[x]                  (token embedding, E ∈ R^{V×d})
    h_l = Block_l(h_{l-1})       (RMSNorm → mixer → residual → RMSNorm → SwiGLU → residual)
    logits = RMSNorm(h_L) Eᵀ     (tied head; an untied Linear with tie_weights=False)

Mixers: ``"miras"`` (every layer a `MirasLayer` with ``spec``), ``"attention"`` (full causal softmax
attention), ``"sliding"`` (causal attention over the last ``window`` tokens) and ``"hybrid"`` (layers
alternate: `MirasLayer` at even indices 0, 2, ..., sliding-window attention at odd ones).
"""

from __future__ import annotations

import inspect

import torch

from ..layers import AttentionLayer, MirasLayer
from ..checks import check_int
from ..presets import resolve
from .blocks import TokenLM, default_ffn_hidden, lm_output, residual_blocks, spec_config

MIXERS = ("miras", "attention", "sliding", "hybrid")


class MirasLM(TokenLM):
    """Causal language model: embedding, ``n_layers`` pre-norm blocks, final RMSNorm, (tied) head.

    Args:
        vocab_size:  V.
        d_model:     width d.
        n_layers:    number of blocks.
        num_heads:   heads of every mixer (memory heads or attention heads).
        mixer:       ``"miras"`` | ``"attention"`` | ``"sliding"`` | ``"hybrid"`` (module docstring).
        spec:        the memory of the `MirasLayer` mixers: a `MemorySpec`, a preset name, a `Preset` or a
                     dict of MemorySpec fields (how ``.config`` stores it).
        chunk_size:  `MirasLayer` chunk size (None: exact recurrence; "auto": exact where it is chunk-parallel).
        window:      attention window of ``"sliding"`` and of the attention layers of ``"hybrid"``
                     (unused by ``"attention"``, which is full causal attention).
        tie_weights: share the embedding matrix with the output head.
        ffn_hidden:  SwiGLU width (default 8/3·d rounded up to a multiple of 8).
        miras_kwargs: extra keyword arguments of every `MirasLayer` (``conv_size``, ``eta_max``, ...).
        attention_kwargs: extra keyword arguments of every `AttentionLayer` (``conv_size``, ``rope_base``).

    ``forward(input_ids [B, T], labels=None)`` returns a dict: without labels ``{"loss": None,
    "logits": [B, T, V]}``; with labels ``[B, T]`` (aligned with the inputs — the logit at position t is
    scored against ``labels[:, t]``, no shift; -100 marks positions without a label) the head runs only
    on the labelled positions (docs/design.md §7): ``logits`` ``[N, V]`` in row-major order of ``labels != -100``,
    ``loss`` the mean cross-entropy there, ``label_mask`` ``[B, T]`` and ``predictions`` ``[B, T]``
    (argmax at labelled positions, -100 elsewhere).

    ``.config`` is a JSON-serialisable dict of the constructor arguments (spec as
    ``dataclasses.asdict``), so ``MirasLM(**model.config)`` rebuilds the same architecture. A spec
    given as a preset is stored as its fields plus the `MirasLayer` options the preset implies
    (`Preset.layer_options`, e.g. retnet's constant α), so the rebuilt model has the same parameters.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, num_heads: int = 2,
                 mixer: str = "miras", spec="gated_deltanet", chunk_size: int | str | None = "auto", window: int = 64,
                 tie_weights: bool = True, ffn_hidden: int | None = None, miras_kwargs: dict | None = None,
                 attention_kwargs: dict | None = None):
        super().__init__(vocab_size, d_model, tie_weights)
        check_int("n_layers", n_layers)
        check_int("num_heads", num_heads)
        check_int("window", window)
        if mixer not in MIXERS:
            raise ValueError(f"mixer={mixer!r} is not supported; allowed values: {', '.join(map(repr, MIXERS))}")
        ffn_hidden = default_ffn_hidden(d_model) if ffn_hidden is None else ffn_hidden
        check_int("ffn_hidden", ffn_hidden)
        miras_kwargs = _layer_kwargs("miras_kwargs", miras_kwargs, MirasLayer, {"spec", "chunk_size"})
        attention_kwargs = _layer_kwargs("attention_kwargs", attention_kwargs, AttentionLayer, {"window"})
        spec, named = resolve(spec)
        if named is not None and mixer in ("miras", "hybrid"):
            for key, value in named.layer_options().items():  # stored in .config, so a rebuilt model matches
                miras_kwargs.setdefault(key, value)

        self.n_layers, self.mixer, self.spec = n_layers, mixer, spec
        self.blocks = residual_blocks(d_model, [self._mixer(i, d_model, num_heads, spec, chunk_size, window, miras_kwargs,
                                                            attention_kwargs) for i in range(n_layers)], ffn_hidden)
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, num_heads=num_heads,
                           mixer=mixer, spec=spec_config(spec), chunk_size=chunk_size, window=window,
                           tie_weights=tie_weights, ffn_hidden=ffn_hidden, miras_kwargs=miras_kwargs,
                           attention_kwargs=attention_kwargs)

    def _mixer(self, i, d_model, num_heads, spec, chunk_size, window, miras_kwargs, attention_kwargs):
        if self.mixer == "miras" or (self.mixer == "hybrid" and i % 2 == 0):
            return MirasLayer(d_model, num_heads, spec, chunk_size=chunk_size, **miras_kwargs)
        if self.mixer == "attention":
            return AttentionLayer(d_model, num_heads, **attention_kwargs)
        return AttentionLayer(d_model, num_heads, window=window, **attention_kwargs)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        self.check_inputs(input_ids, labels)
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return lm_output(self.norm(h), self.head, labels)


def _layer_kwargs(name, kwargs, layer_class, set_by_model):
    """``kwargs`` as a dict of ``layer_class``'s arguments (None: empty); a ValueError naming ``name`` for anything
    else or for an argument the model sets itself (``d_model``, ``num_heads`` and ``set_by_model``)."""
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"{name}={kwargs!r} must be None or a dict of {layer_class.__name__} arguments")
    allowed = set(inspect.signature(layer_class).parameters) - {"d_model", "num_heads", *set_by_model}
    if unknown := set(kwargs or {}) - allowed:
        raise ValueError(f"{name}: unknown {layer_class.__name__} argument(s) {sorted(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    return dict(kwargs or {})
