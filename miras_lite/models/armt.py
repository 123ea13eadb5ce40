"""`ARMT`: the Associative Recurrent Memory Transformer (Rodkin et al. 2024, arXiv 2407.04841).

A long input is cut into segments of ``segment_size`` tokens (the last may be shorter). Each segment
is extended with M memory tokens — the same M learned embeddings every time, appended at the END —
and run through the layers; the only thing carried from one segment to the next is, per layer, an
associative memory (`DPFPMemory`, the paper's, or `SpecMemory` for any `MemorySpec`). Per segment s
and layer l, with hidden states H of the S + M tokens:

    H ← H + read_l(H; state_l)                     associative READ before the block, added to every token
    H ← Block_l(H)                                 RMSNorm → causal attention (RoPE, positions 0..S+M−1;
                                                   memory tokens come last, so they see the whole segment)
                                                   → residual → RMSNorm → SwiGLU → residual
    state_l ← write_l(H[memory tokens]; state_l)   associative WRITE from the memory-token outputs

Logits come from the segment tokens only: ``RMSNorm(H[:S]) Eᵀ``. Attention never crosses a segment
boundary, so a segment costs O((S + M)²) and a length-L input O(L·(S + M)) time, with O(1) state.

Training (`forward`) backpropagates through all segments, or, with ``bptt_segments=K``, through the last K
only: the segments before them run without a graph and hand their memory on as a constant (truncated
backpropagation through time), so a long context costs about one forward pass plus K segments of backward
pass, and the model still trains on the memory that the long context leaves. With ``write_l1=λ`` the
training loss of an input longer than K segments adds λ·mean β, the mean write gate of the memory tokens over
the segments that backpropagate (DPFP memory; its gradient reaches the gate's weights W_β only, not the
blocks that feed it): an L1 penalty that leaves writes only where the task needs them, so that thousands of
segments of filler do not fill the memory. Short inputs are left alone: there a curriculum teaches the memory
to hold facts, and a penalty from the start shuts the gate before the memory is of any use. Evaluation over
contexts of any length (`stream`) consumes a segment iterator lazily under ``torch.no_grad()``, keeping only the per-layer
memories and one segment of tokens.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from ..layers import AttentionLayer
from ..checks import check_int
from ..presets import as_spec
from .blocks import ShortConvMixer, TokenLM, default_ffn_hidden, lm_output, residual_blocks, spec_config
from .dpfp import DPFPMemory
from .spec_memory import SpecMemory


class ARMT(TokenLM):
    """Segment-recurrent transformer with a per-layer associative memory (module docstring).

    Args:
        vocab_size, d_model, n_layers, num_heads: as `MirasLM` (``num_heads`` are attention heads).
        segment_size:   S, tokens per segment.
        num_mem_tokens: M, memory tokens appended to every segment.
        memory:         ``"dpfp"`` (the paper's delta rule over DPFP-ν features with normaliser z and γ
                        correction, `DPFPMemory`) or a `MemorySpec` / preset name / dict of MemorySpec
                        fields (`SpecMemory`: the write is `memory_scan` over the memory tokens, the
                        read `read_memory`).
        max_segments:   `forward` refuses inputs of more segments (a guard against backpropagating
                        through a huge context by accident; `stream` has no limit). None: no limit.
        mem_heads:      heads of the associative memory (default 1 for "dpfp", as in the paper's code;
                        ``num_heads`` for a spec).
        d_mem:          "dpfp" only: width of the query/key projections before DPFP (default d_model).
        dpfp_nu:        "dpfp" only: the DPFP order ν (3).
        dpfp_normalize: "dpfp" only: L2-normalise the DPFP features (True, the reference code's `experimental`
                        branch) or not (False, its default branch); see `DPFPMemory`.
        dpfp_gamma:     "dpfp" only: the γ correction of the normaliser z (True, the paper's) or γ = 1 on every
                        write (False, its ablation); see `DPFPMemory`.
        ffn_hidden, tie_weights: as `MirasLM`.
        bptt_segments:  K: `forward` backpropagates through the last K segments of its input only (module
                        docstring); the values are the same. None (default): through every segment.
        write_l1:       "dpfp" with bptt_segments only: λ ≥ 0, the weight of the write-gate penalty λ·mean β
                        added to the training loss of inputs longer than bptt_segments segments (module
                        docstring); 0 (default): none.
        conv_size:      K > 0 puts a depthwise causal convolution over K tokens in front of every attention
                        (`ShortConvMixer`; not in the paper, whose blocks are GPT-2's): a small model trained
                        from scratch then binds neighbouring tokens (a bAbI fact's person and place) at once
                        instead of after a long plateau. 0 (default): the paper's blocks.

    ``forward(input_ids [B, T], labels=None, memory_state=None)`` -> dict with ``loss``, ``logits``
    (``[B, T, V]``, or ``[N, V]`` at the labelled positions as in `MirasLM`), ``memory_state`` (a list
    with one state per layer, to continue with the next call) and, with labels, ``label_mask`` and
    ``predictions``. ``stream(segments, question_ids)`` -> answer logits ``[B, V]``.
    ``.config`` is a JSON-serialisable dict of the constructor arguments (a spec as ``dataclasses.asdict``).
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, num_heads: int = 2,
                 segment_size: int = 64, num_mem_tokens: int = 8, memory="dpfp", max_segments: int | None = None,
                 mem_heads: int | None = None, d_mem: int | None = None, dpfp_nu: int = 3,
                 ffn_hidden: int | None = None, tie_weights: bool = True, conv_size: int = 0,
                 dpfp_normalize: bool = True, dpfp_gamma: bool = True, bptt_segments: int | None = None,
                 write_l1: float = 0.0):
        super().__init__(vocab_size, d_model, tie_weights)
        for name, value in (("n_layers", n_layers), ("num_heads", num_heads), ("segment_size", segment_size),
                            ("num_mem_tokens", num_mem_tokens), ("dpfp_nu", dpfp_nu)):
            check_int(name, value)
        for name, value in (("max_segments", max_segments), ("bptt_segments", bptt_segments)):
            if value is not None:
                check_int(name, value)
        check_int("conv_size", conv_size, minimum=0)
        for name, value in (("dpfp_normalize", dpfp_normalize), ("dpfp_gamma", dpfp_gamma)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False")
        if isinstance(write_l1, bool) or not isinstance(write_l1, (int, float)) or not write_l1 >= 0:
            raise ValueError(f"write_l1={write_l1!r} must be a number >= 0")
        if write_l1 and (memory != "dpfp" or bptt_segments is None):
            raise ValueError(f"write_l1={write_l1!r} penalises the DPFP memory's write gate on inputs longer than "
                             "bptt_segments segments; it needs memory='dpfp' and bptt_segments")
        ffn_hidden = default_ffn_hidden(d_model) if ffn_hidden is None else ffn_hidden
        check_int("ffn_hidden", ffn_hidden)
        if memory == "dpfp":
            mem_heads = 1 if mem_heads is None else mem_heads
            d_mem = d_model if d_mem is None else d_mem
            check_int("mem_heads", mem_heads)
            check_int("d_mem", d_mem)
            make_memory = lambda: DPFPMemory(d_model, d_mem, mem_heads, dpfp_nu, normalize=dpfp_normalize,  # noqa: E731
                                             gamma=dpfp_gamma)
            memory_config = "dpfp"
        else:
            if isinstance(memory, str) and memory != "dpfp":
                try:
                    memory = as_spec(memory, "memory")
                except ValueError as err:
                    raise ValueError(f"memory={memory!r} is not supported; allowed values: 'dpfp', a MemorySpec, "
                                     f"a dict of MemorySpec fields or a preset name ({err})") from None
            spec = as_spec(memory, "memory")
            mem_heads = num_heads if mem_heads is None else mem_heads
            check_int("mem_heads", mem_heads)
            make_memory = lambda: SpecMemory(d_model, mem_heads, spec)  # noqa: E731
            memory_config = spec_config(spec)

        self.n_layers = n_layers
        self.segment_size, self.num_mem_tokens, self.max_segments = segment_size, num_mem_tokens, max_segments
        self.bptt_segments, self.write_l1 = bptt_segments, float(write_l1)
        self.mem_tokens = nn.Parameter(torch.randn(num_mem_tokens, d_model) * 0.02)
        mixers = [AttentionLayer(d_model, num_heads) for _ in range(n_layers)]
        if conv_size:
            mixers = [ShortConvMixer(attention, d_model, conv_size) for attention in mixers]
        self.blocks = residual_blocks(d_model, mixers, ffn_hidden)
        self.memories = nn.ModuleList(make_memory() for _ in range(n_layers))
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, num_heads=num_heads,
                           segment_size=segment_size, num_mem_tokens=num_mem_tokens, memory=memory_config,
                           max_segments=max_segments, mem_heads=mem_heads, d_mem=d_mem, dpfp_nu=dpfp_nu,
                           ffn_hidden=ffn_hidden, tie_weights=tie_weights, conv_size=conv_size,
                           dpfp_normalize=dpfp_normalize, dpfp_gamma=dpfp_gamma, bptt_segments=bptt_segments,
                           write_l1=float(write_l1))

    # ---------------------------------------------------------------------------------- pieces

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> list:
        """The empty memory of every layer (what ``memory_state=None`` means)."""
        return [mem.initial_state(batch_size, device=device, dtype=dtype) for mem in self.memories]

    def segment(self, ids: torch.Tensor, state: list, gates: list | None = None):
        """Run one segment ``ids [B, S']`` (S' ≤ segment_size): returns the hidden states of its S' tokens
        (before the final norm) and the memories after writing it. ``gates``: a list that receives each
        layer's write gates β ``[B, H, M, 1]`` (DPFP memory)."""
        B, S = ids.shape
        h = torch.cat([self.embed(ids), self.mem_tokens.to(self.embed.weight.dtype).expand(B, -1, -1)], dim=1)
        new_state = []
        for block, mem, layer_state in zip(self.blocks, self.memories, state):
            h = block(h + mem.read(h, layer_state))
            new_state.append(mem.write(h[:, S:], layer_state))
            if gates is not None:  # the penalty trains the gate W_β only, not the blocks that feed it
                gates.append(mem.write_gate(h[:, S:].detach()))
        return h[:, :S], new_state

    def _check_state(self, memory_state, batch_size, like):
        if memory_state is None:
            return self.initial_state(batch_size, device=like.device, dtype=self.embed.weight.dtype)
        if not isinstance(memory_state, (list, tuple)) or len(memory_state) != self.n_layers:
            raise ValueError(f"memory_state must be None or the list of {self.n_layers} per-layer states "
                             "returned as out['memory_state']")
        return list(memory_state)

    # ---------------------------------------------------------------------------------- training

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, memory_state=None) -> dict:
        """All segments of ``input_ids [B, T]`` in order, backpropagating through the memory (module docstring).

        ``labels [B, T]`` follow `MirasLM`: aligned with the inputs (no shift), -100 = no label; the head
        runs only on labelled positions. ``memory_state`` continues from a previous call: processing
        ``x[:, :k·S]`` and then ``x[:, k·S:]`` with the returned state equals processing ``x`` at once.
        With ``bptt_segments=K`` the segments before the last K run under ``torch.no_grad()`` (labels there
        still train the output norm and head, which see their hidden states as constants).
        """
        self.check_inputs(input_ids, labels)
        B, T = input_ids.shape
        n_segments = -(-T // self.segment_size)
        if self.max_segments is not None and n_segments > self.max_segments:
            raise ValueError(f"input_ids has {T} tokens = {n_segments} segments of {self.segment_size}; "
                             f"max_segments={self.max_segments} (use ARMT.stream for long contexts, or raise it)")
        state = self._check_state(memory_state, B, input_ids)
        segments = input_ids.split(self.segment_size, dim=1)
        constant = 0 if self.bptt_segments is None else max(0, n_segments - self.bptt_segments)
        penalised = self.write_l1 > 0 and constant > 0 and torch.is_grad_enabled() and labels is not None
        hidden, gates = [], [] if penalised else None
        for index, ids in enumerate(segments):
            backpropagated = torch.is_grad_enabled() and index >= constant
            with torch.set_grad_enabled(backpropagated):
                h, state = self.segment(ids, state, gates if backpropagated else None)
            hidden.append(h)
        out = lm_output(self.norm(torch.cat(hidden, dim=1)), self.head, labels)
        if gates:
            out["loss"] = out["loss"] + self.write_l1 * torch.cat([g.flatten() for g in gates]).mean()
        out["memory_state"] = state
        return out

    # ---------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def stream(self, segments, question_ids, memory_state=None, return_state: bool = False):
        """Answer logits after reading an arbitrarily long context, in O(1) memory.

        ``segments``: an iterable of token chunks, each ``[B, n]`` or ``[n]`` (one sample; any integer
        tensor, list or array; any n ≥ 0), consumed lazily one at a time. ``question_ids``: ``[B, Q]`` or
        ``[Q]``, Q ≥ 1. The model reads the token stream ``context ++ question`` in segments of exactly
        ``segment_size`` tokens — the same segmentation as ``forward(cat(context, question))`` — and
        returns the logits at the last question token, ``[B, V]`` (with ``return_state``: ``(logits,
        memory_state)``). Segments before the last compute no logits. Only the per-layer memories and
        at most one segment plus one incoming chunk are held; nothing is kept for backward.
        """
        question = self._as_tokens("question_ids", question_ids)
        if question.shape[1] == 0:
            raise ValueError("question_ids must hold at least one token")
        B = question.shape[0]
        state = self._check_state(memory_state, B, question)
        S = self.segment_size
        buffer, length = [], 0
        chunks = chain((self._as_tokens("segments", c, B) for c in segments), [question])
        for chunk in chunks:
            buffer.append(chunk)
            length += chunk.shape[1]
            # a full segment followed by at least one more token (the question is still to come, or
            # already buffered beyond it) is never the last one: write it and move on
            while length > S or (length == S and chunk is not question):
                ids = torch.cat(buffer, dim=1) if len(buffer) > 1 else buffer[0]
                _, state = self.segment(ids[:, :S], state)
                rest = ids[:, S:]
                buffer, length = ([rest], rest.shape[1]) if rest.shape[1] else ([], 0)
        ids = torch.cat(buffer, dim=1)
        h, state = self.segment(ids, state)
        logits = self.head(self.norm(h[:, -1]))
        return (logits, state) if return_state else logits

    def _as_tokens(self, name, chunk, batch_size=None):
        ids = torch.as_tensor(chunk, device=self.embed.weight.device)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or (ids.numel() and ids.dtype.is_floating_point):
            raise ValueError(f"{name}: expected integer token ids of shape [n] or [B, n]; got {tuple(ids.shape)} "
                             f"{ids.dtype}")
        ids = ids.long()
        if batch_size is not None and ids.shape[0] != batch_size:
            if ids.shape[1] == 0:
                return ids.new_zeros(batch_size, 0)
            raise ValueError(f"{name}: a chunk of batch size {ids.shape[0]} does not match question_ids' {batch_size}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{name} has values outside [0, {self.vocab_size})")
        return ids
