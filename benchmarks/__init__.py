"""Correctness-gated microbenchmarks for SISA attention and the importance scan.

Every measurement is preceded by a parity check against the float64 naive path
(``sisa.naive``); a provider that fails it is reported as ``mismatch`` and never
timed. Layout, one concern per file:

- ``providers.py``: what is measured (the SISA backends, plain causal attention,
  the scan) and how inputs are made.
- ``gate.py``: the correctness gate (slice, float64 judge, dtype-scaled tolerance).
- ``timing.py``: wall-clock and memory measurement (CUDA or CPU).
- ``report.py``: printed table, markdown, plot.
- ``run.py``: the sweep and its command line (``python -m benchmarks.run``).
- ``ratio.py``: one SISA provider against plain SDPA with alternating (paired)
  calls, for ratio targets on a noisy machine (``python -m benchmarks.ratio``).
- ``gpu_check.sh``: the one prepared script for a lent GPU.
- ``retrieval.py``, ``retrieval_data.py``: SISA vs Transformer on needle retrieval.
- ``test_bench_cpu.py``: a pytest-benchmark suite for the CPU paths
  (``pytest benchmarks/ --benchmark-only``).
"""
