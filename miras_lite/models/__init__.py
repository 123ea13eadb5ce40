"""Models built from the Miras layers: `MirasLM` (a language model whose mixer is a test-time memory,
attention or both) and `ARMT` (the Associative Recurrent Memory Transformer, arXiv 2407.04841).

    from miras_lite.models import MirasLM, ARMT
    model = MirasLM(vocab_size=8192, mixer="hybrid", spec="gated_deltanet")
    out = model(inputs, labels=labels)          # out["loss"], logits at the labelled positions only
"""

from .armt import ARMT
from .dpfp import DPFPMemory, DPFPState, dpfp
from .miras_lm import MIXERS, MirasLM
from .spec_memory import SpecMemory

__all__ = ["ARMT", "DPFPMemory", "DPFPState", "MIXERS", "MirasLM", "SpecMemory", "dpfp"]
