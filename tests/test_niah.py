"""Tests for miras_lite.tasks.niah: RULER-style single-needle retrieval (passkey / number / word)."""

import json
import math

import pytest
import torch

from miras_lite import MirasLM, fit
from miras_lite.__main__ import main
from miras_lite.config import NIAHConfig, RunConfig
from miras_lite.tasks import NeedleInHaystack, niah_accuracy
from miras_lite.tasks.babilong import load_data_module
from miras_lite.tasks.niah import DEPTHS, HAYSTACKS, KEYS, VALUE_WORDS, RepeatedNoise

IGNORE = -100


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _occurrences(sequence, part):
    """Start indices of `part` in the 1-D tensor `sequence`."""
    if len(part) > len(sequence):
        return []
    return (sequence.unfold(0, len(part), 1) == part).all(dim=1).nonzero().flatten().tolist()


def _split(task, sample):
    """(haystack with the needle, the tail after it: question and answer) of a sample."""
    start = (sample.inputs == task.tokenizer.q_id).nonzero().flatten()
    assert len(start) == 1
    return sample.inputs[:int(start)], sample.inputs[int(start):]


# ------------------------------------------------------------------------------------------- format


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_batches_and_test_set_are_deterministic(haystack):
    task = NeedleInHaystack(haystack, 96, test_examples=2, seed=3)
    x, y = task.batch(3, 5)
    assert x.shape == y.shape == (3, 96) and x.dtype == y.dtype == torch.long
    again = NeedleInHaystack(haystack, 96, test_examples=2, seed=3).batch(3, 5)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, task.batch(3, 6)[0])
    assert not torch.equal(x, NeedleInHaystack(haystack, 96, seed=4).batch(3, 5)[0])
    xt, yt = task.test_set()
    assert xt.shape == (2 * len(DEPTHS), 96) and torch.equal(xt, task.test_set()[0])
    assert x.max() < task.vocab_size and xt.max() < task.vocab_size


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_the_needle_is_present_once_at_the_requested_depth(haystack):
    task = NeedleInHaystack(haystack, 400)
    tok = task.tokenizer
    for index in range(3):
        for depth in (*DEPTHS, 0.1, 0.9):
            sample = task.sample((0, 1, index), depth=depth)
            context, tail = _split(task, sample)
            needle = torch.from_numpy(tok.encode(sample.needle))
            assert _occurrences(sample.inputs, needle) == [sample.needle_position]
            assert sample.needle_position == round(depth * sample.haystack_length)
            # the needle sits between sentences and nothing else in the haystack names the key or the answer
            assert sample.needle_position == 0 or int(context[sample.needle_position - 1]) == tok.period_id
            haystack_only = torch.cat([context[:sample.needle_position],
                                       context[sample.needle_position + len(needle):]])
            assert len(haystack_only) == sample.haystack_length
            answer_and_key = {*(tok.token_to_id[w] for w in (*KEYS, *VALUE_WORDS)), *tok.encode("0 1 2 3 4 5 6 7 8 9")}
            assert not set(haystack_only.tolist()) & answer_and_key
            assert tok.decode(tail).startswith(f"<q> {sample.question} <ans>")


def test_depth_is_uniform_in_training_batches():
    task = NeedleInHaystack("passkey", 200)
    depths = [task.sample((0, 0, step, i)).depth for step in range(20) for i in range(10)]
    assert min(depths) < 0.05 and max(depths) > 0.95 and abs(sum(depths) / len(depths) - 0.5) < 0.06


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_labels_are_exactly_the_answer_tokens(haystack):
    task = NeedleInHaystack(haystack, 128, digits=5)
    tok = task.tokenizer
    sample = task.sample(7, depth=0.5)
    answer = tok.encode(sample.answer)
    at = (sample.labels != IGNORE).nonzero().flatten()
    assert at.tolist() == list(range(128 - len(answer), 128))
    assert sample.labels[at].tolist() == answer.tolist()
    assert int(sample.inputs[at[0]]) == tok.ans_id
    assert sample.inputs[at[1:]].tolist() == answer[:-1].tolist()  # teacher forcing: the answer so far is input
    if haystack == "word":
        assert sample.answer in VALUE_WORDS and len(answer) == 1
    else:
        digits = sample.answer.split()
        assert len(digits) == 5 and digits[0] != "0" and all(d.isdigit() and len(d) == 1 for d in digits)
    assert sample.needle == f"one of the special magic {'words' if haystack == 'word' else 'numbers'} for " \
                            f"{sample.question.split()[-2]} is : {sample.answer} ."


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_lengths_are_exact(haystack):
    task = NeedleInHaystack(haystack, 1024)
    for length in (task.min_context_length, 1000, 1024, 4096, 8192):
        sample = task.sample(1, context_length=length, depth=0.3)
        assert len(sample.inputs) == len(sample.labels) == length
    assert task.sample(1, context_length=task.min_context_length, depth=0.3).haystack_length == 0
    with pytest.raises(ValueError, match="context_length"):
        task.sample(1, context_length=task.min_context_length - 1)


