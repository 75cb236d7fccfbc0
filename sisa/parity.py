"""``python -m sisa.parity`` (``sisa-parity``): trust an install in a minute.

Runs every backend available on the device against the float64 naive path over a
grid of shapes, dtypes and decay strengths (forward and all eight gradients),
prints a table of errors with pass/fail, and exits non-zero on any failure.
A default backend that cannot run on the device is skipped with a line saying why;
one asked for with --backends is an error (exit 2), as is an unknown name, and so is
a selection that leaves nothing to check.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .backends import BACKENDS, triton_unavailable_reason
from .ops import sisa_attention
from .testing import Case, compare

GRID = [
    Case(2, 1, 2, 2, 16, 2),
    Case(2, 33, 4, 2, 40, 16),
    Case(1, 77, 4, 1, 64, 8),
    Case(1, 130, 2, 2, 96, 64),
    Case(1, 200, 2, 1, 32, 16, decay=0.7),       # 140 nats: the paper's clamp engages
]
LONG = Case(1, 2048, 2, 2, 64, 16, decay=0.7)     # ~1400 nats of decay: forward only
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def unavailable_reason(backend: str, device) -> str | None:
    """None when ``backend`` runs on ``device``, else why not (naive and sdpa run anywhere)."""
    return triton_unavailable_reason(device) if backend == "triton" else None


def _backends(p: argparse.ArgumentParser, requested, device) -> list[str] | None:
    """The backends to run: the requested ones (None if one cannot run, after saying
    why on stderr), or by default every backend that runs (a line per skipped one)."""
    unknown = [b for b in requested or () if b not in BACKENDS]
    if unknown:
        p.error(f"--backends: unknown backend(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(BACKENDS)}")
    if requested:
        requested = list(dict.fromkeys(requested))        # each once, in the order given
        blocked = {b: why for b in requested if (why := unavailable_reason(b, device)) is not None}
        for b, why in blocked.items():
            print(f"sisa-parity: backend {b!r} cannot run on {device}: {why}", file=sys.stderr)
        return None if blocked else requested
    skipped = {b: why for b in BACKENDS if (why := unavailable_reason(b, device)) is not None}
    for b, why in skipped.items():
        print(f"skipping backend {b!r} on {device}: {why}")
    return [b for b in BACKENDS if b not in skipped]


def _device(p: argparse.ArgumentParser, name: str) -> torch.device:
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except Exception as exc:   # an unknown name, or a device type this build or machine lacks
        p.error(f"--device {name!r} is not usable here: {exc}")
    return device


def main(argv=None) -> int:
    """Run the grid; returns 0 if every row passes, 1 on a failure, 2 when a backend
    asked for cannot run on the device (argparse exits 2 on bad arguments)."""
    p = argparse.ArgumentParser(prog="sisa-parity", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", nargs="*", metavar="BACKEND",
                   help=f"any of {', '.join(BACKENDS)} (default: every one that runs on the device)")
    p.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--no-long", action="store_true", help=f"skip the long case ({LONG})")
    args = p.parse_args(argv)
    args.device = str(_device(p, args.device))
    backends = _backends(p, args.backends, args.device)
    if backends is None:
        return 2
    print(f"sisa parity on {args.device}: backends {backends}; torch {torch.__version__}")
    failures, start = 0, time.perf_counter()
    jobs = [(bk, dt, case, True) for bk in backends for dt in args.dtypes for case in GRID
            if not (dt == "float64" and bk in ("naive", "triton"))]  # the judge itself; kernels are 16/32-bit
    if not args.no_long:
        interpreted = torch.device(args.device).type == "cpu"  # Triton on a CPU: minutes per call
        jobs += [(bk, dt, LONG, False) for bk in backends if bk != "naive" for dt in args.dtypes
                 if not (bk == "triton" and (dt == "float64" or interpreted))]
        if interpreted and "triton" in backends:
            print(f"note: the long case ({LONG}) skips triton under the CPU interpreter (too slow)")
    if not jobs:      # a run that checks nothing must not pass
        p.error(f"nothing to check: backends {backends} with dtypes {args.dtypes} leave no case (naive and "
                "triton skip float64: naive in float64 is the judge itself, the kernels are 16/32-bit); "
                "add a dtype or a backend")
    header = f"{'backend':8} {'dtype':9} {'case':38} {'fwd err':>9} {'fwd tol':>9} {'worst grad (err/tol)':>24}  result"
    print(header)
    print("-" * len(header))
    for bk, dt, case, grads in jobs:
        fn = lambda *a, bk=bk: sisa_attention(*a, backend=bk)  # noqa: E731
        try:
            r = compare(fn, case, DTYPES[dt], args.device, grads=grads)
            worst = r.worst_grad
            wg = f"{worst[0]} {worst[1]:.2f}" if worst else "(forward only)"
            ok = r.ok
            line = f"{bk:8} {dt:9} {str(case):38} {r.fwd_err:9.2e} {r.fwd_tol:9.2e} {wg:>24}  {'ok' if ok else 'FAIL'}"
        except Exception as exc:  # a crash is a failure, reported in the table
            ok, line = False, f"{bk:8} {dt:9} {str(case):38} ERROR {type(exc).__name__}: {exc}"
        failures += not ok
        print(line, flush=True)
    print(f"{len(jobs) - failures} passed, {failures} failed in {time.perf_counter() - start:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
