"""What the marimo notebooks share beyond the library itself."""

import os
import sys


def quick_mode():
    """True when a notebook should run its expensive cells at once, at a small size: when it runs as a
    script (`python notebooks/NAME.py`) or with MIRAS_LITE_QUICK=1 (static reports, browser tests).
    Otherwise those cells wait for their `mo.ui.run_button`."""
    import marimo as mo

    if os.environ.get("MIRAS_LITE_QUICK") == "1":
        return True
    mode = mo.app_meta().mode
    if mode is None:  # in the setup cell marimo has not set the mode yet: a script's __main__ is the notebook
        return isinstance(getattr(sys.modules["__main__"], "app", None), mo.App)
    return mode == "script"


AXES = ("memory", "bias", "retention", "optimizer", "grad_at")


def axis_dropdowns(preset_name):
    """The spec a preset dropdown names ("custom": `MemorySpec()`) and one dropdown per axis (and the
    gradient point), each set to that spec: (base, memory, bias, retention, optimizer, grad_at)."""
    import marimo as mo

    from .presets import preset
    from .spec import BIASES, GRAD_POINTS, MEMORIES, OPTIMIZERS, RETENTIONS, MemorySpec

    base = MemorySpec() if preset_name == "custom" else preset(preset_name)
    options = (MEMORIES, BIASES, RETENTIONS, OPTIMIZERS, GRAD_POINTS)
    return (base, *(mo.ui.dropdown(options=list(values), value=getattr(base, axis), label=axis)
                    for axis, values in zip(AXES, options)))


def chosen_spec(base, *dropdowns):
    """`base` (keeping the preset's p, q, δ, ...) with the axes the dropdowns show, in `AXES` order:
    (spec, None), or (None, the reason) for a combination `MemorySpec` refuses."""
    try:
        return base.replace(**{axis: dropdown.value for axis, dropdown in zip(AXES, dropdowns)}), None
    except ValueError as error:
        return None, str(error)
