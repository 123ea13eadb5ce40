"""Multi-query associative recall (MQAR), in the Zoology format (Arora, Eyuboglu et al., arXiv 2312.04927).

One example of length L with D key-value pairs over a vocabulary of V tokens:

    position   0   1   2   3  ...  2D-2 2D-1 | 2D ...                                 L-1
    inputs     k1  v1  k2  v2 ...  kD   vD   | x  x  k3  x  x  x  k1  x ... k2  x  x
    labels     -100 everywhere               | .  .  v3  .  .  .  v1  . ... v2  .  .

* keys are distinct, drawn from [1, V/2); values are drawn (distinct) from [V/2, V); token 0 is padding;
* after the context every key is queried exactly once. The query slots are the even offsets 2g,
  g ∈ {0, ..., S−1}, S = ⌊(L − 2D)/2⌋, after the context; the D gaps g are drawn *without replacement*
  with p(g) ∝ a·(g+1)^(a−1) (a = `power_a`; a = 1 is uniform, a → 0 puts most queries right after the
  context). Key i of the context is queried at the i-th gap drawn, as in Zoology;
* labels[n, t] is the value the model must output AT position t, where inputs[n, t] is a query key
  (the loss is taken there), −100 elsewhere;
* every other position holds a uniformly random token of [0, V) if `random_non_queries`, else 0.

Keys written several times (`writes` = W > 1; W = 1 is the format above, sample for sample): the context
lists the D pairs W times, in rounds of 2D tokens, the first round in key order and every later one in a
fresh random order, so it takes 2DW tokens (L >= 2DW + 2D). What the writes carry (`write_mode`):

* "update": every write of a key carries a new value (the DW values are distinct) and the answer is the
  value written last: rewriting the same keys, ARMT's motivation for its γ correction (arXiv 2407.04841);
* "outlier" (W >= 3): every write carries the key's value except one, at a random round, that carries another
  value drawn uniformly (an outlier); the answer is the key's value, the majority: what a robust attentional
  bias should keep (Miras, arXiv 2504.13173).

Sampling without replacement with weights p is the Gumbel-top-k trick: the D largest of
log p(g) + Gumbel noise, in decreasing order, are distributed exactly as D successive draws without
replacement (Plackett-Luce), and it is one vectorised `topk`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl
import torch

from ..labels import IGNORE_INDEX

from ..checks import check_int
from ._checks import check_seed

IGNORE = IGNORE_INDEX  # the label of a position that is not scored

__all__ = ["IGNORE", "MQAR", "mqar", "gap_distribution", "accuracy_by_pairs", "accuracy_by_distance",
           "predictions_at_labels"]


# ----------------------------------------------------------------------------------------- checks


WRITE_MODES = ("update", "outlier")


def check_shape(vocab_size, seq_len, num_kv_pairs, writes=1, write_mode="update"):
    """ValueError naming the argument unless an MQAR example of this shape exists: D pairs written W times take
    2DW tokens and their D queries need room after them, so L >= 2DW + 2D; keys come from [1, V/2), so D < V/2;
    "update" writes draw DW distinct values from [V/2, V)."""
    check_int("vocab_size", vocab_size, 4)
    check_int("num_kv_pairs", num_kv_pairs, 1)
    check_int("writes", writes, 1)
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode={write_mode!r} is not known; allowed values: {', '.join(WRITE_MODES)}")
    if write_mode == "outlier" and writes == 2:
        raise ValueError("writes=2 with write_mode='outlier' leaves no majority (one write of the key's value, one "
                         "outlier); use writes=1 (no outlier) or writes >= 3")
    need = 2 * num_kv_pairs * writes + 2 * num_kv_pairs
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < need:
        written = f"{num_kv_pairs} pairs" + (f" written {writes} times" if writes > 1 else "")
        raise ValueError(f"seq_len={seq_len!r} must be an integer >= {need} = 2 × num_kv_pairs × writes + 2 × "
                         f"num_kv_pairs (the {written} take {need - 2 * num_kv_pairs} tokens and their queries "
                         "need room after them)" if writes > 1 else
                         f"seq_len={seq_len!r} must be an integer >= 4 × num_kv_pairs = {need} (the "
                         f"{num_kv_pairs} pairs take {2 * num_kv_pairs} tokens and their queries need room after them)")
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} needs that many distinct keys in [1, vocab_size/2) = "
                         f"[1, {vocab_size // 2}); use num_kv_pairs <= {vocab_size // 2 - 1} or a larger vocab_size")
    if write_mode == "update" and num_kv_pairs * writes > vocab_size - vocab_size // 2:
        raise ValueError(f"writes={writes}: {num_kv_pairs} pairs written {writes} times need "
                         f"{num_kv_pairs * writes} distinct values in [vocab_size/2, vocab_size), which holds "
                         f"{vocab_size - vocab_size // 2}; use fewer writes or pairs, or a larger vocab_size")


# ---------------------------------------------------------------------------------------- sampling


def gap_distribution(num_slots: int, power_a: float) -> torch.Tensor:
    """p(g) ∝ a·(g+1)^(a−1) for g = 0 .. num_slots−1, as float64 (sums to 1)."""
    check_int("num_slots", num_slots, 1)
    if not (isinstance(power_a, (int, float)) and not isinstance(power_a, bool) and math.isfinite(power_a)
            and power_a > 0):
        raise ValueError(f"power_a={power_a!r} must be a finite number > 0 (1 is uniform, 0.01 is Zoology's default)")
    i = torch.arange(1, num_slots + 1, dtype=torch.float64)
    p = power_a * i ** (power_a - 1)
    return p / p.sum()


def _gumbel_topk(logp, n, k, gen):
    """k indices per row drawn without replacement from the distribution exp(logp), in draw order."""
    u = torch.rand(n, logp.numel(), generator=gen, dtype=torch.float64).clamp_min_(1e-300)
    return (logp - torch.log(-torch.log(u))).topk(k, dim=1).indices


def _distinct(n, low, high, k, gen):
    """[n, k] integers, distinct within each row, uniform over [low, high) (random order)."""
    span = high - low
    if 4 * k > span:  # dense: a random permutation per row, the first k entries
        return torch.rand(n, span, generator=gen).argsort(dim=1)[:, :k] + low
    out = torch.randint(low, high, (n, k), generator=gen)
    while True:  # sparse: redraw the rows that have a repeat (a few % of them)
        s = out.sort(dim=1).values
        bad = (s[:, 1:] == s[:, :-1]).any(dim=1).nonzero().flatten()
        if bad.numel() == 0:
            return out
        out[bad] = torch.randint(low, high, (bad.numel(), k), generator=gen)


def _written_values(n, d, writes, write_mode, vocab_size, gen):
    """[n, writes, d]: the value each round writes for each key, and [n, d]: the answer of each key."""
    half = vocab_size // 2
    if write_mode == "update":
        written = _distinct(n, half, vocab_size, d * writes, gen).view(n, writes, d)
        return written, written[:, -1]
    values = _distinct(n, half, vocab_size, d, gen)
    outlier_round = torch.randint(0, writes, (n, 1, d), generator=gen)
    shift = torch.randint(1, vocab_size - half, (n, d), generator=gen)  # uniform over the other values
    other = half + (values - half + shift) % (vocab_size - half)
    rounds = torch.arange(writes).view(1, writes, 1)
    return torch.where(rounds == outlier_round, other[:, None], values[:, None]), values


def _written_context(keys, written, gen):
    """The context tokens [n, 2·d·writes]: round r lists the pairs (key, value it writes in round r), round 0
    in key order, later rounds in a random order."""
    n, writes, d = written.shape
    order = torch.cat([torch.arange(d).expand(n, 1, d),
                       torch.rand(n, writes - 1, d, generator=gen).argsort(dim=-1)], dim=1)
    context = torch.stack([keys[:, None].expand(n, writes, d).gather(2, order), written.gather(2, order)], dim=-1)
    return context.reshape(n, 2 * d * writes)


def mqar(vocab_size, seq_len, num_kv_pairs, num_examples, power_a=0.01, random_non_queries=True, seed=0, writes=1,
         write_mode="update"):
    """MQAR examples in the Zoology format (see the module docstring), each key written `writes` times
    (`write_mode` "update" or "outlier").

    Returns (inputs, labels), LongTensors [num_examples, seq_len]; labels are −100 except at the D query
    positions, where they hold the answer of the queried key. Deterministic in `seed`.
    """
    check_shape(vocab_size, seq_len, num_kv_pairs, writes, write_mode)
    check_int("num_examples", num_examples, 0)
    check_seed(seed, limit=2**63)  # MQAR derives its seeds from its own (< 2³¹)
    if not isinstance(random_non_queries, bool):
        raise ValueError(f"random_non_queries={random_non_queries!r} must be True or False")
    gap_distribution(1, power_a)  # checks power_a
    N, L, D, V = num_examples, seq_len, num_kv_pairs, vocab_size
    gen = torch.Generator().manual_seed(int(seed))
    keys = _distinct(N, 1, V // 2, D, gen)
    if writes == 1:
        values = _distinct(N, V // 2, V, D, gen)
    else:
        written, values = _written_values(N, D, writes, write_mode, V, gen)
    ctx = 2 * D * writes
    slots = (L - ctx) // 2
    gaps = _gumbel_topk(gap_distribution(slots, power_a).log(), N, D, gen) if N else keys.new_zeros(0, D)
    where = ctx + 2 * gaps  # [N, D] the query position of key i
    inputs = torch.zeros(N, L, dtype=torch.long)
    if writes == 1:
        inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values
    else:
        inputs[:, :ctx] = _written_context(keys, written, gen)
    inputs.scatter_(1, where, keys)
    labels = torch.full((N, L), IGNORE, dtype=torch.long).scatter_(1, where, values)
    if random_non_queries:
        free = inputs == 0
        noise = torch.randint(0, V, (N, L), generator=gen)
        inputs = torch.where(free, noise, inputs)
    return inputs, labels


# ------------------------------------------------------------------------------------ the task


def _compact(x, vocab_size):
    """Store token tensors in the smallest integer type that holds them (−100 included)."""
    return x.to(torch.int16 if vocab_size <= 32767 else torch.int32)


@dataclass
class _Split:
    inputs: torch.Tensor
    labels: torch.Tensor


class MQAR:
    """An MQAR training task: a fixed training set, cycled batch by batch, and a held-out test set.
    writes, write_mode: each key written that many times (see the module docstring).

    num_kv_pairs: an int, or a sequence of ints (a mixture: the training set holds train_examples
    examples split evenly over the pair counts, shuffled; the test set holds test_examples per count).
    train_examples=None draws fresh examples at every step (seeded by (seed, step)) instead of cycling.
    Tokens are stored as int16/int32 (100k examples of length 256: 100 MB) and widened per batch.
    """

    def __init__(self, vocab_size=8192, seq_len=256, num_kv_pairs=16, power_a=0.01, random_non_queries=True,
                 train_examples=100_000, test_examples=1_000, seed=0, writes=1, write_mode="update"):
        if isinstance(num_kv_pairs, (tuple, list)):
            self.pairs = tuple(num_kv_pairs)
        elif isinstance(num_kv_pairs, int) and not isinstance(num_kv_pairs, bool):
            self.pairs = (num_kv_pairs,)
        else:
            self.pairs = ()
        if not self.pairs:
            raise ValueError(f"num_kv_pairs={num_kv_pairs!r} must be an int >= 1 or a non-empty sequence of them")
        check_seed(seed)
        if not isinstance(random_non_queries, bool):
            raise ValueError(f"random_non_queries={random_non_queries!r} must be True or False")
        gap_distribution(1, power_a)  # checks power_a
        for d in self.pairs:
            check_shape(vocab_size, seq_len, d, writes, write_mode)
        if train_examples is not None:
            check_int("train_examples", train_examples, len(self.pairs))
        check_int("test_examples", test_examples, 1)
        self.vocab_size, self.seq_len, self.power_a = vocab_size, seq_len, power_a
        self.random_non_queries, self.seed = random_non_queries, seed
        self.writes, self.write_mode = writes, write_mode
        self.train_examples, self.test_examples = train_examples, test_examples
        self._train = None if train_examples is None else self._mixture(train_examples, split=0, shuffle=True)
        self._test = None

    def _generate(self, d, n, seed):
        return mqar(self.vocab_size, self.seq_len, d, n, self.power_a, self.random_non_queries, seed, self.writes,
                    self.write_mode)

    def _mixture(self, total, split, shuffle):
        parts = [self._generate(d, total // len(self.pairs) + (j < total % len(self.pairs)),
                                seed=(self.seed * 1_000_003 + split) * 1_009 + j)
                 for j, d in enumerate(self.pairs)]
        inputs, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if shuffle and len(self.pairs) > 1:
            order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(self.seed))
            inputs, labels = inputs[order], labels[order]
        return _Split(_compact(inputs, self.vocab_size), _compact(labels, self.vocab_size))

    def batch(self, batch_size, step):
        """(inputs, labels) LongTensors [batch_size, seq_len] for training step `step` (deterministic).

        Batch s holds training examples s·B, ..., s·B + B − 1 (mod train_examples): the set is cycled in
        a fixed order (it was shuffled once when built).
        """
        check_int("batch_size", batch_size, 1)
        check_int("step", step, 0)
        if self._train is None:
            d = self.pairs[step % len(self.pairs)]
            return self._generate(d, batch_size, seed=(self.seed * 1_000_003 + 2) * 1_000_000_007 + step)
        idx = (step * batch_size + torch.arange(batch_size)) % len(self._train.inputs)
        return self._train.inputs[idx].long(), self._train.labels[idx].long()

    def test_set(self):
        """(inputs, labels) of the held-out set: test_examples per pair count, drawn with other seeds."""
        if self._test is None:
            self._test = self._mixture(self.test_examples * len(self.pairs), split=1, shuffle=False)
        return self._test.inputs.long(), self._test.labels.long()

    @torch.no_grad()
    def evaluate(self, model, batch_size=128):
        """Held-out accuracy of `model` (called as model(inputs, labels=labels)["logits"]).

        Returns {"accuracy": overall, "accuracy@D": per pair count D} as floats.
        """
        inputs, labels = self.test_set()
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            preds = []
            for s in range(0, len(inputs), batch_size):
                x, y = inputs[s:s + batch_size], labels[s:s + batch_size]
                preds.append(predictions_at_labels(model(x, labels=y)["logits"], labels=y))
        finally:
            if was_training:
                model.train()
        frame = accuracy_by_pairs(torch.cat(preds), inputs, labels)
        out = {"accuracy": float(frame["correct"].sum() / frame["total"].sum())}
        out.update({f"accuracy@{d}": float(a) for d, a in zip(frame["num_kv_pairs"], frame["accuracy"])})
        return out


# --------------------------------------------------------------------------------------- metrics


def predictions_at_labels(logits_or_predictions, labels):
    """The predicted token at every labelled position (labels != −100, row-major order) -> LongTensor [M].

    Accepts full logits [N, T, V], logits at the labelled positions only [M, V], predictions [N, T],
    or predictions at the labelled positions [M].
    """
    x = logits_or_predictions
    mask = labels != IGNORE
    m = int(mask.sum())
    if x.is_floating_point():
        x = x.argmax(dim=-1)
    if x.shape == labels.shape:
        return x[mask]
    if x.dim() == 1 and x.numel() == m:
        return x
    raise ValueError(f"logits_or_predictions: shape {tuple(logits_or_predictions.shape)} must be logits "
                     f"[N, T, V] / [M, V] or predictions [N, T] / [M], with labels {tuple(labels.shape)} and "
                     f"M = {m} labelled positions")


def _query_table(logits_or_predictions, inputs, labels):
    """One row per query: example, position t, key distance t − (first position of the key), correct."""
    pred = predictions_at_labels(logits_or_predictions, labels)
    mask = labels != IGNORE
    rows, pos = mask.nonzero(as_tuple=True)
    keys = inputs[rows, pos]
    first = (inputs[rows] == keys[:, None]).int().argmax(dim=1)  # the key's (first) place in the context
    return rows, pos, pos - first, pred == labels[mask]


def accuracy_by_pairs(logits_or_predictions, inputs, labels):
    """Accuracy per number of key-value pairs (= queries per example) -> polars
    DataFrame(num_kv_pairs, accuracy, correct, total, examples)."""
    rows, _, _, correct = _query_table(logits_or_predictions, inputs, labels)
    pairs = (labels != IGNORE).sum(dim=1)[rows]
    frame = pl.DataFrame({"num_kv_pairs": pairs.numpy(), "correct": correct.numpy(), "row": rows.numpy()})
    return (frame.group_by("num_kv_pairs")
            .agg(pl.col("correct").mean().alias("accuracy"), pl.col("correct").sum().cast(pl.Int64),
                 pl.len().alias("total").cast(pl.Int64), pl.col("row").n_unique().alias("examples").cast(pl.Int64))
            .sort("num_kv_pairs"))


def accuracy_by_distance(logits_or_predictions, inputs, labels, bins=None):
    """Accuracy per query distance (query position − position of the key in the context) -> polars
    DataFrame(distance_lo, distance_hi, accuracy, correct, total), one row per non-empty bin
    [distance_lo, distance_hi). Default bins: powers of two, [1, 2), [2, 4), [4, 8), ...
    """
    _, _, dist, correct = _query_table(logits_or_predictions, inputs, labels)
    if bins is None:
        top = max(int(dist.max()) if dist.numel() else 1, 1)
        bins = [2 ** i for i in range(int(math.log2(top)) + 2)]
    edges = torch.tensor(sorted(bins), dtype=torch.long)
    if edges.numel() < 2:
        raise ValueError(f"bins={bins!r} must hold at least two increasing edges")
    which = torch.bucketize(dist, edges, right=True) - 1  # bin i covers [edges[i], edges[i+1])
    keep = (which >= 0) & (which < len(edges) - 1)
    frame = pl.DataFrame({"bin": which[keep].numpy(), "correct": correct[keep].numpy()})
    edges_frame = pl.DataFrame({"bin": range(len(edges) - 1), "distance_lo": edges[:-1].numpy(),
                                "distance_hi": edges[1:].numpy()}, schema_overrides={"bin": pl.Int64})
    return (frame.with_columns(pl.col("bin").cast(pl.Int64)).group_by("bin")
            .agg(pl.col("correct").mean().alias("accuracy"), pl.col("correct").sum().cast(pl.Int64),
                 pl.len().alias("total").cast(pl.Int64))
            .join(edges_frame, on="bin").sort("bin")
            .select("distance_lo", "distance_hi", "accuracy", "correct", "total"))
