"""Paired timing of a SISA provider against plain causal SDPA on the same q, k, v.

    python -m benchmarks.ratio                    # sdpa vs plain: t=2048, 8 heads, d=64, n=16, fp32
    python -m benchmarks.ratio --provider triton --dtype bf16 --seqlen 8192 --out /tmp/ratio
    python -m benchmarks.ratio --threads 1        # pin torch's CPU threads (default: torch's own)

The sweep (``benchmarks.run``) times each provider in its own block, so a slow
spell of a shared machine lands on one side of a ratio. Here the two calls
alternate (plain, sisa, sisa, plain, ...) and each pair gives one ratio, so drift
cancels; every call also follows a call of the other kind, as inside a model.
Each round reports the median pair ratio and its interquartile range; several
rounds show how much the median itself moves between runs. Both modes of
``benchmarks.run`` are measured (fwd under no_grad; fwd+bwd with every input's
gradient), each after the same float64 correctness gate as the sweep.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from . import gate
from .providers import PROVIDERS, Shape, make_inputs, timed_callable
from .run import DTYPES, MODES, machine_info
from .timing import pinned_threads

NAIVE_MAX_T = 4096     # the naive provider's t x t scores: as far as a CPU's memory sensibly goes


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ratio", description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", default="sdpa", choices=[n for n, v in PROVIDERS.items() if v.kind == "sisa"])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma-separated: fwd, fwd+bwd")
    p.add_argument("--pairs", type=int, default=30, help="timed pairs per round")
    p.add_argument("--rounds", type=int, default=3, help="independent rounds (fresh warm-up each)")
    p.add_argument("--decay-bias", type=float, default=-5.0, help="as in benchmarks.run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's own, as benchmarks.run's; "
                   "1 keeps a shared machine's timings sane)")
    p.add_argument("--out", type=Path, help="also write ratio.json and ratio.md here")
    args = p.parse_args(argv)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in args.modes):
        p.error(f"--modes must be from {MODES}")
    if args.d_state % 2:
        p.error("--d-state must be even")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def _clock(device):
    """A function that times one call of fn in milliseconds on ``device``."""
    if device.type != "cuda":
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return timed
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed_cuda(fn):
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    return timed_cuda


def paired_round(sisa_fn, plain_fn, pairs, clock, warmup=2):
    """Alternate the two callables; one ratio sisa/plain per pair (the order flips
    each pair). Returns a dict of medians, quartiles and the per-pair ratios."""
    for _ in range(warmup):
        plain_fn(), sisa_fn()
    ratios, t_sisa, t_plain = [], [], []
    for i in range(pairs):
        if i % 2:
            s, p = clock(sisa_fn), clock(plain_fn)
        else:
            p, s = clock(plain_fn), clock(sisa_fn)
        t_sisa.append(s)
        t_plain.append(p)
        ratios.append(s / p)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return dict(ratio=statistics.median(ratios), ratio_q1=q1, ratio_q3=q3,
                sisa_ms=statistics.median(t_sisa), plain_ms=statistics.median(t_plain), ratios=ratios)


def measure(args):
    """Rows, one per (mode, round), after the correctness gate for each mode."""
    shape = Shape(args.batch, args.seqlen, args.heads, args.heads, args.d_head, args.d_state, DTYPES[args.dtype])
    reason = PROVIDERS[args.provider].unsupported(shape, args.device, NAIVE_MAX_T)
    if reason:
        print(f"{args.provider} not measured: {reason}", file=sys.stderr)
        return shape, [dict(provider=args.provider, mode=m, status="unsupported", reason=reason, gate_err=None)
                       for m in args.modes]
    x = make_inputs("sisa", shape, args.device, args.seed, args.decay_bias)
    plain_x = {k: x[k] for k in ("q", "k", "v")}
    clock, rows = _clock(args.device), []
    for mode in args.modes:
        sisa_fn = timed_callable(PROVIDERS[args.provider], x, mode)
        sisa_fn()    # compile and autotune at the full shape before the gate's smaller slice
        verdict = gate.check(PROVIDERS[args.provider], x, mode, seed=args.seed)
        base = dict(provider=args.provider, mode=mode, gate_err=verdict.err, gate_tol=verdict.tol)
        if not verdict.ok:
            rows.append(dict(base, status="mismatch", reason=f"{verdict.worst}: {verdict.err:.2e} > {verdict.tol:.0e}"))
            print(f"{mode}: gate failed ({rows[-1]['reason']}); not timed", file=sys.stderr, flush=True)
            continue
        plain_fn = timed_callable(PROVIDERS["plain"], plain_x, mode)
        for r in range(args.rounds):
            row = dict(base, status="ok", round=r + 1, **paired_round(sisa_fn, plain_fn, args.pairs, clock))
            rows.append(row)
            print(f"{mode} round {row['round']}/{args.rounds}: {args.provider} / plain = {row['ratio']:.3f} "
                  f"(IQR {row['ratio_q1']:.3f}-{row['ratio_q3']:.3f}; {row['sisa_ms']:.2f} vs "
                  f"{row['plain_ms']:.2f} ms)", file=sys.stderr, flush=True)
    return shape, rows


def to_markdown(machine, shape, args, rows) -> str:
    lines = [f"# {args.provider} vs plain causal SDPA, paired", "",
             f"{machine['gpu'] or machine['cpu']} (torch threads {machine['cpu_threads']}), torch {machine['torch']}, "
             f"{machine['time']}. b={shape.batch}, t={shape.seqlen}, h={shape.heads}, d={shape.d_head}, "
             f"n={shape.d_state}, {args.dtype}; {args.pairs} alternating pairs per round.", "",
             "| mode | round | ratio (median) | IQR | sisa ms | plain ms | gate err |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["status"] != "ok":
            err = "-" if r["gate_err"] is None else f"{r['gate_err']:.1e}"
            lines.append(f"| {r['mode']} | - | {r['status']}: {r['reason']} | - | - | - | {err} |")
            continue
        lines.append(f"| {r['mode']} | {r['round']} | {r['ratio']:.3f} | {r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} "
                     f"| {r['sisa_ms']:.2f} | {r['plain_ms']:.2f} | {r['gate_err']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    with pinned_threads(args.threads):
        return _main(args)


def _main(args) -> int:
    machine = machine_info(args.device)
    print(f"benchmarks.ratio: {args.provider} vs plain on {machine['gpu'] or machine['cpu']}, torch threads "
          f"{machine['cpu_threads']} ({'--threads' if args.threads else 'torch default'})",
          file=sys.stderr, flush=True)
    shape, rows = measure(args)
    md = to_markdown(machine, shape, args, rows)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        config = {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()}
        (args.out / "ratio.json").write_text(json.dumps({"machine": machine, "config": config, "results": rows},
                                                        indent=1))
        (args.out / "ratio.md").write_text(md)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
