"""Packed variable-length batches: one call over ``cu_seqlens`` against a loop of calls.

    python -m benchmarks.varlen                         # CPU: sdpa provider, small
    python -m benchmarks.varlen --provider triton --total 65536 --max-len 2048   # a GPU

Draws sequence lengths (uniform in [1, --max-len], seed 0) until they fill --total
tokens, packs them into one (1, total) batch and times, per mode (fwd, fwd+bwd):

- ``packed``: one ``sisa_attention(..., cu_seqlens=...)`` call (for triton: one launch
  set whatever the number of sequences, no host sync with ``check_inputs=False``);
- ``loop``: one call per sequence on slices of the same tensors, as code without
  native varlen would do.

Before timing, the packed output is checked against the per-sequence loop of the
``naive`` backend (float32 maths) with a dtype-scaled tolerance; a mismatch is
reported and not timed. Writes varlen.json and varlen.md to --out and prints the
table; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import sisa
from .cp import make_inputs as cp_inputs
from .run import fresh_folder, machine_info
from .timing import measure_ms

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}   # of 1 + max |reference|


def draw_lengths(total: int, max_len: int, seed: int = 0) -> list[int]:
    """Uniform lengths in [1, max_len] until they sum to ``total`` (the last one cut)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < total:
        lengths.append(min(int(torch.randint(1, max_len + 1, (1,), generator=gen)), total - sum(lengths)))
    return lengths


def make_inputs(total, h, hk, d, n, dtype, device):
    """The eight inputs of sisa_attention for one packed (1, total) batch (as benchmarks.cp draws them)."""
    return list(cp_inputs(total, h, hk, d, n, dtype, device).values())


def per_sequence(fn, xs, cu):
    """fn on each sequence's slices, outputs concatenated along t."""
    outs = [fn([x[:, a:b] if x.dim() > 1 else x for x in xs]) for a, b in zip(cu[:-1], cu[1:])]
    return torch.cat(outs, 1)


def runner(provider, xs, cu, cu_t, mode, packed):
    """A zero-argument callable doing one timed step."""
    leaves = [x.detach().requires_grad_(mode == "fwd+bwd") for x in xs]

    def attend(ys, cu_seqlens=None):
        return sisa.sisa_attention(*ys, backend=provider, cu_seqlens=cu_seqlens, check_inputs=False)

    def step():
        out = attend(leaves, cu_t) if packed else per_sequence(attend, leaves, cu)
        if mode == "fwd+bwd":
            out.sum().backward()
        return out
    return step


def check(provider, xs, cu, cu_t):
    """(ok, relative error): the packed call against the per-sequence naive loop."""
    with torch.no_grad():
        got = sisa.sisa_attention(*xs, backend=provider, cu_seqlens=cu_t)
        ref = per_sequence(lambda ys: sisa.sisa_attention(*ys, backend="naive"), xs, cu)
    rel = ((got.float() - ref.float()).abs().max() / (1 + ref.float().abs().max())).item()
    return rel <= TOL[xs[0].dtype], rel


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    p.add_argument("--provider", default=None, help="sdpa, triton or naive (default: triton on CUDA, else sdpa)")
    p.add_argument("--total", type=int, default=None, help="packed tokens (default 32768 on CUDA, 2048 on CPU)")
    p.add_argument("--max-len", type=int, default=None, help="longest sequence (default 1024 on CUDA, 256 on CPU)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--rep-ms", type=float, default=None, help="timed repetitions fill this long")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                               else "cpu" if args.device == "auto" else args.device)
    gpu = args.device.type == "cuda"
    args.provider = args.provider or ("triton" if gpu else "sdpa")
    args.total = args.total or (32768 if gpu else 2048)
    args.max_len = args.max_len or (1024 if gpu else 256)
    args.kv_heads = args.kv_heads or args.heads
    args.dtype = DTYPES[args.dtype or ("bf16" if gpu else "fp32")]
    args.modes = args.modes.split(",")
    args.rep_ms = args.rep_ms or (100.0 if gpu else 300.0)
    if args.provider not in sisa.available_backends(args.device):
        p.error(f"--provider {args.provider} is not available on {args.device}: "
                f"{sisa.available_backends(args.device)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    machine = machine_info(args.device)
    lengths = draw_lengths(args.total, args.max_len)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=args.device)
    xs = make_inputs(args.total, args.heads, args.kv_heads, args.d_head, args.d_state, args.dtype, args.device)
    setup = (f"{args.provider} on {machine['gpu'] or machine['cpu']}, {len(lengths)} sequences of 1..{args.max_len} "
             f"tokens packed into {args.total}; heads {args.heads}/{args.kv_heads}, d {args.d_head}, "
             f"n {args.d_state}, {str(args.dtype)[6:]}")
    print(f"varlen: {setup}", file=sys.stderr)
    ok, rel = check(args.provider, xs, cu, cu_t)
    rows = []
    for mode in args.modes:
        row = dict(mode=mode, check_rel_err=rel, status="ok" if ok else "mismatch", packed_ms=None, loop_ms=None)
        if ok:
            for name, packed in (("packed", True), ("loop", False)):
                fn = runner(args.provider, xs, cu, cu_t, mode, packed)
                fn()                                   # compile / warm up outside the timing
                row[f"{name}_ms"] = measure_ms(fn, args.device, rep_ms=args.rep_ms)[0]
                print(f"  {mode} {name}: {row[f'{name}_ms']:.3f} ms", file=sys.stderr)
            row["speedup"] = row["loop_ms"] / row["packed_ms"]
        rows.append(row)

    head = "| mode | packed ms | loop ms | loop / packed | check (rel. err) |\n|---|---|---|---|---|\n"
    fmt = lambda v, f: "-" if v is None else format(v, f)                       # noqa: E731
    body = "".join(f"| {r['mode']} | {fmt(r['packed_ms'], '.3f')} | {fmt(r['loop_ms'], '.3f')} | "
                   f"{fmt(r.get('speedup'), '.2f')} | {r['status']} ({r['check_rel_err']:.2e}) |\n" for r in rows)
    table = f"Packed varlen vs a per-sequence loop: {setup}\n\n{head}{body}"
    print(table)
    out = args.out or fresh_folder(Path("benchmarks/results/scratch") / f"varlen-{machine['date']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "varlen.json").write_text(json.dumps(dict(machine=machine, setup=setup, lengths=lengths, results=rows),
                                                indent=1))
    (out / "varlen.md").write_text(table)
    print(f"wrote {out}/varlen.json and varlen.md", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