def test_haystacks_are_noise_or_essay_filler_in_one_vocabulary():
    tokenizers = {h: NeedleInHaystack(h, 300).tokenizer for h in HAYSTACKS}
    assert len({tuple(t.id_to_token) for t in tokenizers.values()}) == 1  # one vocabulary for the three
    passkey = NeedleInHaystack("passkey", 300)
    sample = passkey.sample(2, depth=0.5)
    before = passkey.tokenizer.decode(sample.inputs[:sample.needle_position])
    noise = (RepeatedNoise.TEXT + " ") * 30
    assert noise.startswith(before.rsplit(".", 2)[0])  # whole noise sentences up to the cut one
    filler_words = set(load_data_module("filler").VOCABULARY)
    essay = NeedleInHaystack("number", 300)
    context, _ = _split(essay, essay.sample(2, depth=0.0))
    words = essay.tokenizer.decode(context[len(essay.tokenizer.encode(essay.sample(2, depth=0.0).needle)):]).split()
    assert set(words) <= filler_words and len(set(words)) > 30


def test_essay_filler_from_a_text_file(tmp_path):
    path = tmp_path / "essay.txt"
    path.write_text("Quartzite cliffs glow at dusk. Lichen covers every boulder.\n" * 40, encoding="utf-8")
    task = NeedleInHaystack("number", 120, filler=str(path))
    sample = task.sample(0, depth=0.5)
    text = task.tokenizer.decode(sample.inputs)
    assert "lichen covers every boulder ." in text and "<unk>" not in text and len(sample.inputs) == 120


# -------------------------------------------------------------------------------------------- checks


JUNK = (None, True, -1, 0, 1.5, math.nan, "x", b"x", [], (), {}, [0.5, 2.0], 10**30, torch.tensor(0.5))


@pytest.mark.parametrize("name", ["haystack", "context_length", "digits", "depths", "test_examples", "filler",
                                  "seed"])
def test_bad_arguments_raise_value_errors_naming_them(name):
    base = dict(haystack="number", context_length=64, digits=3, depths=(0.0, 1.0), test_examples=2, filler=None,
                seed=0)
    for value in JUNK:
        try:
            NeedleInHaystack(**{**base, name: value})
        except ValueError as error:
            assert name in str(error), (name, value, error)
    with pytest.raises(ValueError, match=r"haystack='needle' is not supported; allowed values: 'passkey', "
                                         r"'number', 'word'"):
        NeedleInHaystack("needle")
    with pytest.raises(ValueError, match="context_length=20 must be an integer >= 29"):
        NeedleInHaystack("number", 20)
    with pytest.raises(ValueError, match="digits=13"):
        NeedleInHaystack("number", 64, digits=13)
    with pytest.raises(ValueError, match="filler=.*must be None for haystack='passkey'"):
        NeedleInHaystack("passkey", 64, filler="essay.txt")
    with pytest.raises(ValueError, match="depths"):
        NeedleInHaystack("number", 64, depths=(0.5, 1.5))


