"""Memory probes: what a test-time memory recalls, with no training at all.

A stream of N tokens writes (key, value) pairs into one memory head with `memory_scan`
(q = k, fixed rates η, α, θ). Afterwards every distinct key is read from the final memory,
ŷ_u = M(k_u; W_N) via `read_memory`, and compared with its target, the *latest clean* value
written for that key:

    error_u   = ‖ŷ_u − v_u‖ / ‖v_u‖           (relative L2 error)
    correct_u = error_u < threshold
    age_u     = N − 1 − (position of the latest clean write of key u)

Stream tokens are of three kinds: "new" (the first write of a key), "rewrite" (an earlier key with a
new clean value: the latest one counts) and "outlier" (an earlier key written with a corrupt value of
norm ≈ outlier_scale; the target stays the clean value, so a robust bias should resist it). Every
written value gets Gaussian noise of relative size `value_noise`; targets are noise-free.

Keys are unit vectors: orthonormal when the number of distinct keys is at most Dk (recall is then
perfect for the delta rule with η = 1), random directions otherwise. Clean values are
N(0, I/Dv) (norm ≈ 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from ..scan import memory_scan, read_memory
from ..presets import as_spec
from ..spec import MemorySpec
from ._checks import check_seed

__all__ = ["KVStream", "kv_stream", "probe_recall", "capacity_curve", "forgetting_curve"]

KINDS = ("new", "rewrite", "outlier")
KEY_MODES = ("auto", "orthogonal", "random")


@dataclass
class KVStream:
    """A probe stream. N tokens, U distinct keys.

    keys [1, N, 1, Dk] (unit norm) and values [1, N, 1, Dv]: what is written, token by token;
    pair [N] (int64): the key id u ∈ [0, U) written at each token; kind [N]: 0 new, 1 rewrite, 2 outlier;
    target_keys [1, U, 1, Dk] and targets [1, U, 1, Dv]: each key and its latest clean value;
    written_at [U]: the token of that latest clean write.
    """

    keys: torch.Tensor
    values: torch.Tensor
    pair: torch.Tensor
    kind: torch.Tensor
    target_keys: torch.Tensor
    targets: torch.Tensor
    written_at: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.keys.shape[1]

    @property
    def num_keys(self) -> int:
        return self.targets.shape[1]


def _check(name, value, lo, hi=None, integer=False):
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= lo
          and (hi is None or value <= hi))
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}={value!r} must be {kind} in [{lo}, {'∞' if hi is None else hi}]")


def _check_list(name, values, lo=1):
    """A non-empty list or tuple of integers >= lo."""
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in values):
        raise ValueError(f"{name}={values!r} must be a non-empty list of integers >= {lo}")


def _unit_keys(n, dim, mode, gen):
    if mode == "orthogonal" or (mode == "auto" and n <= dim):
        if n > dim:
            raise ValueError(f"keys='orthogonal' needs at most key_dim={dim} distinct keys, got {n}")
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        return q[:, :n].T.float()
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1)


def kv_stream(num_pairs, key_dim, value_dim, rewrite_fraction=0.0, value_noise=0.0, outlier_fraction=0.0,
              outlier_scale=10.0, seed=0, keys="auto"):
    """A probe stream of `num_pairs` tokens (see the module docstring) -> `KVStream`.

    round(rewrite_fraction·N) tokens are rewrites and round(outlier_fraction·N) are outliers, placed
    uniformly at random after the first token; the other U tokens each introduce a new key.
    keys: "auto" (orthonormal if U ≤ key_dim, else random unit vectors), "orthogonal" or "random".
    """
    _check("num_pairs", num_pairs, 1, integer=True)
    _check("key_dim", key_dim, 1, integer=True)
    _check("value_dim", value_dim, 1, integer=True)
    _check("rewrite_fraction", rewrite_fraction, 0.0, 1.0)
    _check("outlier_fraction", outlier_fraction, 0.0, 1.0)
    _check("value_noise", value_noise, 0.0)
    _check("outlier_scale", outlier_scale, 0.0)
    check_seed(seed)
    if not isinstance(keys, str) or keys not in KEY_MODES:
        raise ValueError(f"keys={keys!r} is not supported; allowed values: {', '.join(map(repr, KEY_MODES))}")
    n = num_pairs
    n_rewrite, n_outlier = round(rewrite_fraction * n), round(outlier_fraction * n)
    if n_rewrite + n_outlier > n - 1:
        raise ValueError(f"rewrite_fraction + outlier_fraction = {rewrite_fraction + outlier_fraction} leaves no room "
                         f"for new keys in {n} tokens; keep round(r·N) + round(o·N) <= N − 1")
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    kind = np.concatenate([[0], rng.permutation(np.repeat([0, 1, 2], [n - 1 - n_rewrite - n_outlier,
                                                                      n_rewrite, n_outlier]))])
    new_so_far = np.cumsum(kind == 0)  # keys introduced up to and including each token
    # a rewrite / outlier picks one of the keys introduced before it, uniformly
    pick = np.floor(rng.random(n) * new_so_far).astype(np.int64)
    pair = np.where(kind == 0, new_so_far - 1, pick)
    U = int(new_so_far[-1])
    key_table = _unit_keys(U, key_dim, keys, gen)
    clean = torch.randn(n, value_dim, generator=gen) / value_dim ** 0.5
    noise = torch.randn(n, value_dim, generator=gen) / value_dim ** 0.5
    corrupt = torch.nn.functional.normalize(torch.randn(n, value_dim, generator=gen), dim=-1) * outlier_scale
    kind_t, pair_t = torch.from_numpy(kind), torch.from_numpy(pair)
    written = torch.where((kind_t == 2)[:, None], corrupt, clean + value_noise * noise)
    # latest clean write per key: the last token of kind new/rewrite for that key
    positions = torch.arange(n)
    clean_pos = torch.where(kind_t < 2, positions, torch.full_like(positions, -1))
    written_at = torch.full((U,), -1, dtype=torch.long).scatter_reduce(0, pair_t, clean_pos, reduce="amax")
    return KVStream(keys=key_table[pair_t][None, :, None], values=written[None, :, None], pair=pair_t, kind=kind_t,
                    target_keys=key_table[None, :, None], targets=clean[written_at][None, :, None],
                    written_at=written_at)


def _spec(spec):
    if isinstance(spec, str):
        return as_spec(spec)
    if not isinstance(spec, MemorySpec):
        raise ValueError(f"spec={spec!r} must be a MemorySpec or a preset name")
    return spec


@torch.no_grad()
def probe_recall(spec, stream, eta=1.0, alpha=1.0, theta=None, chunk_size=None, threshold=0.5):
    """Write `stream` into a fresh memory with `memory_scan`, read every key back ->
    polars DataFrame(pair, age, error, cosine, correct), one row per distinct key.

    theta=None means θ = 0 for momentum specs (plain gradient steps). MLP memory needs key_dim == value_dim.
    """
    spec = _spec(spec)
    if not isinstance(stream, KVStream):
        raise ValueError(f"stream={type(stream).__name__} must be a KVStream (from kv_stream)")
    _check("threshold", threshold, 0.0)
    if spec.optimizer == "momentum" and theta is None:
        theta = 0.0
    _, state = memory_scan(stream.keys, stream.keys, stream.values, eta=eta, alpha=alpha, theta=theta,
                           spec=spec, chunk_size=chunk_size)
    pred = read_memory(spec, state.W, stream.target_keys)[0, :, 0]
    target = stream.targets[0, :, 0]
    error = (pred - target).norm(dim=-1) / target.norm(dim=-1).clamp_min(1e-12)
    cosine = torch.nn.functional.cosine_similarity(pred, target, dim=-1)
    age = stream.num_tokens - 1 - stream.written_at
    return pl.DataFrame({"pair": np.arange(stream.num_keys), "age": age.numpy(), "error": error.double().numpy(),
                         "cosine": cosine.double().numpy(), "correct": (error < threshold).numpy()})


def capacity_curve(spec, num_pairs_list, key_dim=32, value_dim=32, eta=1.0, alpha=1.0, theta=None, chunk_size=None,
                   threshold=0.5, seeds=(0,), **stream_kwargs):
    """Recall vs load: for each N in num_pairs_list and each seed, a stream of N tokens ->
    polars DataFrame(num_pairs, seed, accuracy, mean_error), accuracy = fraction of keys recalled."""
    _check_list("num_pairs_list", num_pairs_list)
    _check_list("seeds", seeds, 0)
    rows = []
    for n in num_pairs_list:
        for seed in seeds:
            stream = kv_stream(n, key_dim, value_dim, seed=seed, **stream_kwargs)
            frame = probe_recall(spec, stream, eta, alpha, theta, chunk_size, threshold)
            rows.append({"num_pairs": n, "seed": seed, "accuracy": frame["correct"].mean(),
                         "mean_error": frame["error"].mean()})
    return pl.DataFrame(rows)


def forgetting_curve(spec, num_pairs=256, key_dim=32, value_dim=32, eta=1.0, alpha=1.0, theta=None, chunk_size=None,
                     threshold=0.5, bins=8, seeds=(0,), **stream_kwargs):
    """Recall vs age in one long stream: keys grouped into `bins` equal-width age bins ->
    polars DataFrame(age_lo, age_hi, accuracy, mean_error, count), age in tokens since the last clean write."""
    _check("num_pairs", num_pairs, 1, integer=True)
    _check("bins", bins, 1, integer=True)
    _check_list("seeds", seeds, 0)
    frames = [probe_recall(spec, kv_stream(num_pairs, key_dim, value_dim, seed=s, **stream_kwargs), eta, alpha,
                           theta, chunk_size, threshold) for s in seeds]
    frame = pl.concat(frames)
    width = max(1, -(-num_pairs // bins))
    return (frame.with_columns((pl.col("age") // width).alias("bin"))
            .group_by("bin").agg(pl.col("correct").mean().alias("accuracy"), pl.col("error").mean().alias("mean_error"),
                                 pl.len().alias("count").cast(pl.Int64))
            .sort("bin")
            .select((pl.col("bin") * width).cast(pl.Int64).alias("age_lo"),
                    ((pl.col("bin") + 1) * width).cast(pl.Int64).alias("age_hi"), "accuracy", "mean_error", "count"))
