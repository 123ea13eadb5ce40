"""ARMT's associative block with any Miras memory (`MemorySpec`) in place of the DPFP delta rule.

Per layer and memory head (D = d_model / H, keys and values of width D):

    write, from the memory-token outputs m_1..m_M of a segment:
        k_i = normalize(W_K m_i),  v_i = W_V m_i,  η_i = η_max σ(w_η·m_i + b_η),
        α_i = σ(w_α·m_i + b_α) (retention ≠ none),  θ_i = σ(w_θ·m_i + b_θ) (momentum)
        state ← memory_scan(k, k, v, η, α, θ, spec, initial_state=state)      (the spec's inner loop over
                                                                             the M tokens, in order)
    read, for every token x of the next segment:
        o(x) = W_O · M(normalize(W_Q x); W)      (`read_memory` with W = N(A), the memory after the writes)

W_O is zero-initialised, so the block adds nothing at initialisation whatever the spec (an MLP memory's
read is not 0 at W_V = 0, its residual path returns the query). Unit keys keep the delta rule stable
for η < 2; the rates come from `miras_lite/gates.py` as in `MirasLayer`: η_max is
`default_eta_max(spec, None)` and η starts at `initial_eta_fraction(spec)` of it. α starts at 0.999 per written token: ARMT writes only M tokens per segment, so
this is a time constant of ~1000/M segments. A linear memory starts at zero; an MLP memory starts from
a learned initial state (initialised with `mlp_initial_state`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import gates
from ..memory import mlp_initial_state
from ..retention import readout
from ..scan import MemoryState, memory_scan, read_memory
from ..spec import MemorySpec


class SpecMemory(nn.Module):
    """The associative block of one ARMT layer, with a `MemorySpec` memory (module docstring).

    ``read(x [B, N, d_model], state) -> [B, N, d_model]``; ``write(m [B, M, d_model], state) -> state``;
    ``initial_state(B)``. States are `MemoryState` objects (the accumulator A, momentum S and W = N(A)).
    """

    def __init__(self, d_model: int, num_heads: int, spec: MemorySpec, alpha_init: float = 0.999,
                 theta_init: float = 0.6):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"mem_heads={num_heads} must divide d_model={d_model}")
        self.d_model, self.num_heads, self.spec = d_model, num_heads, spec
        self.head_dim = D = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.out_proj.weight)
        self.eta_max = gates.default_eta_max(spec, None)
        self.eta_proj = gates.gate(d_model, num_heads, gates.logit(gates.initial_eta_fraction(spec)))
        self.alpha_proj = gates.gate(d_model, num_heads, gates.logit(alpha_init)) if spec.retention != "none" else None
        self.theta_proj = gates.gate(d_model, num_heads, gates.logit(theta_init)) if spec.optimizer == "momentum" else None
        self.init_in = self.init_out = None
        if spec.memory == "mlp":
            w_in, w_out = mlp_initial_state(num_heads, D, spec.expansion)
            self.init_in, self.init_out = nn.Parameter(w_in.clone()), nn.Parameter(w_out.clone())

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, heads={self.num_heads}, spec={self.spec}"

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> MemoryState:
        H, D = self.num_heads, self.head_dim
        if self.spec.memory == "linear":
            A = (torch.zeros(batch_size, H, D, D, device=device, dtype=dtype),)
        else:
            A = tuple(w.to(device=device, dtype=dtype).expand(batch_size, *w.shape)
                      for w in (self.init_in, self.init_out))
        S = tuple(torch.zeros_like(a) for a in A)
        W = tuple(readout(self.spec, a) for a in A)
        if self.spec.memory == "linear":
            return MemoryState(A[0], S[0], W[0])
        return MemoryState(A, S, W)

    def _heads(self, x):  # [B, N, d_model] -> [B, N, H, D]
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim)

    def read(self, x: torch.Tensor, state: MemoryState) -> torch.Tensor:
        """``W_O · M(normalize(W_Q x); W)`` for every token, ``[B, N, d_model]``."""
        q = F.normalize(self._heads(self.q_proj(x)), dim=-1, eps=1e-6)
        o = read_memory(self.spec, state.W, q)
        return self.out_proj(o.reshape(x.shape))

    def write(self, m: torch.Tensor, state: MemoryState) -> MemoryState:
        """Run the spec's inner optimiser over the memory tokens ``m [B, M, d_model]``, from ``state``."""
        k = F.normalize(self._heads(self.k_proj(m)), dim=-1, eps=1e-6)
        v = self._heads(self.v_proj(m))
        eta = gates.eta_gate(self.eta_proj(m), self.eta_max)
        alpha = 1.0 if self.alpha_proj is None else gates.alpha_gate(self.alpha_proj(m))
        theta = None if self.theta_proj is None else gates.theta_gate(self.theta_proj(m))
        _, new_state = memory_scan(k, k, v, eta=eta, alpha=alpha, theta=theta, spec=self.spec,
                                   initial_state=state, chunk_size=None)
        return new_state
