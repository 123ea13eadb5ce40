"""miras-lite: learn test-time-memorization sequence models by running them.

    import miras_lite as ml
    spec = ml.preset("gated_deltanet")
    o, state = ml.memory_scan(q, k, v, eta=eta, alpha=alpha, spec=spec)
"""

from .layers import AttentionLayer, MirasLayer
from .memories import mlp_initial_state
from .scan import MemoryState, memory_scan, read_memory
from .spec import PRESETS, MemorySpec, preset

__all__ = ["AttentionLayer", "MirasLayer", "MemorySpec", "MemoryState", "PRESETS", "memory_scan", "mlp_initial_state", "preset", "read_memory"]
