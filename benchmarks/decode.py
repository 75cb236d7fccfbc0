"""Decode-step latency: one new token attending over a cache of T tokens.

    python -m benchmarks.decode [--cache-lens 1,64,1024,...] [--out DIR]

Providers: ``sisa`` (``sisa.cache.cached_attention``: the Triton split-K kernel on
CUDA, stock SDPA over the cache's widened keys on a CPU) and ``plain`` (softmax
attention of the same query over the same cached k, v, no SSM term: SDPA). A step
is what a model does per token: append the token to a LayerCache holding T - 1,
then attend over all T. Each SISA measurement is first checked against the
float64 naive path; a mismatch is reported, not timed. Writes ``decode.json`` and
``decode.md`` in --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sisa.cache import LayerCache, cached_attention
from sisa.naive import naive_attention

from .run import DTYPES, machine_info
from .timing import measure_ms

CACHE_LENS = {"cpu": [1, 16, 128, 1024, 4096], "cuda": [1, 16, 128, 1024, 4096, 16384, 32768]}
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}   # relative to max |out|


def make_cache(b, T, h, hk, d, n, dtype, device, gen):
    """Inputs of a decode step: q (b, 1, h, d), cache k, v (b, T, hk, d), C_rot (b, 1, h, n),
    B_rot (b, T, h, n), g (b, T, h) float64 as the scan makes it (decay ~0.0067/token), lam (h,)."""
    r = lambda *s: torch.randn(*s, generator=gen, device=device).to(dtype)  # noqa: E731
    g = torch.cumsum(-0.0134 * torch.rand(b, T, h, generator=gen, device=device), dim=1).double()
    lam = 0.2 + torch.rand(h, generator=gen, device=device)
    return r(b, 1, h, d), r(b, T, hk, d), r(b, T, hk, d), r(b, 1, h, n), r(b, T, h, n), g, lam


def plain_decode(q, k, v):
    rep = q.shape[2] // k.shape[2]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       enable_gqa=rep > 1)
    return o.transpose(1, 2)


def _rewind(cache, length):
    """Drop the cache back to ``length`` tokens, so that every timed step appends the
    same token to the same cache (the widened rows too, when the CPU path keeps them)."""
    cache.length = length
    if cache.wide is not None:
        cache.wide["rows"] = min(cache.wide["rows"], length)


def decode_steps(q, k, v, C_rot, B_rot, g, lam):
    """(sisa_step, plain_step): each appends token T - 1 to a cache of T - 1 tokens and
    attends over all T (the plain one without the SSM term)."""
    T = k.shape[1]
    sisa_cache, plain_cache = LayerCache(), LayerCache()
    sisa_cache.append(k=k, v=v, B_rot=B_rot, g=g)
    plain_cache.append(k=k, v=v)
    new = dict(k=k[:, -1:], v=v[:, -1:], B_rot=B_rot[:, -1:], g=g[:, -1:])

    def sisa_step():
        _rewind(sisa_cache, T - 1)
        past = sisa_cache.append(**new)
        return cached_attention(q, past["k"], past["v"], C_rot, past["B_rot"], past["g"], lam, cache=sisa_cache)

    def plain_step():
        _rewind(plain_cache, T - 1)
        past = plain_cache.append(k=new["k"], v=new["v"])
        return plain_decode(q, past["k"], past["v"])
    return sisa_step, plain_step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache-lens", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=128)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scratch/decode"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    lens = args.cache_lens or CACHE_LENS[device.type]
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for i, T in enumerate(lens, 1):
        q, k, v, C_rot, B_rot, g, lam = make_cache(args.batch, T, args.heads, args.kv_heads, args.d_head,
                                                   args.d_state, dtype, device, gen)
        with torch.no_grad():
            sisa_step, plain_step = decode_steps(q, k, v, C_rot, B_rot, g, lam)
            out = sisa_step()
            ref = naive_attention(*(x.double() for x in (q[:1], k[:1], v[:1], C_rot[:1], B_rot[:1], g[:1], lam)))
            err = ((out[:1].double() - ref).abs().max() / ref.abs().max()).item()
            row = dict(cache_len=T, batch=args.batch, heads=args.heads, kv_heads=args.kv_heads, d_head=args.d_head,
                       d_state=args.d_state, dtype=str(dtype).removeprefix("torch."), gate_err=err)
            if err > TOL[dtype]:
                row.update(status="mismatch", sisa_ms=None, plain_ms=None, ratio=None)
            else:
                sisa_ms = measure_ms(sisa_step, device, 5.0 if device.type == "cuda" else 0.0,
                                     25.0 if device.type == "cuda" else 60.0)[0]
                plain_ms = measure_ms(plain_step, device, 5.0 if device.type == "cuda" else 0.0,
                                      25.0 if device.type == "cuda" else 60.0)[0]
                row.update(status="ok", sisa_ms=sisa_ms, plain_ms=plain_ms, ratio=sisa_ms / plain_ms)
        rows.append(row)
        print(f"[{i}/{len(lens)}] T={T}: {row['status']}"
              + (f" sisa {row['sisa_ms']:.4f} ms, plain {row['plain_ms']:.4f} ms, x{row['ratio']:.2f}"
                 if row["status"] == "ok" else f" (rel err {err:.1e})"), file=sys.stderr, flush=True)
    machine = machine_info(device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps({"machine": machine, "results": rows}, indent=1))
    head = "| cache T | sisa ms | plain ms | sisa / plain | gate rel err | status |\n|---|---|---|---|---|---|\n"
    fmt = lambda x, s: "-" if x is None else format(x, s)  # noqa: E731
    body = "".join(f"| {r['cache_len']} | {fmt(r['sisa_ms'], '.4f')} | {fmt(r['plain_ms'], '.4f')} | "
                   f"{fmt(r['ratio'], '.2f')} | {r['gate_err']:.1e} | {r['status']} |\n" for r in rows)
    title = (f"Decode step, b={args.batch} h={args.heads}/{args.kv_heads} d={args.d_head} n={args.d_state} "
             f"{row['dtype']} on {machine['gpu'] or machine['cpu']}\n\n")
    (args.out / "decode.md").write_text(title + head + body)
    print(title + head + body)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
