"""Single-needle retrieval in the style of RULER's S-NIAH (Hsieh et al., arXiv 2404.06654).

One sample is a sequence of exactly `context_length` word-level tokens: a haystack with one needle hidden at
depth d (the fraction of the haystack before the needle), then the question and the answer:

    ... the sky is blue . the sun is yellow .  one of the special magic numbers for otter is : 4 7 1 9 .
    here we go . there and back again . ...  <q> what is the special magic number for otter ? <ans> 4 7 1
    labels: −100 everywhere except the answer tokens: 4 at <ans>, 7 at 4, 1 at 7, 9 at 1 (teacher forcing)

Haystacks (RULER's S-NIAH 1 and 2, and a word-valued variant):

    passkey   a number (`digits` digit tokens) in RULER's repeated noise, "the grass is green . the sky is
              blue . the sun is yellow . here we go . there and back again ." over and over
    number    a number in essay-like filler (default: the shipped pseudo-English generator, data/filler.py;
              or any text file, as for BABILong)
    word      a word (one token of 32, none of them a filler word) in essay-like filler

The key is one of 24 animal names, none of them a filler word. The haystack takes what is left of
`context_length` after the needle, the question and the answer; the needle goes after filler token
round(d · haystack length), ending the filler sentence it falls in there (as BABILong's facts do,
`babilong._walk`), so length and depth are exact. Training samples draw d uniformly in [0, 1]; the test set
and `niah_accuracy` use a grid of depths and give every depth and length the same needles and filler
streams. Exact match over all answer tokens under teacher forcing equals exact match of greedy decoding.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from ..checks import check_int
from ._checks import check_number, check_seed
from .babilong import WordTokenizer, _filler_module, _question_ids, _resolve_filler, _walk
from .mqar import IGNORE, predictions_at_labels

__all__ = ["HAYSTACKS", "DEPTHS", "KEYS", "VALUE_WORDS", "RepeatedNoise", "NeedleSample", "NeedleInHaystack",
           "niah_accuracy"]

HAYSTACKS = ("passkey", "number", "word")
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_DIGITS = 12
KEYS = ("otter", "falcon", "badger", "heron", "lynx", "walrus", "beetle", "moth", "salmon", "raven", "tiger",
        "zebra", "panda", "cobra", "koala", "llama", "bison", "gecko", "hyena", "jackal", "lemur", "marten", "newt",
        "owl")
VALUE_WORDS = ("amber", "basil", "cedar", "cinnamon", "clover", "cobalt", "copper", "cotton", "crystal", "ginger",
               "granite", "indigo", "ivory", "jade", "jasmine", "lavender", "lemon", "maple", "marble", "mint",
               "nutmeg", "olive", "onyx", "opal", "pearl", "pepper", "plum", "quartz", "ruby", "saffron", "sapphire",
               "topaz")
NEEDLE = "one of the special magic {kind}s for {key} is : {value} ."
QUESTION = "what is the special magic {kind} for {key} ?"
TEMPLATE_WORDS = WordTokenizer.split(" ".join(text.format(kind=kind, key="", value="") for text in (NEEDLE, QUESTION)
                                             for kind in ("number", "word")))


class RepeatedNoise:
    """RULER's passkey haystack as a filler: the same five sentences over and over (the seed changes nothing)."""

    TEXT = "the grass is green . the sky is blue . the sun is yellow . here we go . there and back again ."
    words = tuple(dict.fromkeys(WordTokenizer.split(TEXT)))

    def blocks(self, seed, tokenizer, repeats=256):
        ids = tokenizer.encode(self.TEXT)
        ends = np.flatnonzero(ids == tokenizer.period_id) + 1
        block_ends = (ends[None, :] + len(ids) * np.arange(repeats)[:, None]).ravel()
        block = np.tile(ids, repeats)
        while True:
            yield block, block_ends


