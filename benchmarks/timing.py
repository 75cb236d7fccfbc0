"""Timing and memory of one callable: median, p20 and p80 milliseconds.

CUDA: ``triton.testing.do_bench`` (L2 flushed between calls, warm-up inside it;
CUDA events when Triton is missing). CPU: ``time.perf_counter`` around each call
after the warm-up. The caller runs the callable once before either, so Triton's
compilation and autotuning never fall inside the timed region.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one call minus the
memory allocated before it (what the op adds on top of its live inputs, including
saved activations and gradients in fwd+bwd). On CPU there is no reliable per-call
figure for torch's allocator (tracemalloc does not see it, ru_maxrss only ever
grows), so it is reported as null.
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch

PEAK_MEMORY_METHOD = ("cuda: torch.cuda.max_memory_allocated during one call minus memory "
                      "allocated before it; cpu: null (not measurable per call)")


def _quantiles(samples):
    samples = sorted(samples)
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=10, method="inclusive")   # deciles
    return statistics.median(samples), q[1], q[7]


def _cuda_events(fn, warmup_ms, rep_ms):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end), 1e-3)
    for _ in range(max(1, int(warmup_ms / est))):
        fn()
    samples = []
    for _ in range(max(3, int(rep_ms / est))):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return _quantiles(samples)


def _cpu(fn, warmup_ms, rep_ms, min_reps=3, max_reps=200):
    t0 = time.perf_counter()
    fn()
    while (time.perf_counter() - t0) * 1e3 < warmup_ms:
        fn()
    samples = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while len(samples) < min_reps or (time.perf_counter() < t_end and len(samples) < max_reps):
        t1 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t1) * 1e3)
    return _quantiles(samples)


def measure_ms(fn, device, warmup_ms: float = 25.0, rep_ms: float = 100.0):
    """(median, p20, p80) milliseconds of ``fn()`` on ``device``."""
    if torch.device(device).type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            return _cuda_events(fn, warmup_ms, rep_ms)
        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return med, p20, p80
    return _cpu(fn, warmup_ms, rep_ms)


def peak_memory_mb(fn, device):
    """MiB the op allocates above what is live before it (CUDA), or None (CPU)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@contextlib.contextmanager
def pinned_threads(threads: int | None):
    """torch's CPU threads set to ``threads`` inside the block (None: left as they are)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
