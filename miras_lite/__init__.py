"""miras-lite: learn test-time-memorization sequence models by running them.

    import miras_lite as ml
    spec = ml.preset("gated_deltanet")
    o, state = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec)
"""

from .checkpoint import load, save
from .layers import AttentionLayer, MirasLayer
from .memories import mlp_initial_state
from .models import ARMT, MirasLM
from .scan import MemoryState, memory_scan, read_memory
from .spec import PRESETS, MemorySpec, preset
from .train import TrainingDiverged, fit

__all__ = [
    "ARMT", "AttentionLayer", "MemorySpec", "MemoryState", "MirasLM", "MirasLayer", "PRESETS", "TrainingDiverged",
    "fit", "load", "memory_scan", "mlp_initial_state", "preset", "read_memory", "save",
]
