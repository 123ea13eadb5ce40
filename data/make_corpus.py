"""Write data/corpus.txt, the small default corpus of the language-modelling task (`miras_lite.tasks.lm`).

    .venv/bin/python data/make_corpus.py        # from the repository root; deterministic (seed 0)

Paragraphs of pseudo-English filler (data/filler.py) alternate with short bAbI-style stories followed
by their question and answer, so a model can learn both local grammar and a little long-range recall:

    the quiet hidden hill slept .  ...
    mary went to the kitchen . john moved to the garden . where is mary ? kitchen
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from miras_lite.tasks.babilong import TASKS, babilong_sample, load_data_module  # noqa: E402

OUT = HERE / "corpus.txt"


def corpus_text(seed=0, paragraphs=600):
    """The corpus: `paragraphs` pairs of (filler paragraph, story + question + answer), deterministic."""
    filler = load_data_module("filler")
    parts = []
    for i in range(paragraphs):
        parts.append(filler.text((seed, i), num_sentences=3 + i % 5).replace("\n", " "))
        sample = babilong_sample(TASKS[i % len(TASKS)], context_length=0, seed=(seed, i))
        parts.append(" ".join(sample.facts) + f" {sample.question} {sample.answer}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    OUT.write_text(corpus_text(), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
