"""Fused SISA decoding: a few new queries attending over a long cache (split-K).

    score[i, j] = scale q_i.k_j + lam exp(min(g_qi - g_j, 0)) Cr_i.Br_j    (j <= T - s + i)
    out_i       = softmax_j(score[i, :]) @ v

The s queries are the last s of the T cached positions, so query i sees keys
j <= T - s + i and its own cumulative log-decay is g_qi = g[T - s + i]. The decay
is taken as a difference per element, never factorised over the sequence.

Flash-decoding: with only s (1..16) query rows there is too little work per
(batch, head) to fill a GPU, so the key axis is cut into splits as well.

1. ``_decode_split_kernel``, grid (b * h, s, splits): each program streams its
   split's keys in BLOCK_N tiles (one query row, so matrix-vector products by
   broadcasting and ``tl.sum``; no ``tl.dot``) with an online softmax in base 2,
   and writes the split's normalised output and log2-sum-exp to a workspace.
   A split that holds no key visible to its query writes lse = -1e30 (finite)
   and a zero output.
2. ``_decode_merge_kernel``, grid (b * h * s,): out = sum_k w_k out_k / sum_k w_k
   with w_k = exp2(lse_k - max lse), then cast to q's dtype.

Shapes: q (b, s, h, d); k, v (b, T, hk, d), hk divides h (query head i uses kv
head i // (h // hk)); C_rot (b, s, h, n); B_rot (b, T, h, n); g (b, T, h)
float32; lam (h,). Any strides (the cache is typically a view ``buf[:, :T]``).
Compute is float32 (float64 for float64 inputs); head dim and d_state are padded
to powers of two with masked loads.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .attention import interpreting, neg_part


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------

@triton.jit
def _decode_split_kernel(
    Q, K, V, CR, BR, G, LAM, PART_O, PART_L,
    sq_b, sq_s, sq_h, sq_d,
    sk_b, sk_t, sk_h, sk_d,
    sv_b, sv_t, sv_h, sv_d,
    sc_b, sc_s, sc_h, sc_n,
    sb_b, sb_t, sb_h, sb_n,
    sg_b, sg_t, sg_h,
    H, S, T, D, N, REP, CHUNK, NUM_SPLITS, qk_scale,
    D_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    qi = tl.program_id(1)
    split = tl.program_id(2)
    bi = (pid_bh // H).to(tl.int64)
    hi = (pid_bh % H).to(tl.int64)
    hk = hi // REP
    pos = T - S + qi                                   # this query's position in the cache
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, pos + 1)          # keys [start, stop) are visible

    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, N_PAD)
    d_ok = offs_d < D
    c_ok = offs_c < N

    q = tl.load(Q + bi * sq_b + qi.to(tl.int64) * sq_s + hi * sq_h + offs_d * sq_d,
                mask=d_ok, other=0.0).to(ACC)
    cr = tl.load(CR + bi * sc_b + qi.to(tl.int64) * sc_s + hi * sc_h + offs_c * sc_n,
                 mask=c_ok, other=0.0).to(ACC)
    g_base = G + bi * sg_b + hi * sg_h
    g_q = tl.load(g_base + pos.to(tl.int64) * sg_t).to(ACC)
    lam = tl.load(LAM + hi).to(ACC)
    # Both logit terms in base 2: softmax uses exp2.
    q = q * (qk_scale * 1.4426950408889634)
    cr = cr * (lam * 1.4426950408889634)

    k_base = K + bi * sk_b + hk * sk_h
    v_base = V + bi * sv_b + hk * sv_h
    b_base = BR + bi * sb_b + hi * sb_h

    m_i = tl.full([1], -1.0e30, dtype=ACC)
    l_i = tl.zeros([1], dtype=ACC)
    acc = tl.zeros([D_PAD], dtype=ACC)
    for n0 in range(start, stop, BLOCK_N):
        offs_j = n0 + offs_n
        ok = offs_j < stop
        cols = offs_j.to(tl.int64)
        k = tl.load(k_base + cols[:, None] * sk_t + offs_d[None, :] * sk_d,
                    mask=ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
        br = tl.load(b_base + cols[:, None] * sb_t + offs_c[None, :] * sb_n,
                     mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
        g_j = tl.load(g_base + cols * sg_t, mask=ok, other=0.0).to(ACC)
        # exp(min(g_q - g_j, 0)); exponent 0 where masked, so nothing is inf * 0.
        decay = tl.exp(tl.where(ok, neg_part(g_q - g_j), 0.0))
        s = tl.sum(q[None, :] * k, 1) + decay * tl.sum(cr[None, :] * br, 1)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))          # finite: m_i starts at -1e30
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)                         # 0 where masked
        v = tl.load(v_base + cols[:, None] * sv_t + offs_d[None, :] * sv_d,
                    mask=ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), -1.0e30)
    row = (pid_bh.to(tl.int64) * S + qi) * NUM_SPLITS + split
    tl.store(PART_O + row * D + offs_d, out, mask=d_ok)
    tl.store(PART_L + row + tl.arange(0, 1), lse)


@triton.jit
def _decode_merge_kernel(
    PART_O, PART_L, OUT,
    so_b, so_s, so_h, so_d,
    H, S, D, NUM_SPLITS,
    D_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)                # (b * h + head) * S + query
    qi = row % S
    hi = (row // S) % H
    bi = row // (S * H)
    offs_k = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, D_PAD)
    k_ok = offs_k < NUM_SPLITS
    d_ok = offs_d < D
    lse = tl.load(PART_L + row * NUM_SPLITS + offs_k, mask=k_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))                  # split 0 always holds key 0: max is finite
    parts = tl.load(PART_O + (row * NUM_SPLITS + offs_k[:, None]) * D + offs_d[None, :],
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(w[:, None] * parts, 0) / tl.sum(w, 0)
    tl.store(OUT + bi * so_b + qi * so_s + hi * so_h + offs_d * so_d,
             out.to(OUT.dtype.element_ty), mask=d_ok)


# ----------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------

def block_n_for(d_pad: int) -> int:
    """Keys per tile: (BLOCK_N x D_PAD) k and v tiles of at most 8K elements."""
    return max(16, min(64, 8192 // d_pad))


def num_splits_for(T: int, rows: int, block_n: int, device: torch.device) -> int:
    """How many key splits: enough programs for >= 2 waves on the GPU's SMs (at
    most one tile of keys per split and at most 256 splits); 1-4 in the interpreter."""
    tiles = triton.cdiv(T, block_n)
    if device.type != "cuda" or interpreting():
        return min(4, tiles)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(2 * sms, rows), 256))


def check_inputs(q, k, v, C_rot, B_rot, g, lam):
    b, s, h, d = q.shape
    T, hk = k.shape[1], k.shape[2]
    assert k.shape == v.shape == (b, T, hk, d) and hk > 0 and h % hk == 0, "k, v: (b, T, hk, d), hk divides h"
    assert C_rot.shape[:3] == (b, s, h) and B_rot.shape[:3] == (b, T, h), "C_rot (b, s, h, n), B_rot (b, T, h, n)"
    assert C_rot.shape[3] == B_rot.shape[3], "C_rot and B_rot: same d_state"
    assert g.shape == (b, T, h) and lam.shape == (h,), "g: (b, T, h), lam: (h,)"
    assert 1 <= s <= T, f"need 1 <= s <= T, got s={s}, T={T}"


def sisa_decode(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, *, num_splits=None, block_n=None):
    """SISA attention of the s newest queries over T cached keys (forward only).

    q (b, s, h, d); k, v (b, T, hk, d); C_rot (b, s, h, n); B_rot (b, T, h, n);
    g (b, T, h) float32 (cumulative log-decay of all T positions); lam (h,).
    Query i sits at position T - s + i. softmax_scale defaults to 1/sqrt(d).
    num_splits / block_n override the heuristics (tests). Returns (b, s, h, d)
    in q's dtype.
    """
    check_inputs(q, k, v, C_rot, B_rot, g, lam)
    b, s, h, d = q.shape
    T, hk = k.shape[1], k.shape[2]
    n = C_rot.shape[3]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    out = torch.empty((b, s, h, d), dtype=q.dtype, device=q.device)
    if b * h == 0 or d == 0:
        return out.zero_()
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    d_pad = triton.next_power_of_2(d)
    block_n = block_n or block_n_for(d_pad)
    splits = num_splits or num_splits_for(T, b * h * s, block_n, q.device)
    chunk = triton.cdiv(triton.cdiv(T, splits), block_n) * block_n
    splits = triton.cdiv(T, chunk)                     # no split past the end of the cache
    part_o = torch.empty((b * h * s * splits, d), dtype=wide, device=q.device)
    part_l = torch.empty((b * h * s * splits,), dtype=wide, device=q.device)
    lam = lam.to(wide).contiguous()                  # the kernel reads lam[h]
    acc = tl.float64 if wide == torch.float64 else tl.float32
    warps = 4 if d_pad >= 128 else 2
    _decode_split_kernel[(b * h, s, splits)](
        q, k, v, C_rot, B_rot, g, lam, part_o, part_l,
        *q.stride(), *k.stride(), *v.stride(), *C_rot.stride(), *B_rot.stride(), *g.stride(),
        h, s, T, d, n, h // hk, chunk, splits, float(scale),
        D_PAD=d_pad, N_PAD=triton.next_power_of_2(n), BLOCK_N=block_n, ACC=acc, num_warps=warps)
    _decode_merge_kernel[(b * h * s,)](
        part_o, part_l, out, *out.stride(), h, s, d, splits,
        D_PAD=d_pad, SPLITS_PAD=triton.next_power_of_2(splits), num_warps=warps)
    return out
