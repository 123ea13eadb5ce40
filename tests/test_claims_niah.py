"""The needle claim (`benchmarks.claims.niah`) reads its needles on the row's one thread: `run.train()` gives the
process its default back, and reading on two threads of a busy machine was ~100× slower."""

import torch

from benchmarks.claims import all_claims


def test_needles_are_read_on_the_runs_threads_and_the_default_comes_back(monkeypatch):
    from benchmarks.claims import niah

    run = all_claims(reduced_runs=True)["miras_niah"].runs["gated_deltanet"]
    assert run.threads == 1
    seen = []
    real = niah.niah_accuracy

    def spy(model, task, context_lengths, batch_size):
        seen.append(torch.get_num_threads())
        return real(model, task, context_lengths=context_lengths, batch_size=batch_size)

    monkeypatch.setattr(niah, "niah_accuracy", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = niah.needle_recall(run)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
    assert 0 <= result["recall"] <= 1