@dataclass
class NeedleSample:
    """One sample. inputs / labels: LongTensors [context_length] (labels −100 except the answer tokens);
    needle_position: the index of the needle's first token; depth: the depth asked for; haystack_length: the
    number of filler tokens (the needle sits after round(depth · haystack_length) of them)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    needle: str
    question: str
    answer: str
    needle_position: int
    depth: float
    haystack_length: int


@contextlib.contextmanager
def _evaluating(model):
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _check_depths(depths):
    if not isinstance(depths, (tuple, list)) or not depths:
        raise ValueError(f"depths={depths!r} must be a non-empty list of numbers in [0, 1]")
    for depth in depths:
        check_number("depths", depth, 0, 1)
    return tuple(float(d) for d in depths)


class NeedleInHaystack:
    """A RULER-style needle-in-a-haystack task (see the module docstring): fresh training samples every step
    (seeded (seed, 0, step, i), depth uniform in [0, 1]), a test set of `test_examples` needles at each of
    `depths` (seeded (seed, 1, i)). Set `.context_length` to change the length (a curriculum).

    haystack: "passkey", "number" or "word"; digits: digit tokens of the number (RULER uses 7); filler: None
    (the shipped generator), a text file path or a filler object (see babilong), essay haystacks only.
    """

    def __init__(self, haystack="number", context_length=1024, digits=4, depths=DEPTHS, test_examples=20,
                 filler=None, seed=0):
        if not isinstance(haystack, str) or haystack not in HAYSTACKS:
            raise ValueError(f"haystack={haystack!r} is not supported; allowed values: "
                             f"{', '.join(map(repr, HAYSTACKS))}")
        check_int("digits", digits)
        if digits > MAX_DIGITS:
            raise ValueError(f"digits={digits!r} must be an integer in [1, {MAX_DIGITS}]")
        if haystack == "passkey" and filler is not None:
            raise ValueError(f"filler={filler!r} must be None for haystack='passkey' (its haystack is RULER's "
                             "repeated noise); use haystack='number' or 'word' for an essay filler")
        self.depths = _check_depths(depths)
        check_int("test_examples", test_examples)
        check_seed(seed)
        self.haystack, self.digits, self.test_examples, self.seed = haystack, digits, test_examples, seed
        self.filler = RepeatedNoise() if haystack == "passkey" else _resolve_filler(filler)
        # one vocabulary for the three haystacks (with the shipped filler): a model trained on one reads the others
        self.tokenizer = WordTokenizer((*_filler_module().VOCABULARY, *TEMPLATE_WORDS, *KEYS, *VALUE_WORDS,
                                        *"0123456789", *RepeatedNoise.words, *self.filler.words))
        self.min_context_length = sum(map(len, self._encode(*self._draw(np.random.default_rng(0)))))
        self.check_length("context_length", context_length)
        self.context_length = context_length

    @property
    def vocab_size(self):
        return self.tokenizer.vocab_size

    def check_length(self, name, length):
        check_int(name, length, self.min_context_length)

    def _draw(self, rng):
        """(needle, question, answer) texts of one drawn key and value."""
        kind = "word" if self.haystack == "word" else "number"
        key = KEYS[rng.integers(len(KEYS))]
        if kind == "word":
            answer = VALUE_WORDS[rng.integers(len(VALUE_WORDS))]
        else:
            answer = " ".join(str(int(rng.integers(10 ** (self.digits - 1), 10 ** self.digits))))
        return NEEDLE.format(kind=kind, key=key, value=answer), QUESTION.format(kind=kind, key=key), answer

    def _encode(self, needle, question, answer):
        """(needle ids, what follows the haystack: "<q> question <ans>" and the answer but its last token)."""
        question_ids = _question_ids(self.tokenizer, question).numpy()
        return self.tokenizer.encode(needle), np.concatenate([question_ids, self.tokenizer.encode(answer)[:-1]])

    def sample(self, seed, context_length=None, depth=None):
        """The sample seeded `seed` (an int or a sequence of ints) -> `NeedleSample`; depth None: drawn uniformly."""
        check_seed(seed, allow_sequence=True, limit=2**63)
        length = self.context_length if context_length is None else context_length
        self.check_length("context_length", length)
        if depth is not None:
            check_number("depth", depth, 0, 1)
        entropy = [int(s) for s in (seed if isinstance(seed, (tuple, list)) else (seed,))]
        needle_seq, depth_seq, filler_seq = np.random.SeedSequence(entropy).spawn(3)
        needle, question, answer = self._draw(np.random.default_rng(needle_seq))
        needle_ids, tail = self._encode(needle, question, answer)
        depth = float(np.random.default_rng(depth_seq).random()) if depth is None else float(depth)
        haystack_length = length - len(needle_ids) - len(tail)
        offset = round(depth * haystack_length)
        pieces = _walk(self.filler.blocks(filler_seq, self.tokenizer), [offset, haystack_length], [needle_ids, None],
                       self.tokenizer.period_id)
        inputs = torch.from_numpy(np.concatenate([*pieces, tail]).astype(np.int64, copy=False))
        labels = torch.full_like(inputs, IGNORE)
        answer_ids = self.tokenizer.encode(answer)
        labels[-len(answer_ids):] = torch.from_numpy(answer_ids)
        return NeedleSample(inputs, labels, needle, question, answer, offset, depth, haystack_length)

    def _stack(self, samples):
        return torch.stack([s.inputs for s in samples]), torch.stack([s.labels for s in samples])

    def batch(self, batch_size, step):
        """(inputs, labels) LongTensors [batch_size, context_length], depths drawn uniformly; deterministic in step."""
        check_int("batch_size", batch_size)
        check_int("step", step, 0)
        return self._stack([self.sample((self.seed, 0, step, i)) for i in range(batch_size)])

    def test_set(self, context_length=None, depths=None, samples=None):
        """(inputs, labels) of `samples` (default test_examples) needles at each depth (default: the task's
        grid), depth-major: rows d·samples .. (d+1)·samples − 1 hold depth d; the same needles at every depth."""
        depths = self.depths if depths is None else _check_depths(depths)
        samples = self.test_examples if samples is None else samples
        check_int("samples", samples)
        return self._stack([self.sample((self.seed, 1, i), context_length, depth)
                            for depth in depths for i in range(samples)])

    def evaluate(self, model, batch_size=32):
        """{"accuracy": exact match over the test set, "accuracy@depth=D": per depth D} (model(inputs,
        labels=labels)["logits"] at the task's context length)."""
        frame = niah_accuracy(model, self, batch_size=batch_size)
        return {"accuracy": float(frame["accuracy"].mean()),
                **{f"accuracy@depth={d:g}": float(a) for d, a in zip(frame["depth"], frame["accuracy"])}}


def _exact_matches(model, inputs, labels, batch_size):
    """Per row: whether the model's prediction is right at every labelled position -> BoolTensor [N]."""
    answer_length = int((labels[0] != IGNORE).sum())
    hits = []
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start:start + batch_size], labels[start:start + batch_size]
        predicted = predictions_at_labels(model(x, labels=y)["logits"], y).view(len(x), answer_length)
        hits.append((predicted == y[y != IGNORE].view(len(x), answer_length)).all(dim=1))
    return torch.cat(hits)


