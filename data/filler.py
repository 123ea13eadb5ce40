"""Deterministic pseudo-English filler text (the "haystack" of the BABILong-style tasks).

Sentences follow a handful of part-of-speech templates filled from small word lists, e.g.

    "the dusty lantern admired a narrow bridge ."
    "she quietly repaired the clock beyond the ancient harbor ."

Words within a category are drawn with a skewed (Zipf-like) frequency: index ⌊n·r²⌋ for r ~ U[0, 1).
The word lists deliberately avoid every bAbI word that carries information (people, places, objects and
the verbs that move people or objects), so that a question about the facts can only be answered from
the facts, never from the filler.

Pure numpy, no project imports: `miras_lite.tasks.babilong` loads this file from data/. Sentences come
in blocks, generated vectorised (several million tokens per second on one core):

    blocks(seed)            -> endless iterator of (word_index int64 [n], sentence_ends int64 [S])
    text(seed, num_sentences) -> str
    VOCABULARY              -> every word the generator can produce, "." included (indices into it)
"""

import numpy as np

CATEGORIES = {
    "DET": ("the", "a", "every", "some", "this", "that", "one", "another"),
    "ADJ": ("old", "quiet", "bright", "small", "heavy", "distant", "pale", "narrow", "ancient", "silver", "gentle",
            "broken", "hidden", "northern", "green", "cold", "warm", "strange", "empty", "golden", "tall", "dusty",
            "wooden", "quick", "slow", "dark", "soft", "loud", "careful", "patient", "wild", "calm", "bitter",
            "simple", "rough", "proud", "clever", "tired", "young", "faint"),
    "NOUN": ("river", "mountain", "letter", "window", "ship", "village", "forest", "teacher", "lantern", "candle",
             "bridge", "road", "captain", "merchant", "horse", "stone", "cloud", "harbor", "tower", "market",
             "farmer", "soldier", "island", "valley", "song", "story", "book", "door", "wall", "field", "storm",
             "wind", "bird", "child", "doctor", "painter", "sailor", "clock", "coin", "map", "boat", "castle", "king",
             "queen", "friend", "stranger", "lake", "hill", "path", "mirror", "ribbon", "basket", "blanket",
             "engine", "machine", "poem", "shadow", "morning", "evening", "crowd"),
    "VERB": ("watched", "painted", "followed", "remembered", "answered", "built", "opened", "closed", "found",
             "forgot", "praised", "studied", "repaired", "described", "admired", "ignored", "measured", "counted",
             "washed", "noticed", "greeted", "examined", "imagined", "borrowed", "sold", "bought", "wrote", "read",
             "heard", "saw", "loved", "feared", "warned", "helped", "called"),
    "IVERB": ("slept", "laughed", "waited", "smiled", "sang", "listened", "rested", "whispered", "trembled",
              "wondered", "shone", "fell", "rose", "burned", "faded", "grew", "vanished", "danced"),
    "PREP": ("near", "beside", "under", "behind", "beyond", "across", "along", "above", "below", "around",
             "without", "with", "over", "among", "against", "inside"),
    "ADV": ("slowly", "quietly", "suddenly", "often", "never", "always", "gladly", "rarely", "carefully", "softly",
            "early", "late", "silently", "proudly"),
    "PRON": ("he", "she", "they", "we", "it", "nobody", "someone"),
    "CONJ": ("and", "but", "while", "because", "although"),
    "END": (".",),
}

TEMPLATES = (
    "DET ADJ NOUN VERB DET NOUN END",
    "DET NOUN IVERB PREP DET ADJ NOUN END",
    "PRON ADV VERB DET NOUN PREP DET NOUN END",
    "DET NOUN VERB DET ADJ NOUN CONJ PRON IVERB END",
    "ADV DET ADJ NOUN IVERB END",
    "PRON VERB DET NOUN CONJ DET NOUN IVERB ADV END",
    "DET ADJ ADJ NOUN IVERB PREP DET NOUN END",
    "PRON IVERB END",
)


def _tables():
    vocab, cat_words = [], []
    for words in CATEGORIES.values():
        ids = []
        for w in words:
            if w not in vocab:
                vocab.append(w)
            ids.append(vocab.index(w))
        cat_words.append(ids)
    names = list(CATEGORIES)
    width = max(len(c) for c in cat_words)
    table = np.array([c + [c[0]] * (width - len(c)) for c in cat_words], dtype=np.int64)  # [categories, width]
    sizes = np.array([len(c) for c in cat_words], dtype=np.float64)
    slots = [[names.index(s) for s in t.split()] for t in TEMPLATES]
    longest = max(len(s) for s in slots)
    template_slots = np.array([s + [-1] * (longest - len(s)) for s in slots], dtype=np.int64)  # [templates, longest]
    return tuple(vocab), table, sizes, template_slots


VOCABULARY, _TABLE, _SIZES, _SLOTS = _tables()


def blocks(seed=0, sentences_per_block=512):
    """Endless deterministic filler: yields (words, ends), `words` indices into VOCABULARY (int64 [n]),
    `ends` the cumulative end offsets of the block's sentences (int64, ends[-1] == n)."""
    rng = np.random.default_rng(seed)
    while True:
        template = rng.integers(0, len(_SLOTS), sentences_per_block)
        slots = _SLOTS[template]  # [S, longest], −1 = no slot
        valid = slots >= 0
        cats = slots[valid]  # row-major: sentence by sentence
        pick = np.floor(_SIZES[cats] * rng.random(cats.size) ** 2).astype(np.int64)
        yield _TABLE[cats, pick], np.cumsum(valid.sum(axis=1))


def text(seed=0, num_sentences=100):
    """`num_sentences` filler sentences as one string (words separated by spaces, one sentence a line)."""
    words, ends = next(blocks(seed, num_sentences))
    starts = np.concatenate([[0], ends[:-1]])
    return "\n".join(" ".join(VOCABULARY[i] for i in words[s:e]) for s, e in zip(starts, ends))


if __name__ == "__main__":
    print(text(0, 10))
