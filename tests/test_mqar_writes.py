"""MQAR with every key written several times (`writes`, `write_mode`), checked example by example against a plain
reading of the context: the answer is the value written last ("update") or the value most writes carry
("outlier")."""

from collections import Counter

import pytest
import torch

from miras_lite.config import MQARConfig, RunConfig
from miras_lite.tasks import MQAR, mqar
from miras_lite.tasks.mqar import IGNORE


def _writes_of(inputs, d, writes):
    """{key: [values in the order written]} from the context of one example (a plain loop)."""
    written = {}
    for t in range(0, 2 * d * writes, 2):
        written.setdefault(int(inputs[t]), []).append(int(inputs[t + 1]))
    return written


@pytest.mark.parametrize("write_mode,d,writes", [("update", 1, 2), ("update", 3, 3), ("update", 4, 2),
                                                  ("outlier", 1, 3), ("outlier", 3, 3), ("outlier", 2, 5)])
def test_each_answer_is_what_the_writes_say(write_mode, d, writes):
    V, L, N = 64, 2 * d * writes + 2 * d + 6, 200
    inputs, labels = mqar(V, L, d, N, writes=writes, write_mode=write_mode, seed=5)
    for x, y in zip(inputs, labels):
        written = _writes_of(x, d, writes)
        assert len(written) == d and all(len(v) == writes for v in written.values())
        assert all(1 <= k < V // 2 for k in written) and all(V // 2 <= v < V for vs in written.values() for v in vs)
        queried = {int(x[t]): int(y[t]) for t in (y != IGNORE).nonzero().flatten()}
        assert set(queried) == set(written)  # every key queried once, after the context
        assert (y[:2 * d * writes] == IGNORE).all()
        for key, values in written.items():
            if write_mode == "update":
                assert queried[key] == values[-1]
            else:
                (majority, count), *rest = Counter(values).most_common()
                assert queried[key] == majority and count == writes - 1 and rest == [(rest[0][0], 1)]
        if write_mode == "update":
            every = [v for vs in written.values() for v in vs]
            assert len(set(every)) == len(every)  # every write carries a new value


def test_outliers_fall_on_every_round_and_later_rounds_are_reordered():
    d, writes = 4, 3
    inputs, _ = mqar(64, 40, d, 600, writes=writes, write_mode="outlier", seed=0)
    rounds, orders = Counter(), set()
    for x in inputs:
        written = _writes_of(x, d, writes)
        for values in written.values():
            odd = min(values, key=values.count)
            rounds[values.index(odd)] += 1
        orders.add(tuple(int(k) for k in x[2 * d:4 * d:2]))
        assert list(written) == [int(k) for k in x[0:2 * d:2]]  # round 0 in key order
    assert set(rounds) == {0, 1, 2} and min(rounds.values()) > 600 * d / 3 * 0.8
    assert len(orders) > 100


def test_one_write_is_plain_mqar():
    for mode in ("update", "outlier"):
        a, b = mqar(64, 32, 4, 50, seed=2), mqar(64, 32, 4, 50, seed=2, writes=1, write_mode=mode)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("kwargs,message", [
    ({"seq_len": 23, "num_kv_pairs": 3, "writes": 3}, "seq_len=23 must be an integer >= 24 = 2 × num_kv_pairs × writes"),
    ({"writes": 0}, "writes=0"),
    ({"write_mode": "replace"}, "write_mode='replace' is not known; allowed values: update, outlier"),
    ({"writes": 2, "write_mode": "outlier"}, "leaves no majority"),
    ({"vocab_size": 16, "seq_len": 64, "num_kv_pairs": 3, "writes": 3}, "need 9 distinct values"),
])
def test_bad_writes_are_refused(kwargs, message):
    args = {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 2, "num_examples": 1, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("×", "×")):
        mqar(**args)
    with pytest.raises(ValueError, match="task."):
        MQARConfig(**{k: v for k, v in args.items() if k != "num_examples"})


def test_the_config_and_the_sweeps_probe_use_the_variant(monkeypatch):
    config = MQARConfig(vocab_size=64, seq_len=40, num_kv_pairs=(2, 4), writes=3, write_mode="outlier",
                        train_examples=8, test_examples=4)
    task = config.build(seed=1)
    assert (task.writes, task.write_mode) == (3, "outlier")
    inputs, labels = task.batch(4, 0)
    for x, y in zip(inputs, labels):
        d = int((y != IGNORE).sum())
        written = _writes_of(x, d, 3)
        assert len(written) == d and all(len(v) == 3 for v in written.values())

    from miras_lite.sweeps import objective

    built = []
    real = objective.MQAR

    def spy(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "MQAR", spy)
    run = RunConfig(task=config, model={"d_model": 8, "n_layers": 1, "num_heads": 1}, fit={"steps": 1, "batch_size": 2})
    result = objective.train_trial(run)
    assert built and built[-1]["writes"] == 3 and built[-1]["write_mode"] == "outlier"
    assert [p["num_kv_pairs"] for p in result["accuracy_by_pairs"]] == [2, 4]