@torch.no_grad()
def niah_accuracy(model, task, context_lengths=None, depths=None, samples=None, batch_size=32):
    """Exact-match accuracy by context length and needle depth: `samples` test needles (default the task's
    test_examples) at each depth (default the task's grid) and length (default the task's), read by
    model(inputs, labels=labels)["logits"] over whole sequences, `batch_size` at a time
    -> polars DataFrame(context_length, depth, samples, accuracy)."""
    if not isinstance(task, NeedleInHaystack):
        raise ValueError(f"task={task!r} must be a NeedleInHaystack")
    lengths = [task.context_length] if context_lengths is None else context_lengths
    if not isinstance(lengths, (tuple, list)) or not lengths:
        raise ValueError(f"context_lengths={context_lengths!r} must be a non-empty list of integers >= "
                         f"{task.min_context_length}")
    for length in lengths:
        task.check_length("context_lengths", length)
    depths = task.depths if depths is None else _check_depths(depths)
    samples = task.test_examples if samples is None else samples
    check_int("samples", samples)
    check_int("batch_size", batch_size)
    rows = []
    with _evaluating(model):
        for length in lengths:
            hits = _exact_matches(model, *task.test_set(length, depths, samples), batch_size)
            for depth, accuracy in zip(depths, hits.view(len(depths), samples).float().mean(dim=1).tolist()):
                rows.append({"context_length": length, "depth": depth, "samples": samples, "accuracy": accuracy})
    return pl.DataFrame(rows)
