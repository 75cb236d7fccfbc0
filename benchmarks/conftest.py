"""pytest options for the benchmark suite (``pytest benchmarks/ --benchmark-only``).

--threads N pins torch's CPU threads for the whole session (default: torch's own, as
``benchmarks.run``'s); the header line says how many ran. On a shared machine pass
--threads 1: other load wrecks multi-threaded timings (benchmarks/run.py's docstring).
"""
import torch


def pytest_addoption(parser):
    parser.addoption("--threads", type=int, default=None,
                     help="torch CPU threads for the benchmarks (default: torch's own)")


def pytest_configure(config):
    threads = config.getoption("--threads")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def pytest_report_header(config):
    how = "--threads" if config.getoption("--threads") is not None else "torch's default; pin with --threads"
    return f"torch threads: {torch.get_num_threads()} ({how})"
