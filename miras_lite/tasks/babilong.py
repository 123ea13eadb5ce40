"""BABILong-style long-context QA (Kuratov et al., arXiv 2406.10149) on bAbI-like stories (Weston et al., 2015).

A sample is a short bAbI story (the *facts*) hidden in a long stream of filler sentences, then a question:

    qa1 single supporting fact:  "mary went to the kitchen ."              <q> where is mary ? <ans>  -> kitchen
    qa2 two supporting facts:    "john picked up the milk ." "john moved to the office ."
                                                                          <q> where is the milk ? <ans>  -> office
    qa3 three supporting facts:  ... where the object went, in order ...
                                                     <q> where was the milk before the office ? <ans>  -> garden

Stories are simulated (people move between places, pick up and drop objects) and the question is chosen so
that its answer follows from the facts: qa1 asks where a person is (their last move); qa2 where an object
is (where its carrier is, or where it was dropped); qa3 where an object was before a place X, X being a
place the object visited exactly once (not first), the answer the place it was in just before X.

Layout of a context of `context_length` tokens: the filler budget is B = max(0, context_length − F), F the
fact tokens; fact i is inserted after filler offset o_i, o_1 ≤ ... ≤ o_n sorted uniform in [0, B]. Facts go
between sentences: where an offset falls inside a filler sentence, that sentence ends there (its last kept
token becomes ".") and the rest of it is skipped, so filler and positions are exact and known up front.
The context is produced lazily (`BabiLongSample.segments`), so a 1M-token sample never exists in memory.
The story does not depend on context_length: one seed gives the same story and question at every length.

Filler: the shipped pseudo-English generator (data/filler.py, None), any text file (a path: its sentences
in order, from a seeded starting sentence, cycling), or an object with `.words` (its vocabulary) and
`.blocks(seed, tokenizer)` -> iterator of (ids int64 [n], sentence ends int64 [S]).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ..checks import check_int
from ._checks import check_seed
from .mqar import IGNORE, predictions_at_labels

__all__ = ["TASKS", "PEOPLE", "PLACES", "OBJECTS", "WordTokenizer", "GeneratedFiller", "TextFiller", "BabiLongSample",
           "babilong_sample", "babilong_batch", "BabiLong", "babilong_accuracy", "load_data_module", "DATA_DIR"]

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

TASKS = ("qa1", "qa2", "qa3")
PEOPLE = ("mary", "john", "sandra", "daniel")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVES = ("moved to the {}", "went to the {}", "journeyed to the {}", "travelled to the {}", "went back to the {}")
TAKES = ("got the {}", "grabbed the {}", "picked up the {}", "took the {}", "got the {} there", "took the {} there")
DROPS = ("dropped the {}", "discarded the {}", "put down the {}", "left the {}", "dropped the {} there")
QUESTIONS = {"qa1": "where is {} ?", "qa2": "where is the {} ?", "qa3": "where was the {} before the {} ?"}
BABI_WORDS = PEOPLE + PLACES + OBJECTS + (
    "moved", "went", "journeyed", "travelled", "back", "to", "the", "got", "grabbed", "picked", "up", "took", "there",
    "dropped", "discarded", "put", "down", "left", "where", "is", "was", "before")

# per task: (min facts, max facts, P(drop | carrying), P(take | an object is at hand))
_STORY = {"qa1": (2, 10, 0.0, 0.0), "qa2": (4, 14, 0.25, 0.45), "qa3": (6, 20, 0.15, 0.6)}


def load_data_module(name):
    """Import data/<name>.py (the shipped generators live outside the package)."""
    path = DATA_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the shipped data/ directory must sit next to miras_lite/")
    spec = importlib.util.spec_from_file_location(f"miras_lite_data_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def _filler_module():
    return load_data_module("filler")


# -------------------------------------------------------------------------------------- tokenizer

_WORD = re.compile(r"<[a-z]+>|[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


class WordTokenizer:
    """A fixed word-level vocabulary: specials, then the bAbI words, then `words` (first occurrence order).

    Text is lower-cased and split into words and single punctuation marks; unknown words map to <unk>.
    ids: <pad> 0, <unk> 1, <q> 2 (question follows), <ans> 3 (answer here), "." 4, "?" 5.
    """

    SPECIALS = ("<pad>", "<unk>", "<q>", "<ans>", ".", "?")
    pad_id, unk_id, q_id, ans_id, period_id, question_mark_id = range(6)

    def __init__(self, words=()):
        vocab = list(dict.fromkeys((*self.SPECIALS, *BABI_WORDS, *words)))
        self.id_to_token = vocab
        self.token_to_id = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def default(cls):
        """Specials + bAbI words + the words of the shipped filler generator."""
        return cls(_filler_module().VOCABULARY)

    @classmethod
    def from_text(cls, text, max_words=None, base=None):
        """`base`'s words (default: `default()`) plus the words of `text`, most frequent first (ties:
        alphabetical), at most `max_words` new ones."""
        base = cls.default() if base is None else base
        counts = Counter(w for w in cls.split(text) if w not in base.token_to_id)
        new = sorted(counts, key=lambda w: (-counts[w], w))[:max_words]
        return cls((*base.id_to_token[len(cls.SPECIALS):], *new))

    @staticmethod
    def split(text):
        return _WORD.findall(text.lower())

    @property
    def vocab_size(self):
        return len(self.id_to_token)

    def __len__(self):
        return len(self.id_to_token)

    def encode(self, text):
        """Token ids of `text` -> int64 numpy array."""
        get, unk = self.token_to_id.get, self.unk_id
        return np.array([get(w, unk) for w in self.split(text)], dtype=np.int64)

    def decode(self, ids):
        return " ".join(self.id_to_token[int(i)] for i in ids)


# ----------------------------------------------------------------------------------------- fillers


class GeneratedFiller:
    """The shipped pseudo-English generator (data/filler.py)."""

    def __init__(self):
        self.module = _filler_module()
        self.words = self.module.VOCABULARY

    def blocks(self, seed, tokenizer):
        lookup = np.array([tokenizer.token_to_id.get(w, tokenizer.unk_id) for w in self.words], dtype=np.int64)
        for words, ends in self.module.blocks(seed):
            yield lookup[words], ends


class TextFiller:
    """Filler sentences from a text file, in order, starting at a seeded sentence and cycling.

    The file is read once and kept as token ids (one array; O(file), not O(context)).
    """

    def __init__(self, path, block_tokens=4096):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"filler={str(path)!r} is not a readable file (give a text file path, a filler "
                             f"object or None for the shipped generator)")
        text = self.path.read_text(encoding="utf-8", errors="replace")
        self.sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if WordTokenizer.split(s)]
        if not self.sentences:
            raise ValueError(f"filler={str(path)!r} holds no words")
        self.words = tuple(dict.fromkeys(w for s in self.sentences for w in WordTokenizer.split(s)))
        self.block_tokens = block_tokens
        self._encoded = (None, None, None)

    def _encode(self, tokenizer):
        """(ids, sentence ends) of the whole file for `tokenizer` (the last one is cached)."""
        if self._encoded[0] is not tokenizer:
            parts = [tokenizer.encode(s) for s in self.sentences]
            self._encoded = (tokenizer, np.concatenate(parts), np.cumsum([len(p) for p in parts]))
        return self._encoded[1:]

    def blocks(self, seed, tokenizer):
        ids, ends = self._encode(tokenizer)
        starts = np.concatenate([[0], ends[:-1]])
        s = int(np.random.default_rng(seed).integers(len(ends)))
        while True:  # whole sentences from s up to ~block_tokens, wrapping at the end of the file
            e = min(int(np.searchsorted(ends, starts[s] + self.block_tokens, side="right")), len(ends))
            e = max(e, s + 1)
            yield ids[starts[s]:ends[e - 1]], ends[s:e] - starts[s]
            s = e % len(ends)


@functools.lru_cache(maxsize=16)
def _text_filler(path):
    return TextFiller(path)


def _resolve_filler(filler):
    if filler is None:
        return _generated_filler()
    if isinstance(filler, (str, Path)):
        return _text_filler(str(Path(filler).resolve()))
    if hasattr(filler, "blocks") and hasattr(filler, "words"):
        return filler
    raise ValueError(f"filler={filler!r} must be None (shipped generator), a text file path, or an object with "
                     f".words and .blocks(seed, tokenizer)")


@functools.lru_cache(maxsize=None)
def _generated_filler():
    return GeneratedFiller()


_TOKENIZERS = {}


def _resolve_tokenizer(tokenizer, filler):
    """The given tokenizer, or the default vocabulary extended by the filler's words (cached per filler)."""
    if tokenizer is not None:
        if isinstance(tokenizer, (str, bytes)) or not all(
                hasattr(tokenizer, name) for name in ("encode", "token_to_id", "pad_id", "q_id", "ans_id")):
            raise ValueError(f"tokenizer={tokenizer!r} must be None (the default vocabulary extended by the filler's "
                             "words) or a WordTokenizer")
        return tokenizer
    key = id(filler)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = (filler, WordTokenizer((*WordTokenizer.default().id_to_token[6:], *filler.words)))
    return _TOKENIZERS[key][1]


