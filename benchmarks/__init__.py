"""Correctness-gated microbenchmarks for SISA attention and the importance scan.

Every measurement is preceded by a parity check against the float64 naive path
(``sisa.naive``); a provider that fails it is reported as ``mismatch`` and never
timed. Layout, one concern per file:

- ``providers.py``: what is measured (the SISA backends, plain causal attention by
  SDPA, flash-attn, FlexAttention and fla's forgetting attention, the scan) and how
  inputs are made; its docstring says how to add a provider.
- ``gate.py``: the correctness gate (slice, float64 judge, dtype-scaled tolerance).
- ``timing.py``: wall-clock and memory measurement (CUDA or CPU).
- ``report.py``: printed table, markdown, plot.
- ``run.py``: the sweep and its command line (``python -m benchmarks.run``).
- ``ratio.py``: one SISA provider against plain SDPA with alternating (paired)
  calls, for ratio targets on a noisy machine (``python -m benchmarks.ratio``).
- ``decode.py``: decode-step latency over cache lengths.
- ``varlen.py``: one packed (cu_seqlens) call against a per-sequence loop.
- ``cp.py``: context-parallel attention across spawned processes.
- ``model.py`` (command), ``model_forms.py``, ``model_gate.py``, ``model_report.py``:
  whole-model training, prefill and decode throughput and memory of SISA, the
  parameter-matched Transformer and the paper's form, alternating rounds after a
  float64 gate (``python -m benchmarks.model``); the README's table is generated
  from ``results/model_cpu/model.json``.
- ``static/``: the static resource report of every kernel config, per target GPU
  architecture and dtype, compiled without a GPU (``python -m benchmarks.static``).
- ``gpu_check.sh``: the one prepared script for a lent GPU.
- ``retrieval.py`` (command), ``retrieval_train.py``, ``retrieval_report.py``,
  ``retrieval_data.py``: SISA vs Transformer on multi-query associative recall.
- ``needle.py``, ``needle_data.py``: the paper's zero-shot needle test on byte-level
  models pretrained on a local corpus.
- ``lm_eval_smoke.py``, ``lm_eval_tasks/``: lm-eval on a saved model, local tasks.
- ``test_bench_cpu.py``, ``conftest.py``: a pytest-benchmark suite for the CPU paths
  (``pytest benchmarks/ --benchmark-only --threads 1``).
"""
