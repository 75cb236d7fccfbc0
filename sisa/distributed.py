"""Context parallelism: exact SISA attention with the sequence sharded across ranks.

A sequence of t tokens is cut into chunks of equal length; each rank of a process
group holds some of them (its shard):

* ``layout="zigzag"``: 2W chunks, rank r holds chunks r and 2W-1-r (an early and a
  late one, so every rank does the same causal work);
* ``layout="contiguous"``: W chunks, rank r holds chunk r.

``context_parallel_attention`` takes this rank's shards of the eight inputs and
returns this rank's shard of exactly ``sisa_attention`` on the whole sequence,
differentiable in all eight inputs:

1. The scan composes across ranks: g and Phi of a chunk are its local cumulative
   sums plus the totals of all earlier chunks. Each rank sums its chunks, the
   (b, h) and (b, h, n/2) totals are all-gathered, and each chunk starts its scan
   from the exclusive prefix of the totals before it: exact whatever the decay.
2. The key side (k, v, B_rot, g) is all-gathered, as Llama 3 does for plain
   attention: one collective per tensor, simple to overlap with compute. Each local
   query chunk then attends to the keys before its end: through the fused kernel
   (whose queries may be the last s of t positions) on CUDA, else the exact chunked
   stock-SDPA path (or the naive one). The backward sums the key-side gradients back
   to their owners.

Memory: the all-gather holds the whole sequence's key side on every rank,
t * (2 hk d + h n + h) elements (k, v, B_rot, g), against t / W of each for the
shard itself. A ring (passing key blocks round the group while computing) keeps
only two blocks in flight and overlaps the transfer with compute; it pays off when
that key side does not fit a device, or when the gather cannot be hidden behind the
attention (short chunks, slow links). Not implemented here.

Packed documents (``cu_seqlens``, global, as for ``sisa_attention``): the decay
inputs (log_alpha, theta) are all-gathered instead of the totals, every rank scans
the whole sequence with restarts (an O(t h n) pass) and each local query piece
attends to its own document's keys.

Nothing here imports torch.distributed at ``import sisa`` time.
"""
from __future__ import annotations

import math
import struct

import torch

from ._checks import check_attention_inputs, check_softmax_scale
from .naive import G_DTYPE, rotate_pairs, scan_state, state_dtype
from . import backends
from .ops import attention_from_scan, sisa_attention, ssm_importance_scan
from .varlen import check_cu_seqlens

LAYOUTS = ("zigzag", "contiguous")


def _dist():
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sisa.distributed needs an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    return dist


def _world(group):
    dist = _dist()
    return dist.get_world_size(group), dist.get_rank(group)


def world_size(group=None) -> int:
    """The number of ranks in ``group`` (default: the world)."""
    return _world(group)[0]