# ------------------------------------------------------------------------------------------ stories


def _simulate(task, rng):
    """One random story -> (facts, every answerable (question, answer), the drawn one first) or None
    when no question is answerable."""
    lo, hi, p_drop, p_take = _STORY[task]
    where, holder, obj_at = {}, {}, {o: None for o in OBJECTS}
    trail = {o: [] for o in OBJECTS}  # the places an object has been, consecutive repeats removed
    facts = []

    def place_object(o, place):
        obj_at[o] = place
        if place is not None and (not trail[o] or trail[o][-1] != place):
            trail[o].append(place)

    for _ in range(int(rng.integers(lo, hi + 1))):
        p = PEOPLE[rng.integers(len(PEOPLE))]
        carrying = [o for o in OBJECTS if holder.get(o) == p]
        at_hand = [o for o in OBJECTS if holder.get(o) is None and obj_at[o] in (None, where.get(p))]
        if carrying and rng.random() < p_drop:
            o = carrying[rng.integers(len(carrying))]
            holder[o] = None
            facts.append(f"{p} {DROPS[rng.integers(len(DROPS))].format(o)} .")
        elif at_hand and rng.random() < p_take:
            o = at_hand[rng.integers(len(at_hand))]
            holder[o] = p
            place_object(o, where.get(p))
            facts.append(f"{p} {TAKES[rng.integers(len(TAKES))].format(o)} .")
        else:
            place = PLACES[rng.integers(len(PLACES))]
            while place == where.get(p):
                place = PLACES[rng.integers(len(PLACES))]
            where[p] = place
            for o in carrying:
                place_object(o, place)
            facts.append(f"{p} {MOVES[rng.integers(len(MOVES))].format(place)} .")
    if task == "qa1":
        options = [(QUESTIONS["qa1"].format(p), where[p]) for p in PEOPLE if p in where]
    elif task == "qa2":
        options = [(QUESTIONS["qa2"].format(o), obj_at[o]) for o in OBJECTS if trail[o] and obj_at[o] is not None]
    else:
        options = [(QUESTIONS["qa3"].format(o, t[i]), t[i - 1]) for o, t in trail.items()
                   for i in range(1, len(t)) if t.count(t[i]) == 1]
    if not options:
        return None
    chosen = int(rng.integers(len(options)))
    return facts, [options[chosen], *options[:chosen], *options[chosen + 1:]]


