"""Each preset's recommended settings (`Preset.recommended`), and the attention baseline's
(`presets.ATTENTION_RECOMMENDED`), train it on the playground's default MQAR.

Every one must pass a held-out accuracy of 0.5, 16 times chance, within its recommended steps; the run stops
as soon as it does. How fast each reaches 0.9 is measured by `python -m benchmarks.mqar playground`, not here.
"""

import pytest

import miras_lite as ml
from benchmarks.mqar import playground_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["attention", *ml.PRESETS])
def test_recommended_settings_learn_the_playground_task(name):
    run = playground_run(name)
    run = run.replace(fit=run.fit.replace(target=0.5), threads=1)
    _, metrics = run.train()
    assert metrics["eval_accuracy"].max() >= 0.5, metrics.filter(metrics["eval_accuracy"].is_not_null())
