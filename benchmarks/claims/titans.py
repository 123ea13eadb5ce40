"""Titans (Behrouz, Zhong & Mirrokni, arXiv 2501.00663): the ablation of the long-term memory's momentum and
weight decay."""

import miras_lite as ml

from .core import Beats, Claim, preset_run


def titans_ablation():
    steps = ml.named_preset("titans").recommended.steps
    variants = {"titans": {}, "titans w/o momentum": {"optimizer": "gd"},
                "titans w/o weight decay": {"retention": "none"},
                "titans w/o both": {"optimizer": "gd", "retention": "none"}}
    return Claim(
        name="titans_ablation", source="Titans (arXiv 2501.00663), ablation table",
        says="Removing the momentum of the surprise or the weight decay (forgetting) of the long-term memory "
             "makes the model worse on language modelling, reasoning and long context.",
        runs={name: preset_run("titans", spec, steps) for name, spec in variants.items()},
        expect=(Beats("titans", "titans w/o momentum"), Beats("titans", "titans w/o weight decay")))