def _story(task, rng):
    for _ in range(10_000):
        story = _simulate(task, rng)
        if story is not None:
            return story
    raise RuntimeError(f"could not draw an answerable {task} story")  # pragma: no cover


# ------------------------------------------------------------------------------------------ samples


def _walk(blocks, cuts, inserts, period_id):
    """Yield the context piece by piece: filler tokens up to filler offset cuts[i], then inserts[i].

    A cut inside a sentence ends the sentence there (last kept token -> ".") and skips its rest.
    """
    ids = ends = None
    pos = taken = 0
    for cut, insert in zip(cuts, inserts):
        need = cut - taken
        while need > 0:
            if ids is None or pos >= len(ids):
                ids, ends = next(blocks)
                pos = 0
            take = min(need, len(ids) - pos)
            piece = ids[pos:pos + take]
            pos, need, taken = pos + take, need - take, taken + take
            if need == 0:
                nxt = int(ends[np.searchsorted(ends, pos)])  # the end of the sentence we are in
                if nxt != pos:
                    piece = piece.copy()
                    piece[-1] = period_id
                    pos = nxt
            yield piece
        if insert is not None and len(insert):
            yield insert


@dataclass
class BabiLongSample:
    """One BABILong-style sample. The context is never stored: `segments(n)` regenerates it lazily.

    facts / fact_ids: the story sentences and their token ids; fact_positions: the context position of
    each fact's first token; question_ids: LongTensor "<q> where is mary ? <ans>"; answer_id: the token the
    model must output at the last question position; context_length: the exact number of context tokens;
    other_questions: every other answerable question of the story, as (question_ids, answer_id) pairs.
    """

    task: str
    facts: list
    fact_ids: list
    fact_positions: list
    question: str
    question_ids: torch.Tensor
    answer: str
    answer_id: int
    context_length: int
    tokenizer: WordTokenizer
    _filler: object = field(repr=False)
    _filler_seed: object = field(repr=False)
    _offsets: list = field(repr=False)
    other_questions: list = field(default_factory=list, repr=False)

    @property
    def filler_length(self):
        return self.context_length - sum(len(f) for f in self.fact_ids)

    def _pieces(self):
        blocks = self._filler.blocks(self._filler_seed, self.tokenizer)
        return _walk(blocks, [*self._offsets, self.filler_length], [*self.fact_ids, None], self.tokenizer.period_id)

    def segments(self, segment_size):
        """The context as LongTensors of segment_size tokens (the last one shorter), produced lazily:
        memory O(segment_size + one filler block), whatever the context length."""
        check_int("segment_size", segment_size)
        pending, count = [], 0
        for piece in self._pieces():
            pending.append(piece)
            count += len(piece)
            if count >= segment_size:
                buf = np.concatenate(pending).astype(np.int64, copy=False)
                full = len(buf) - len(buf) % segment_size
                for s in range(0, full, segment_size):
                    yield torch.from_numpy(buf[s:s + segment_size].copy())
                pending, count = ([buf[full:]] if full < len(buf) else []), len(buf) - full
        if count:
            yield torch.from_numpy(np.concatenate(pending).astype(np.int64, copy=False))

    def context(self):
        """The whole context as one LongTensor (eager: for training-length contexts; `segments` for long ones)."""
        pieces = list(self._pieces())
        return torch.from_numpy(np.concatenate(pieces).astype(np.int64, copy=False)) if pieces else \
            torch.zeros(0, dtype=torch.long)

    def inputs(self):
        """context + question as one LongTensor (the model answers at the last position)."""
        return torch.cat([self.context(), self.question_ids])


