"""Tasks: data generators and evaluations for test-time memories (nothing is downloaded).

    mqar        multi-query associative recall in the Zoology format; accuracy by pairs / by distance
    probes      memory probes without training: recall of (k, v) streams, capacity and forgetting curves
    babilong    BABILong-style qa1-qa3: bAbI facts hidden in filler, contexts streamed segment by segment
    niah        RULER-style single needle in a haystack (passkey / number / word); accuracy by length and depth
    lm          character- or word-level language modelling on a text file (default: data/corpus.txt)

Task objects (MQAR, BabiLong, NeedleInHaystack, LanguageModeling) share one protocol: .batch(batch_size, step) ->
(inputs, labels), deterministic in step, labels −100 where there is nothing to predict; .test_set();
.vocab_size; .evaluate(model) -> dict of floats.
"""

from .babilong import (BabiLong, BabiLongSample, GeneratedFiller, TextFiller, WordTokenizer, babilong_accuracy,
                       babilong_batch, babilong_sample)
from .lm import LanguageModeling
from .mqar import MQAR, accuracy_by_distance, accuracy_by_pairs, gap_distribution, mqar, predictions_at_labels
from .niah import NeedleInHaystack, NeedleSample, niah_accuracy
from .probes import KVStream, capacity_curve, forgetting_curve, kv_stream, probe_recall

__all__ = ["MQAR", "mqar", "gap_distribution", "accuracy_by_pairs", "accuracy_by_distance", "predictions_at_labels",
           "KVStream", "kv_stream", "probe_recall", "capacity_curve", "forgetting_curve",
           "WordTokenizer", "GeneratedFiller", "TextFiller", "BabiLongSample", "babilong_sample", "babilong_batch",
           "BabiLong", "babilong_accuracy", "NeedleInHaystack", "NeedleSample", "niah_accuracy", "LanguageModeling"]
