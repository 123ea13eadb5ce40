"""miras-lite: learn test-time-memorization sequence models by running them.

    import miras_lite as ml
    spec = ml.preset("gated_deltanet")
    o, state = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec)
"""

from .checkpoint import CheckpointError, load, save
from .layers import AttentionLayer, MirasLayer
from .memory import mlp_initial_state
from .models import ARMT, MirasLM
from .presets import PRESETS, Preset, named_preset, preset
from .scan import MemoryState, memory_scan, read_memory
from .spec import MemorySpec
from .train import TrainingDiverged, fit

__all__ = [
    "ARMT", "AttentionLayer", "CheckpointError", "MemorySpec", "MemoryState", "MirasLM", "MirasLayer", "PRESETS", "Preset",
    "TrainingDiverged", "fit", "load", "memory_scan", "mlp_initial_state", "named_preset", "preset", "read_memory",
    "save",
]