def _question_ids(tokenizer, question):
    """"<q> where is mary ? <ans>" as a LongTensor."""
    ids = np.concatenate([[tokenizer.q_id], tokenizer.encode(question), [tokenizer.ans_id]])
    return torch.from_numpy(ids)


def check_task(task, context_length):
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; allowed values: {', '.join(map(repr, TASKS))}")
    check_int("context_length", context_length, minimum=0)


def babilong_sample(task="qa1", context_length=1000, seed=0, filler=None, tokenizer=None):
    """A BABILong-style sample with a context of max(context_length, fact tokens) tokens -> `BabiLongSample`.

    seed: an int or a sequence of ints (e.g. (seed, split, index)); the story depends on it only.
    filler: None (shipped generator), a text file path, or a filler object. tokenizer: None builds the
    default vocabulary extended by the filler's words.
    """
    check_task(task, context_length)
    check_seed(seed, allow_sequence=True, limit=2**63)
    filler = _resolve_filler(filler)
    tok = _resolve_tokenizer(tokenizer, filler)
    entropy = [int(s) for s in (seed if isinstance(seed, (tuple, list)) else (seed,))]
    story_seq, layout_seq, filler_seq = np.random.SeedSequence([TASKS.index(task), *entropy]).spawn(3)
    facts, questions = _story(task, np.random.default_rng(story_seq))
    (question, answer), others = questions[0], questions[1:]
    fact_ids = [tok.encode(f) for f in facts]
    fact_tokens = sum(len(f) for f in fact_ids)
    budget = max(0, context_length - fact_tokens)
    offsets = np.sort(np.random.default_rng(layout_seq).integers(0, budget + 1, len(facts))).tolist()
    lengths = np.concatenate([[0], np.cumsum([len(f) for f in fact_ids])[:-1]]).tolist()
    q_ids = _question_ids(tok, question)
    return BabiLongSample(task=task, facts=facts, fact_ids=fact_ids,
                          fact_positions=[o + n for o, n in zip(offsets, lengths)], question=question,
                          question_ids=q_ids, answer=answer, answer_id=tok.token_to_id[answer],
                          context_length=budget + fact_tokens, tokenizer=tok, _filler=filler,
                          _filler_seed=filler_seq, _offsets=offsets,
                          other_questions=[(_question_ids(tok, q), tok.token_to_id[a]) for q, a in others])