def _layout_chunks(layout: str, world: int, rank: int) -> tuple[int, list[int]]:
    """(number of chunks, the global chunk ids this rank holds, in its order)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "zigzag":
        return 2 * world, [rank, 2 * world - 1 - rank]
    return world, [rank]


def shard_sequence(x: torch.Tensor, group=None, layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """This rank's shard of a full-length tensor (every rank passes the same x).
    x (..., t, ...) with t along ``dim`` divisible by the number of chunks (2W for
    zigzag, W for contiguous) -> (..., t / W, ...)."""
    world, rank = _world(group)
    n_chunks, mine = _layout_chunks(layout, world, rank)
    t = x.shape[dim]
    if t % n_chunks:
        raise ValueError(f"sequence length {t} (dim {dim} of x) must be divisible by {n_chunks} "
                         f"({'2 x ' if layout == 'zigzag' else ''}world size {world}) for layout {layout!r}; "
                         "pad it (for example with tokens whose loss is masked)")
    chunks = x.chunk(n_chunks, dim)
    return torch.cat([chunks[i] for i in mine], dim)


def shard_positions(t: int, group=None, layout: str = "zigzag", device=None) -> torch.Tensor:
    """Global positions (int64, (t / W,)) of this rank's tokens: the position ids to
    give RoPE."""
    return shard_sequence(torch.arange(t, device=device), group, layout, dim=0)


class _AllGather(torch.autograd.Function):
    """(W, *x.shape): every rank's x; the backward sums each rank's slice of the
    gradient over the group: a reduce-scatter on NCCL, an all-reduce on gloo."""

    @staticmethod
    def forward(ctx, x, group):
        dist = _dist()
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        dist = _dist()
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":       # each rank receives only its own slice
            mine = torch.empty_like(grad[0])
            dist.reduce_scatter_tensor(mine, grad, group=ctx.group)
            return mine, None
        dist.all_reduce(grad, group=ctx.group)            # gloo has no reduce-scatter
        return grad[dist.get_rank(ctx.group)], None


def all_gather(x: torch.Tensor, group=None) -> torch.Tensor:
    """Differentiable all-gather: (W, *x.shape)."""
    return _AllGather.apply(x, group)


def _global_order(parts: torch.Tensor, layout: str, world: int, dim: int = 1) -> torch.Tensor:
    """Gathered shards (W, *local) -> the whole sequence along ``dim`` in global order."""
    n_chunks = _layout_chunks(layout, world, 0)[0]
    pieces = [None] * n_chunks
    for r in range(world):
        ids = _layout_chunks(layout, world, r)[1]
        for slot, chunk in zip(ids, parts[r].chunk(len(ids), dim)):
            pieces[slot] = chunk
    return torch.cat(pieces, dim)


def unshard_sequence(x: torch.Tensor, group=None, layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """The full-length tensor from every rank's shard (the inverse of shard_sequence);
    differentiable."""
    world, _ = _world(group)
    return _global_order(all_gather(x, group), layout, world, dim)


def _agree(group, world, what: dict) -> None:
    """Raise the same ValueError on every rank when ranks disagree on ``what``
    (small integers); one tiny all-gather instead of a hang in a later collective."""
    dist = _dist()
    mine = torch.tensor(list(what.values()), dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        mine = mine.cuda()
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts).cpu()
    for i, name in enumerate(what):
        if not bool((table[:, i] == table[0, i]).all()):
            raise ValueError(f"context_parallel_attention: ranks disagree on {name}: "
                             f"{table[:, i].tolist()} (one value per rank)")


def _result_scalars(scale, lam, backend, cu_seqlens) -> dict:
    """What else changes the result and must be the same on every rank, as int64s for
    _agree: the softmax scale's float64 bits, the backend asked for (-1: not a known
    name; resolved after agreeing), and digests of lam's values and of cu_seqlens (one
    small host transfer each; Python's hash of floats and ints is the same in every
    process)."""
    names = ("auto",) + backends.BACKENDS
    return {"softmax_scale": struct.unpack("<q", struct.pack("<d", scale))[0],
            "backend": names.index(backend) if isinstance(backend, str) and backend in names else -1,
            "lam (a digest of its values)": hash(tuple(lam.detach().double().cpu().tolist())),
            "cu_seqlens (a digest, -1: none)": -1 if cu_seqlens is None else hash(tuple(cu_seqlens.tolist()))}


def context_parallel_attention(q, k, v, C, B, log_alpha, theta, lam, *, group=None, layout="zigzag",
                               softmax_scale=None, backend="auto", cu_seqlens=None, check_inputs=True):
    """This rank's shard of ``sisa_attention`` on the whole sharded sequence.

    Args: this rank's shards (as ``shard_sequence`` makes them, layout ``layout``):
        q (b, t/W, h, d); k, v (b, t/W, hk, d); C, B (b, t/W, h, n);
        log_alpha (b, t/W, h); theta (b, t/W, h, n/2); lam (h,) (the same on every rank).
        group: the process group (default: the world); W = its size.
        backend: "auto" (triton on CUDA, else sdpa), "triton", "sdpa" or "naive"
            for the local attention.
        cu_seqlens: optional int32 (n_seqs + 1,) of the WHOLE packed sequence (b = 1),
            the same on every rank.
    Returns: (b, t/W, h, d), this rank's shard of the output.
    A group of size 1 is the single-device op. Ranks that disagree on shapes, layout,
    dtype, softmax_scale, lam's values, the backend or cu_seqlens raise a ValueError on
    every rank (one small all-gather).
    """
    world, rank = _world(group)
    check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, check_values=check_inputs,
                           softmax_scale=softmax_scale)
    if world == 1:
        return sisa_attention(q, k, v, C, B, log_alpha, theta, lam, softmax_scale=softmax_scale,
                              backend=backend, cu_seqlens=cu_seqlens, check_inputs=False)
    n_chunks, mine = _layout_chunks(layout, world, rank)
    b, t_local, h, d = q.shape
    scale = check_softmax_scale(softmax_scale) or 1.0 / math.sqrt(d)
    if cu_seqlens is not None:                                    # its type and device, before reading it
        check_cu_seqlens(cu_seqlens, t_local * world, b, values=False, device=q.device)
    _agree(group, world, {"layout": LAYOUTS.index(layout), "local sequence length": t_local, "batch": b,
                          "heads": h, "kv heads": k.shape[2], "head_dim": d, "d_state": C.shape[-1],
                          "dtype": [torch.float16, torch.bfloat16, torch.float32, torch.float64].index(q.dtype),
                          **_result_scalars(scale, lam, backend, cu_seqlens)})
    if t_local % len(mine):
        raise ValueError(f"the local sequence length {t_local} must be divisible by {len(mine)} for layout "
                         f"{layout!r} (shards made by sisa.distributed.shard_sequence are)")
    c = t_local // len(mine)
    backend = backends.resolve(backend, q.device, "attention", q.dtype)
    if cu_seqlens is not None:
        return _packed(q, k, v, C, B, log_alpha, theta, lam, scale, group, layout, world, mine, c,
                       cu_seqlens, backend)
    sd = state_dtype(q.dtype)
    split = lambda x: x.split(c, dim=1)                                   # noqa: E731
    # 1. The scan: each chunk from the exclusive prefix of the earlier chunks' totals.
    totals_g = torch.stack([la.to(G_DTYPE).sum(1) for la in split(log_alpha)])  # (chunks, b, h) float64
    totals_p = torch.stack([th.to(sd).sum(1) for th in split(theta)])           # (chunks, b, h, n/2)
    g_before = _exclusive_prefix(all_gather(totals_g, group), layout, world)
    p_before = _exclusive_prefix(all_gather(totals_p, group), layout, world)
    scanned = [ssm_importance_scan(*parts, initial_state=(g_before[i], p_before[i]), check_inputs=False,
                                   backend="triton" if backend == "triton" and q.is_cuda else "naive")
               for i, parts in zip(mine, zip(split(C), split(B), split(log_alpha), split(theta)))]
    C_rot = torch.cat([s[0] for s in scanned], 1)
    B_rot = torch.cat([s[1] for s in scanned], 1)
    g = torch.cat([s[2] for s in scanned], 1)
    # 2. The key side of the whole sequence, in global order.
    k_all, v_all, b_all, g_all = (_global_order(all_gather(x, group), layout, world) for x in (k, v, B_rot, g))
    outs = []
    for slot, i in enumerate(mine):
        rows, end = slice(slot * c, (slot + 1) * c), (i + 1) * c
        outs.append(_attend(backend, q[:, rows], k_all[:, :end], v_all[:, :end], C_rot[:, rows],
                            b_all[:, :end], g_all[:, :end], lam, scale))
    return torch.cat(outs, 1)


def _exclusive_prefix(gathered: torch.Tensor, layout: str, world: int) -> list[torch.Tensor]:
    """Per-chunk totals gathered as (W, chunks per rank, ...) -> for every global chunk
    id, the sum of the totals of all chunks before it."""
    ordered = _global_order(gathered, layout, world, dim=0)                  # (n_chunks, ...)
    before = torch.cat((torch.zeros_like(ordered[:1]), ordered[:-1].cumsum(0)))
    return list(before)


def _attend(backend, q, k, v, C_rot, B_rot, g, lam, scale):
    """Queries that are the last q.shape[1] of k.shape[1] positions."""
    return attention_from_scan(q, k, v, C_rot, B_rot, g, lam, softmax_scale=scale, backend=backend)


def _packed(q, k, v, C, B, log_alpha, theta, lam, scale, group, layout, world, mine, c, cu_seqlens, backend):
    """Context parallelism over packed documents (see the module docstring)."""
    t = c * len(mine) * world
    segments = check_cu_seqlens(cu_seqlens, t, q.shape[0], device=q.device)
    sd = state_dtype(q.dtype)
    la_all = _global_order(all_gather(log_alpha, group), layout, world)
    th_all = _global_order(all_gather(theta, group), layout, world)
    pieces = [scan_state(la_all[:, a:b], th_all[:, a:b], sd) for a, b in segments]
    g_all = torch.cat([p[0] for p in pieces], 1)
    phi_all = torch.cat([p[1] for p in pieces], 1)
    local = torch.cat([torch.arange(i * c, (i + 1) * c) for i in mine]).to(q.device)
    phi = phi_all[:, local]
    C_rot, B_rot = rotate_pairs(C, phi).to(C.dtype), rotate_pairs(B, phi).to(B.dtype)
    k_all, v_all, b_all = (_global_order(all_gather(x, group), layout, world) for x in (k, v, B_rot))
    outs = []
    for slot, i in enumerate(mine):
        lo, hi = i * c, (i + 1) * c
        for a, b in segments:                              # each document's rows in this chunk
            r0, r1 = max(a, lo), min(b, hi)
            if r0 >= r1:
                continue
            rows = slice(slot * c + r0 - lo, slot * c + r1 - lo)
            outs.append(_attend(backend, q[:, rows], k_all[:, a:r1], v_all[:, a:r1], C_rot[:, rows],
                                b_all[:, a:r1], g_all[:, a:r1], lam, scale))
    return torch.cat(outs, 1)
