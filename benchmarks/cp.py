"""Context-parallel SISA attention across W processes: time, traffic and balance.

    python -m benchmarks.cp                          # W=2, gloo on CPU (NCCL on GPUs)
    python -m benchmarks.cp --world 4 --seqlen 4096 --modes fwd,fwd+bwd

Spawns W processes, shards one sequence zigzag and contiguous, and times
``sisa.distributed.context_parallel_attention`` on every rank (median of --reps,
a barrier before each), after checking the gathered output against one process's
``sisa_attention`` (a failed check is reported, never timed). Reports per-rank
milliseconds, the bytes each rank received in collectives (counted by wrapping
all_gather / all_reduce), the balance (slowest / fastest rank) and the ratio of the
slowest rank to one process doing the whole sequence. Writes cp.json and cp.md
under benchmarks/results/<machine>-<date>/ (or --out).

On one CPU machine the processes share its cores, so no speed-up is expected: the
figures show the balance of the layouts and the traffic, not a scaling result.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NAMES = ("q", "k", "v", "C", "B", "log_alpha", "theta", "lam")


def make_inputs(t, h, hk, d, n, dtype, device):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)                 # noqa: E731
    x = {"q": r(1, t, h, d), "k": r(1, t, hk, d), "v": r(1, t, hk, d), "C": r(1, t, h, n), "B": r(1, t, h, n),
         "log_alpha": -0.02 * torch.rand(1, t, h, generator=gen), "theta": 0.1 * r(1, t, h, n // 2),
         "lam": 0.3 + torch.rand(h, generator=gen)}
    return {k: v.to(device, torch.float32 if k in ("log_alpha", "lam") else dtype) for k, v in x.items()}


class Traffic:
    """Counts the bytes this rank receives in all_gather and all_reduce."""

    def __init__(self):
        self.bytes = 0
        self._gather, self._reduce = dist.all_gather, dist.all_reduce

    def __enter__(self):
        def gather(parts, x, *a, **k):
            self.bytes += x.numel() * x.element_size() * (len(parts) - 1)
            return self._gather(parts, x, *a, **k)

        def reduce(x, *a, **k):
            world = dist.get_world_size(k.get("group"))
            self.bytes += 2 * x.numel() * x.element_size() * (world - 1) // world   # ring all-reduce
            return self._reduce(x, *a, **k)
        dist.all_gather, dist.all_reduce = gather, reduce
        return self

    def __exit__(self, *exc):
        dist.all_gather, dist.all_reduce = self._gather, self._reduce


def worker(rank, world, path, args, queue):
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{path}", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if args.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    import sisa
    from sisa.distributed import context_parallel_attention, shard_sequence, unshard_sequence
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    x = make_inputs(args.seqlen, args.heads, args.kv_heads, args.d_head, args.d_state, dtype, device)
    rows = []
    for layout in ("zigzag", "contiguous"):
        shards = {k: v if k == "lam" else shard_sequence(v, layout=layout) for k, v in x.items()}
        with torch.no_grad():                                     # the correctness gate
            out = unshard_sequence(context_parallel_attention(*(shards[k] for k in NAMES), layout=layout),
                                   layout=layout)
            ref = sisa.sisa_attention(*(x[k].double() for k in NAMES), backend="sdpa")
            err = float((out.double() - ref).abs().max())
        ok = err <= (2e-4 if dtype == torch.float32 else 5e-2)
        for mode in args.modes:
            leaves = {k: v.detach().requires_grad_(mode == "fwd+bwd") for k, v in shards.items()}

            def step():
                out = context_parallel_attention(*(leaves[k] for k in NAMES), layout=layout)
                if mode == "fwd+bwd":
                    out.sum().backward()
            times, traffic = [], None
            if ok:
                step()                                            # warm-up
                with Traffic() as counter:
                    step()
                traffic = counter.bytes
                for _ in range(args.reps):
                    dist.barrier()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    step()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times.append(1e3 * (time.perf_counter() - start))
            rows.append(dict(rank=rank, layout=layout, mode=mode, ok=ok, err=err,
                             ms=statistics.median(times) if times else None, bytes_received=traffic))
    queue.put(rows)
    dist.destroy_process_group()


def single_process(args):
    """One process over the whole sequence, with the same threads as all ranks together."""
    import sisa
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    x = make_inputs(args.seqlen, args.heads, args.kv_heads, args.d_head, args.d_state, dtype, device)
    out = {}
    for mode in args.modes:
        leaves = {k: v.detach().requires_grad_(mode == "fwd+bwd") for k, v in x.items()}

        def step():
            o = sisa.sisa_attention(*(leaves[k] for k in NAMES), backend="sdpa")
            if mode == "fwd+bwd":
                o.sum().backward()
        step()
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - start))
        out[mode] = statistics.median(times)
    return out


def summarise(rows, single, args):
    table = []
    for layout in ("zigzag", "contiguous"):
        for mode in args.modes:
            mine = [r for r in rows if r["layout"] == layout and r["mode"] == mode]
            ok = all(r["ok"] for r in mine)
            ms = [r["ms"] for r in sorted(mine, key=lambda r: r["rank"])]
            entry = dict(layout=layout, mode=mode, ok=ok, max_err=max(r["err"] for r in mine),
                         per_rank_ms=ms, bytes_received_per_rank=[r["bytes_received"] for r in mine],
                         single_process_ms=single[mode])
            if ok:
                entry.update(balance=max(ms) / min(ms), ratio_to_single=max(ms) / single[mode])
            table.append(entry)
    return table


def markdown(table, meta):
    lines = [f"# Context-parallel SISA attention, W={meta['world']} ({meta['backend']})", "",
             f"t={meta['seqlen']}, {meta['heads']}/{meta['kv_heads']} heads, d={meta['d_head']}, "
             f"n={meta['d_state']}, {meta['dtype']}, {meta['reps']} reps (median); {meta['machine']}, "
             f"torch {meta['torch']}. Command: `{meta['command']}`", "",
             "| layout | mode | per-rank ms | balance (max/min) | slowest / one process | MB received per rank | check |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in table:
        ms = ", ".join(f"{m:.1f}" for m in e["per_rank_ms"]) if e["ok"] else "-"
        mb = ", ".join(f"{b / 1e6:.2f}" for b in e["bytes_received_per_rank"]) if e["ok"] else "-"
        lines.append(f"| {e['layout']} | {e['mode']} | {ms} | {e.get('balance', float('nan')):.2f} | "
                     f"{e.get('ratio_to_single', float('nan')):.2f} (one process: {e['single_process_ms']:.1f} ms) | "
                     f"{mb} | {'ok' if e['ok'] else 'FAILED err %.2g' % e['max_err']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cp", description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--modes", default="fwd,fwd+bwd", type=lambda s: s.split(","))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.seqlen % (2 * args.world):
        p.error(f"--seqlen must be divisible by 2 x --world = {2 * args.world}")
    if args.device == "cuda" and torch.cuda.device_count() < args.world:
        p.error(f"--world {args.world} needs that many GPUs, found {torch.cuda.device_count()}")
    from .run import _slug, machine_info
    machine = machine_info(torch.device(args.device))
    name = f"{_slug(machine['gpu'] or machine['cpu'])}-{machine['date']}"
    print(f"context parallel: {args.world} processes, t={args.seqlen}, {args.device}", file=sys.stderr)
    queue = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(args.world, os.path.join(tmp, "rendezvous"), args, queue), nprocs=args.world)
    rows = [r for _ in range(args.world) for r in queue.get()]
    single = single_process(args)
    table = summarise(rows, single, args)
    meta = dict(world=args.world, backend="nccl" if args.device == "cuda" else "gloo", seqlen=args.seqlen,
                heads=args.heads, kv_heads=args.kv_heads, d_head=args.d_head, d_state=args.d_state,
                dtype=args.dtype, reps=args.reps, machine=machine['gpu'] or machine['cpu'], torch=torch.__version__,
                command="python -m benchmarks.cp " + " ".join(argv if argv is not None else sys.argv[1:]))
    out = args.out or Path(__file__).parent / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "cp.json").write_text(json.dumps(dict(meta=meta, rows=table), indent=1))
    md = markdown(table, meta)
    (out / "cp.md").write_text(md)
    print(md)
    print(f"wrote {out / 'cp.json'} and {out / 'cp.md'}", file=sys.stderr)
    return 0 if all(e["ok"] for e in table) else 1


if __name__ == "__main__":
    sys.exit(main())