def test_niah_accuracy_rejects_bad_arguments():
    task = NeedleInHaystack("word", 64, test_examples=1)

    def model(x, labels=None):
        return {"logits": torch.zeros(*x.shape, task.vocab_size)}

    for kwargs, name in [(dict(context_lengths=[]), "context_lengths"), (dict(context_lengths=[10]), "context_lengths"),
                         (dict(context_lengths=64), "context_lengths"), (dict(depths=[-0.1]), "depths"),
                         (dict(samples=0), "samples"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=name):
            niah_accuracy(model, task, **kwargs)
    with pytest.raises(ValueError, match="task"):
        niah_accuracy(model, "niah")


# -------------------------------------------------------------------------------------------- scoring


class Oracle(torch.nn.Module):
    """Reads the value after the needle's ":" and answers it token by token after <ans> (one-hot logits)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, x, labels=None):
        tok = self.tokenizer
        logits = torch.zeros(*x.shape, tok.vocab_size)
        for row in range(len(x)):
            colon = int((x[row] == tok.token_to_id[":"]).nonzero()[0])
            end = colon + int((x[row, colon:] == tok.period_id).nonzero()[0])
            answer_at = int((x[row] == tok.ans_id).nonzero()[0])
            for k, token in enumerate(x[row, colon + 1:end]):
                logits[row, answer_at + k, token] = 1.0
        return {"logits": logits}


class Constant(torch.nn.Module):
    def __init__(self, vocab_size, token):
        super().__init__()
        self.vocab_size, self.token = vocab_size, token

    def forward(self, x, labels=None):
        return {"logits": torch.nn.functional.one_hot(torch.full_like(x, self.token), self.vocab_size).float()}


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_accuracy_by_length_and_depth_scores_an_oracle_one_and_a_constant_near_zero(haystack):
    task = NeedleInHaystack(haystack, 80, test_examples=4, seed=1)
    tok = task.tokenizer
    frame = niah_accuracy(Oracle(tok), task, context_lengths=[80, 160], depths=(0.0, 0.5, 1.0), samples=4,
                          batch_size=5)
    assert frame.columns == ["context_length", "depth", "samples", "accuracy"]
    assert frame["context_length"].to_list() == [80] * 3 + [160] * 3
    assert frame["depth"].to_list() == [0.0, 0.5, 1.0] * 2 and (frame["samples"] == 4).all()
    assert (frame["accuracy"] == 1.0).all()
    constant = Constant(task.vocab_size, tok.token_to_id["amber" if haystack == "word" else "1"])
    assert niah_accuracy(constant, task, context_lengths=[80, 160], samples=8)["accuracy"].max() <= 0.125
    scores = task.evaluate(Oracle(tok))
    assert scores == {"accuracy": 1.0, **{f"accuracy@depth={d:g}": 1.0 for d in DEPTHS}}


def test_exact_match_needs_every_answer_token():
    task = NeedleInHaystack("number", 64, digits=4, test_examples=3)

    class LastDigitWrong(Oracle):
        def forward(self, x, labels=None):
            logits = super().forward(x)["logits"]
            last = x.shape[1] - 1
            logits[:, last] = logits[:, last].roll(1, dims=-1)
            return {"logits": logits}

    assert task.evaluate(LastDigitWrong(task.tokenizer))["accuracy"] == 0.0


def test_a_tiny_miras_lm_trains_on_it():
    task = NeedleInHaystack("passkey", 64, digits=3, test_examples=2)
    torch.manual_seed(0)
    model = MirasLM(task.vocab_size, d_model=16, n_layers=1, num_heads=1)
    metrics = fit(model, task, steps=4, batch_size=4, lr=1e-2, warmup=1, eval_every=2)
    assert metrics.height == 4 and all(math.isfinite(v) for v in metrics["loss"])
    assert {"eval_accuracy", "eval_accuracy@depth=0.5"} <= set(metrics.columns)
    frame = niah_accuracy(model, task, context_lengths=[64, 128], samples=2)
    assert frame.height == 2 * len(DEPTHS) and frame["accuracy"].is_between(0, 1).all()


# ---------------------------------------------------------------------------------------- config, CLI


def test_config_validates_and_the_cli_trains_and_evaluates(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"task\.haystack='hay'"):
        NIAHConfig(haystack="hay")
    with pytest.raises(ValueError, match=r"task\.context_length"):
        RunConfig(task={"name": "niah", "context_length": 8})
    out = tmp_path / "run"
    assert main(["train", "--task", "niah", "--haystack", "word", "--context-length", "48", "--d-model", "16",
                 "--layers", "1", "--heads", "1", "--steps", "2", "--batch-size", "2", "--test-examples", "2",
                 "--out", str(out), "--quiet"]) == 0
    task = json.loads((out / "run.json").read_text())["task"]
    assert task == {"haystack": "word", "context_length": 48, "digits": 4, "filler": None, "test_examples": 2,
                    "name": "niah"}
    assert main(["eval", str(out), "--lengths", "48", "96", "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.split("accuracy by context length and needle depth")[1].splitlines()]
    assert [row[:2] for row in rows if row and row[0] == "96"] == [["96", f"{d:.4f}"] for d in DEPTHS]
