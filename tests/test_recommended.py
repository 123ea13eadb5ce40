"""Each preset's recommended settings (`Preset.recommended`) train it on the playground's default MQAR.

The presets whose settings reach a held-out accuracy of 0.9 there in every run seen (`benchmarks/mqar.py
playground` measures the time) must pass 0.5, 16 times chance, within their recommended steps; the run stops
as soon as they do. moneta reached 0.9 in some runs and not in others, yaad and memora not yet (the README
gives how far they get): for them the test asserts what holds, that training with their settings stays
finite and lowers the loss.
"""

import pytest

import miras_lite as ml
from benchmarks.mqar import playground_run

REACH_0_9 = [name for name in ml.PRESETS if name not in ("moneta", "yaad", "memora")]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", REACH_0_9)
def test_recommended_settings_learn_the_playground_task(name):
    run = playground_run(name)
    run = run.replace(fit=run.fit.replace(target=0.5), threads=1)
    _, metrics = run.train()
    assert metrics["eval_accuracy"].max() >= 0.5, metrics.filter(metrics["eval_accuracy"].is_not_null())


@pytest.mark.parametrize("name", ["moneta", "yaad", "memora"])
def test_the_other_presets_train_without_diverging(name):
    run = playground_run(name)
    run = run.replace(fit=run.fit.replace(steps=60, eval_every=0), threads=1)
    _, metrics = run.train()
    assert metrics["loss"].is_finite().all()
    assert metrics["loss"][-10:].mean() < metrics["loss"][:10].mean()
