"""pytest-benchmark suite for the CPU paths: plain attention vs SISA's stock-SDPA
paths vs the naive judge, forward and forward+backward.

    pytest benchmarks/ --benchmark-only --threads 1            # run it (threads printed in the header)
    pytest benchmarks/ --benchmark-only --benchmark-compare    # against the last saved run

--threads (benchmarks/conftest.py) pins torch's threads, default torch's own as in
``benchmarks.run``; unpinned on a shared 2-core machine, sdpa at t=256 came out 8.8x
plain here against 1.4x on one thread.

Outside the default test run (pytest's testpaths is tests/). Every case first
passes the same float64 correctness gate as ``python -m benchmarks.run``.
"""
import pytest
import torch

from . import gate
from .providers import PROVIDERS, Shape, make_inputs, timed_callable

SHAPES = {
    "t256": Shape(batch=2, seqlen=256, heads=4, kv_heads=4, d_head=64, d_state=16, dtype=torch.float32),
    "t1024": Shape(batch=1, seqlen=1024, heads=4, kv_heads=4, d_head=64, d_state=16, dtype=torch.float32),
}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("name", ["plain", "sdpa", "sdpa-paper", "naive"])
def test_cpu(benchmark, name, shape_name, mode):
    provider, shape = PROVIDERS[name], SHAPES[shape_name]
    if shape.d_state is not None and provider.kind == "plain":
        shape = Shape(**{**shape.__dict__, "d_state": None})
    inputs = make_inputs(provider.kind, shape, "cpu", seed=shape.seqlen)
    verdict = gate.check(provider, inputs, mode)
    assert verdict.ok, f"{name} failed the correctness gate: {verdict}"
    benchmark.group = f"{shape_name} {mode}"
    benchmark.extra_info.update(provider=name, mode=mode, torch_threads=torch.get_num_threads(),
                                **{k: str(v) for k, v in shape.__dict__.items()})
    benchmark.pedantic(timed_callable(provider, inputs, mode), warmup_rounds=1, rounds=5, iterations=1)