def _left_pad(rows, fill):
    """1-D tensors left-padded with `fill` to a common length -> [B, L]."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = r
    return out


def _stack(samples, pad_id):
    """Left-pad context + question of each sample to a common length -> (inputs [B, L], answers [B])."""
    return _left_pad([s.inputs() for s in samples], pad_id), torch.tensor([s.answer_id for s in samples])


def _all_questions(sample):
    """context, then every answerable question with its answer, the sample's own question first:
    ``... <q> where is mary ? <ans> kitchen <q> where is john ? <ans>`` -> (inputs, labels), labels −100
    except the answer at each <ans> (the last answer is only a label)."""
    pairs = [(sample.question_ids, sample.answer_id), *sample.other_questions]
    inputs, labels = [sample.context()], [torch.full((sample.context_length,), IGNORE)]
    for n, (question, answer) in enumerate(pairs):
        given = [] if n == len(pairs) - 1 else [answer]
        inputs.append(torch.cat([question, torch.tensor(given, dtype=torch.long)]))
        label = torch.full((len(question) + len(given),), IGNORE)
        label[len(question) - 1] = answer
        labels.append(label)
    return torch.cat(inputs), torch.cat(labels)


def babilong_batch(task, context_length, batch_size, seed=0, filler=None, tokenizer=None):
    """A batch of samples seeded (seed, i) -> (inputs LongTensor [B, L], answer LongTensor [B]).

    inputs = context + question, left-padded with <pad> when the lengths differ (only when context_length
    is shorter than some story); the answer is due at the last position."""
    check_int("batch_size", batch_size)
    check_seed(seed, allow_sequence=True, limit=2**63)
    seeds = seed if isinstance(seed, (tuple, list)) else (seed,)
    samples = [babilong_sample(task, context_length, (*seeds, i), filler, tokenizer) for i in range(batch_size)]
    return _stack(samples, samples[0].tokenizer.pad_id)


# --------------------------------------------------------------------------------------- the task


class BabiLong:
    """A BABILong-style training task: fresh samples every step (seeded (seed, 0, step)), a fixed test set
    (seeded (seed, 1)). Set `.context_length` to change the length (a curriculum).

    questions: "one" (the benchmark's format: one question, answered at the last position) or "all"
    (training batches end with every answerable question of the story, each followed by its answer, the
    sample's own question first: up to 4 labels per qa1 story instead of 1). The test set is always "one".
    """

    def __init__(self, task="qa1", context_length=512, filler=None, tokenizer=None, test_examples=200, seed=0,
                 questions="one"):
        check_task(task, context_length)
        check_seed(seed)
        check_int("test_examples", test_examples)
        if not isinstance(questions, str) or questions not in ("one", "all"):
            raise ValueError(f"questions={questions!r} is not supported; allowed values: 'one', 'all'")
        self.task, self.context_length, self.seed, self.test_examples = task, context_length, seed, test_examples
        self.questions = questions
        self.filler = _resolve_filler(filler)
        self.tokenizer = _resolve_tokenizer(tokenizer, self.filler)

    @property
    def vocab_size(self):
        return self.tokenizer.vocab_size

    def _labelled(self, inputs, answers):
        labels = torch.full_like(inputs, IGNORE)
        labels[:, -1] = answers
        return inputs, labels

    def batch(self, batch_size, step):
        """(inputs, labels) [B, L]: labels −100 except the answer at the last position (questions="all": at
        the end of every question)."""
        if self.questions == "one":
            return self._labelled(*babilong_batch(self.task, self.context_length, batch_size, (self.seed, 0, step),
                                                  self.filler, self.tokenizer))
        rows = [_all_questions(babilong_sample(self.task, self.context_length, (self.seed, 0, step, i), self.filler,
                                               self.tokenizer)) for i in range(batch_size)]
        return _left_pad([r[0] for r in rows], self.tokenizer.pad_id), _left_pad([r[1] for r in rows], IGNORE)

    def sample(self, index, context_length=None):
        """Test sample `index` at any context length (the same story at every length)."""
        n = self.context_length if context_length is None else context_length
        return babilong_sample(self.task, n, (self.seed, 1, index), self.filler, self.tokenizer)

    def test_set(self, context_length=None):
        samples = [self.sample(i, context_length) for i in range(self.test_examples)]
        return self._labelled(*_stack(samples, self.tokenizer.pad_id))

    @torch.no_grad()
    def evaluate(self, model, batch_size=32):
        """{"accuracy": float}: answers read from model(inputs, labels=labels)["logits"] on the test set."""
        inputs, labels = self.test_set()
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            preds = [predictions_at_labels(model(inputs[s:s + batch_size], labels=labels[s:s + batch_size])["logits"],
                                           labels[s:s + batch_size]) for s in range(0, len(inputs), batch_size)]
        finally:
            if was_training:
                model.train()
        return {"accuracy": float((torch.cat(preds) == labels[:, -1]).float().mean())}


def _same_shape_batches(samples, batch_size):
    """`samples` in batches of at most `batch_size` that share their context and question lengths: the samples
    of a batch are segmented alike, so they are read as one stream of [B, n] segments."""
    groups = {}
    for sample in samples:
        groups.setdefault((sample.context_length, len(sample.question_ids)), []).append(sample)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def batched_segments(samples, segment_size):
    """The contexts of same-length samples as [B, n] segments, produced lazily."""
    return (torch.stack(parts) for parts in zip(*(sample.segments(segment_size) for sample in samples)))


@torch.no_grad()
def babilong_accuracy(model, task="qa1", context_lengths=(1024, 4096), num_samples=50, segment_size=1024, seed=0,
                      filler=None, tokenizer=None, batch_size=32):
    """Streamed accuracy vs context length: for each length, `num_samples` samples (the same stories at
    every length), up to `batch_size` at a time read as one batched stream,
    model.stream(segments [B, n], question_ids [B, Q]) -> answer logits [B, V]
    -> polars DataFrame(context_length, accuracy, samples, tokens_per_s)."""
    if not hasattr(model, "stream"):
        raise ValueError(f"model={type(model).__name__} has no .stream(segments, question_ids) (use an ARMT)")
    if not isinstance(context_lengths, (list, tuple)) or not context_lengths:
        raise ValueError(f"context_lengths={context_lengths!r} must be a non-empty list of integers >= 0")
    for length in context_lengths:
        check_int("context_lengths", length, 0)
    check_int("num_samples", num_samples)
    check_int("segment_size", segment_size)
    check_int("batch_size", batch_size)
    bench = BabiLong(task, 0, filler, tokenizer, seed=seed)
    rows = []
    for length in context_lengths:
        correct, tokens, start = 0, 0, time.perf_counter()
        samples = [bench.sample(i, length) for i in range(num_samples)]
        for batch in _same_shape_batches(samples, batch_size):
            questions = torch.stack([sample.question_ids for sample in batch])
            logits = torch.as_tensor(model.stream(batched_segments(batch, segment_size), questions))
            answers = torch.tensor([sample.answer_id for sample in batch])
            correct += int((logits.reshape(len(batch), -1).argmax(-1) == answers).sum())
            tokens += sum(sample.context_length + len(sample.question_ids) for sample in batch)
        seconds = time.perf_counter() - start
        rows.append({"context_length": length, "accuracy": correct / num_samples, "samples": num_samples,
                     "tokens_per_s": tokens / max(seconds, 1e-9)})
    return pl.DataFrame(rows)
