"""Commands that measure speed and accuracy against baselines; not imported by the library.

    python -m benchmarks.scan       memory_scan forward+backward: token loop vs exact chunk-parallel vs mini-batch
    python -m benchmarks.mqar       MirasLM on MQAR: training speed per preset and time to a held-out accuracy
    python -m benchmarks.armt       ARMT on BABILong-style qa1: train, then accuracy vs context length to 1M tokens
    python -m benchmarks.kernels    the Triton kernels against torch and flash-linear-attention (GPU)
    python -m benchmarks.gpu_check  the whole GPU check in one command and one results file (kernels/README.md)
    python -m benchmarks.claims     the papers' claims at toy scale: every model of a claim, three seeds, a verdict

Each prints its table with the machine it ran on and writes its results as a parquet file (--out).
"""
