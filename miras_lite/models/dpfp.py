"""ARMT's default associative memory: a delta-rule fast-weight matrix over DPFP features.

DPFP-ν (Deterministic Parameter-Free Projection; Schlag, Irie & Schmidhuber 2021, "Linear Transformers
Are Secretly Fast Weight Programmers", arXiv 2102.11174, §5.4) maps x ∈ R^d to R^{2dν}:

    r = ReLU([x, −x]) ∈ R^{2d},        φ_{(j−1)·2d + i}(x) = r_i · r_{(i+j) mod 2d},   i = 1..2d, j = 1..ν

(a sparse, non-negative, degree-2 feature map; ARMT uses ν = 3). ARMT (Rodkin, Kuratov, Bulatov &
Burtsev 2024, "Associative Recurrent Memory Transformer", arXiv 2407.04841, §3) then L2-normalises the
features, φ̂(x) = φ(x) / ‖φ(x)‖, as its reference implementation does on the `experimental` branch
(github.com/RodkinIvan/associative-recurrent-memory-transformer, commit 067fb10 of 2024-10-24,
modeling_amt/language_modeling.py), which this module follows. The repository's default branch
(`framework_accel`, commit aa145de of 2024-08-02) uses φ itself: ``normalize=False``.

Per layer the memory is a matrix A ∈ R^{Dφ×Dv} and a normaliser z ∈ R^{Dφ} (per memory head; row
convention: reading is ``φ̂(q) @ A``). With memory-token outputs m_1..m_M of segment s (ARMT eqs. for
the associative block):

    k_i = φ̂(W_K m_i),   v_i = W_V m_i,   β_i = σ(W_β m_i)                       (W_V zero-initialised)
    v̄_i = k_iᵀ A_{s−1} / (z_{s−1}·k_i)                                         (what A already returns for k_i)
    γ_i = 1 − (z_{s−1}·k_i + ε) / ‖k_i‖²   (γ_i = 1 on the first write)          (the share of k_i that is new)
    A_s = A_{s−1} + Σ_i β_i k_i ⊗ (v_i − v̄_i)                                  (delta rule)
    z_s = z_{s−1} + Σ_i γ_i k_i                                                (γ correction of the normaliser)

and every token x of the next segment reads

    o(x) = φ̂(W_Q x)ᵀ A_s / (z_s · φ̂(W_Q x)).

As in the reference code: all M memory tokens of a segment are written at once against A_{s−1}
(the sums above), a small ε = 1e-5 is added to the denominators z·φ̂ (and so to γ's numerator, which is
that denominator), and γ is clipped to [0, 1] and treated as a constant in the backward pass
(stop-gradient). The zero state (A = 0, z = 0) is the paper's first segment: it reads 0 and its write has
v̄ = 0 and γ = 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def dpfp(x: torch.Tensor, nu: int = 3) -> torch.Tensor:
    """DPFP-ν features ``[..., d] -> [..., 2·d·ν]`` (Schlag et al. 2021): products ``r_i · r_{i+j}`` of
    ``r = ReLU([x, −x])``, j = 1..ν, indices modulo 2d. Not normalised."""
    r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([r * r.roll(-j, dims=-1) for j in range(1, nu + 1)], dim=-1)


class DPFPState(NamedTuple):
    """The memory of one layer: ``A [B, H, Dφ, Dv]`` and the normaliser ``z [B, H, Dφ]``."""

    A: torch.Tensor
    z: torch.Tensor


class DPFPMemory(nn.Module):
    """ARMT's associative block (module docstring) for one layer.

    Args:
        d_model:   model width; values and reads live in R^{d_model}, split into ``num_heads`` heads.
        d_mem:     width of the query/key projections before DPFP (Dφ = 2·ν·d_mem / num_heads per head).
        num_heads: memory heads H (ARMT's default is 1); must divide d_mem and d_model.
        nu:        DPFP order ν (3 in ARMT).
        eps:       added to the denominators z·φ̂.
        normalize: L2-normalise the DPFP features (the reference code's `experimental` branch; False: its
                   default branch).
        gamma:     the γ correction of the normaliser (the paper's); False: γ_i = 1 on every write, z_s = z_{s−1}
                   + Σ_i k_i, so a key written again counts twice in z and its reads shrink (the ablation of the
                   paper's motivation: rewriting the same keys).

    ``read(x [B, N, d_model], state) -> [B, N, d_model]``; ``write(m [B, M, d_model], state) -> state``;
    ``initial_state(B)`` is the zero memory.
    """

    def __init__(self, d_model: int, d_mem: int, num_heads: int = 1, nu: int = 3, eps: float = 1e-5,
                 normalize: bool = True, gamma: bool = True):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_mem", d_mem)):
            if value % num_heads:
                raise ValueError(f"mem_heads={num_heads} must divide {name}={value}")
        for name, value in (("normalize", normalize), ("gamma", gamma)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False")
        self.d_model, self.d_mem, self.num_heads, self.nu, self.eps = d_model, d_mem, num_heads, nu, eps
        self.normalize, self.gamma = normalize, gamma
        self.feature_dim = 2 * nu * d_mem // num_heads
        self.q_proj = nn.Linear(d_model, d_mem, bias=False)
        self.k_proj = nn.Linear(d_model, d_mem, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.v_proj.weight)  # the memory starts silent: every read is 0 at initialisation
        self.beta_proj = nn.Linear(d_model, num_heads)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_mem={self.d_mem}, heads={self.num_heads}, nu={self.nu}, "
                f"normalize={self.normalize}, gamma={self.gamma}")

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> DPFPState:
        H = self.num_heads
        A = torch.zeros(batch_size, H, self.feature_dim, self.d_model // H, device=device, dtype=dtype)
        return DPFPState(A, torch.zeros(batch_size, H, self.feature_dim, device=device, dtype=dtype))

    def _heads(self, x):  # [B, N, H·D] -> [B, H, N, D]
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, -1).transpose(1, 2)

    def features(self, x, proj):
        """φ̂(proj(x)) per head: ``[B, H, N, Dφ]``, unit L2 norm (0 where DPFP gives 0); φ itself if not
        `normalize`."""
        phi = dpfp(self._heads(proj(x)), self.nu)
        return F.normalize(phi, dim=-1) if self.normalize else phi

    def _lookup(self, phi, state):
        """``(φ̂ᵀA / (z·φ̂ + ε), z·φ̂)``, shapes ``[B, H, N, Dv]`` and ``[B, H, N, 1]``."""
        zphi = phi @ state.z.unsqueeze(-1)
        return (phi @ state.A) / (zphi + self.eps), zphi

    def read(self, x: torch.Tensor, state: DPFPState) -> torch.Tensor:
        """``o(x) = φ̂(W_Q x)ᵀ A / (z · φ̂(W_Q x))`` for every token, ``[B, N, d_model]``."""
        o, _ = self._lookup(self.features(x, self.q_proj), state)
        B, H, N, Dv = o.shape
        return o.transpose(1, 2).reshape(B, N, H * Dv)

    def write_gate(self, m: torch.Tensor) -> torch.Tensor:
        """β_i = σ(W_β m_i) of the memory-token outputs ``m [B, M, d_model]``: ``[B, H, M, 1]``."""
        return torch.sigmoid(self.beta_proj(m)).transpose(1, 2).unsqueeze(-1)

    def write(self, m: torch.Tensor, state: DPFPState) -> DPFPState:
        """One delta-rule write from the memory-token outputs ``m [B, M, d_model]`` (module docstring)."""
        k = self.features(m, self.k_proj)                              # [B, H, M, Dφ]
        v = self._heads(self.v_proj(m))                                # [B, H, M, Dv]
        beta = self.write_gate(m)                                      # [B, H, M, 1]
        v_bar, zk = self._lookup(k, state)
        A = state.A + (beta * k).transpose(-1, -2) @ (v - v_bar)
        if not self.gamma:
            return DPFPState(A, state.z + k.sum(-2))
        gamma = (1.0 - (zk + self.eps) / k.pow(2).sum(-1, keepdim=True).clamp_min(self.eps)).clamp(0.0, 1.0)
        first_write = (state.z == 0).all(-1)[..., None, None]  # [B, H, 1, 1]
        gamma = torch.where(first_write, 1.0, gamma).detach()
        z = state.z + (gamma * k).sum(-2)
        return DPFPState(A, z)
