"""Fused SISA decoding: a few new queries attending over a long cache (split-K).

    score[i, j] = scale q_i.k_j + lam exp(min(g_qi - g_j, 0)) Cr_i.Br_j    (j <= L - s + i)
    out_i       = softmax_j(score[i, :]) @ v

The s queries are the last s of the L live cache positions (L = T, the cache's
length, unless ``lengths`` gives each batch row its own), so query i sees keys
j <= L - s + i and its own cumulative log-decay is g_qi = g[L - s + i]. The decay
is taken as a difference per element, never factorised over the sequence, and
in float64 from the float64 g (then rounded to float32): exact to float32 at any
|g| (docs/design.md section 5).

Flash-decoding: with only s (1..16) query rows there is too little work per
(batch, head) to fill a GPU, so the key axis is cut into splits as well.

1. ``_decode_split_kernel``, grid (b * hk, row blocks, splits): one program serves
   a kv head's whole query group: its REP = h / hk query heads times the s query
   rows form the M dimension of one tile (BLOCK_M >= 16 rows, head-major), so each
   k, v tile is read once per group and both products are ``tl.dot``s. The SSM
   term is per query head (B_rot has h heads): one small dot per head of the group
   (REP is a constexpr, unrolled), each row keeping its own head's. The key loop
   is software-pipelined (num_stages). The live length L is read from device
   memory, so one captured CUDA graph replays across decode steps (``lengths``).
   Online softmax in base 2; the split's normalised output and log2-sum-exp go to
   a workspace; a row with no visible key in the split writes lse = -1e30 (finite)
   and a zero output.
2. ``_decode_merge_kernel``, grid (b * h * s,): out = sum_k w_k out_k / sum_k w_k
   with w_k = exp2(lse_k - max lse), BLOCK_S splits' outputs at a time, then cast
   to q's dtype.

Shapes: q (b, s, h, d); k, v (b, T, hk, d), hk divides h (query head i uses kv
head i // (h // hk)); C_rot (b, s, h, n); B_rot (b, T, h, n); g (b, T, h)
float64 (float32 works, with the precision it has); lam (h,); lengths (b,) int32 or None; key_mask (b, T) bool or None (pads of
left-padded batches: never keys). Any strides (the cache is
typically a view ``buf[:, :T]``). float16, bfloat16 or float32 inputs (float64
decoding runs the exact reference paths); products accumulate in float32; head dim
and d_state are padded to powers of two (>= 16).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import configs
from .attention import interpreting, neg_part, padded, tile_dot, upcast_dot


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------

@triton.jit
def _decode_split_kernel(
    Q, K, V, CR, BR, G, LAM, LENS, KEYS, PART_O, PART_L,
    sq_b, sq_s, sq_h, sq_d,
    sk_b, sk_t, sk_h, sk_d,
    sv_b, sv_t, sv_h, sv_d,
    sc_b, sc_s, sc_h, sc_n,
    sb_b, sb_t, sb_h, sb_n,
    sg_b, sg_t, sg_h,
    sm_b, sm_t,
    H, S, D, N, CHUNK, NUM_SPLITS, qk_scale,
    REP: tl.constexpr, BLOCK_M: tl.constexpr, D_PAD: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
):
    pid_bk = tl.program_id(0)
    split = tl.program_id(2)
    HK = H // REP
    bi = (pid_bk // HK).to(tl.int64)
    hk = pid_bk % HK
    L = tl.load(LENS + bi)                             # live cache length of this batch row
    r = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < REP * S
    hh = r // S                                        # query head within the group
    h_lo = tl.program_id(1) * BLOCK_M // S             # the block's first and last heads
    h_hi = tl.minimum((tl.program_id(1) * BLOCK_M + BLOCK_M - 1) // S, REP - 1)
    qi = r % S
    head = (hk * REP + hh).to(tl.int64)
    pos = L - S + qi                                   # each row's position in the cache
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, L)                # keys [start, stop), row-masked by pos

    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, N_PAD)
    d_ok = offs_d < D
    c_ok = offs_c < N
    q_rows = bi * sq_b + qi.to(tl.int64) * sq_s + head * sq_h
    q = tl.load(Q + q_rows[:, None] + offs_d[None, :] * sq_d, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    c_rows = bi * sc_b + qi.to(tl.int64) * sc_s + head * sc_h
    cr = tl.load(CR + c_rows[:, None] + offs_c[None, :] * sc_n, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
    g_rows = G + bi * sg_b + head * sg_h                # (BLOCK_M,) pointers: each row's head
    g_q = tl.load(g_rows + pos.to(tl.int64) * sg_t, mask=row_ok, other=0.0)      # g's dtype (float64)
    # Both logit terms in base 2: softmax uses exp2.
    c_scale = qk_scale * 1.4426950408889634
    s_scale = tl.load(LAM + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634

    k_base = K + bi * sk_b + hk.to(tl.int64) * sk_h
    v_base = V + bi * sv_b + hk.to(tl.int64) * sv_h
    b_base = BR + bi * sb_b + (hk * REP).to(tl.int64) * sb_h

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < stop
        cols = cols.to(tl.int64)
        k = tl.load(k_base + cols[:, None] * sk_t + offs_d[None, :] * sk_d,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        x = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for j in tl.static_range(REP):                 # the SSM term of each head of the block
            if (j >= h_lo) & (j <= h_hi):
                br = tl.load(b_base + j * sb_h + cols[:, None] * sb_t + offs_c[None, :] * sb_n,
                             mask=col_ok[:, None] & c_ok[None, :], other=0.0)
                x = tl.where((hh == j)[:, None], tile_dot(cr, tl.trans(br), UPCAST), x)
        g_j = tl.load(g_rows[:, None] + cols[None, :] * sg_t, mask=row_ok[:, None] & col_ok[None, :],
                      other=0.0)
        seen = row_ok[:, None] & col_ok[None, :] & (cols[None, :] <= pos[:, None])
        if HAS_KEY_MASK:                               # pads are never keys (a query still sees itself)
            real = tl.load(KEYS + bi * sm_b + cols * sm_t, mask=col_ok, other=0) != 0
            seen &= real[None, :] | (cols[None, :] == pos[:, None])
        # exp(min(g_q - g_j, 0)); exponent 0 where unseen, so nothing is inf * 0. The
        # difference is taken in g's dtype, then rounded to float32.
        decay = tl.exp(tl.where(seen, neg_part((g_q[:, None] - g_j).to(tl.float32)), 0.0))
        s = tile_dot(q, tl.trans(k), UPCAST) * c_scale + decay * x * s_scale[:, None]
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with no key yet: no -inf - -inf
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])                # 0 where unseen
        v = tl.load(v_base + cols[:, None] * sv_t + offs_d[None, :] * sv_d,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tile_dot(p.to(v.dtype), v, UPCAST)
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), -1.0e30)
    part = ((bi * H + head) * S + qi) * NUM_SPLITS + split
    tl.store(PART_O + part[:, None] * D + offs_d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(PART_L + part, lse, mask=row_ok)


@triton.jit
def _decode_merge_kernel(
    PART_O, PART_L, OUT,
    so_b, so_s, so_h, so_d,
    H, S, D, NUM_SPLITS,
    D_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)                # (b * h + head) * S + query
    qi = row % S
    hi = (row // S) % H
    bi = row // (S * H)
    offs_k = tl.arange(0, SPLITS_PAD)
    lse = tl.load(PART_L + row * NUM_SPLITS + offs_k, mask=offs_k < NUM_SPLITS, other=float("-inf"))
    m = tl.max(lse, 0)                                 # split 0 always holds key 0: finite
    den = tl.sum(tl.exp2(lse - m), 0)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < D
    acc = tl.zeros([D_PAD], dtype=PART_O.dtype.element_ty)
    for k0 in range(0, NUM_SPLITS, BLOCK_S):           # BLOCK_S splits' outputs at a time
        ks = k0 + offs_s
        k_ok = ks < NUM_SPLITS
        w = tl.exp2(tl.load(PART_L + row * NUM_SPLITS + ks, mask=k_ok, other=float("-inf")) - m)
        parts = tl.load(PART_O + (row * NUM_SPLITS + ks[:, None]) * D + offs_d[None, :],
                        mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(w[:, None] * parts, 0)
    tl.store(OUT + bi * so_b + qi * so_s + hi * so_h + offs_d * so_d,
             (acc / den).to(OUT.dtype.element_ty), mask=d_ok)


# ----------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------

def block_n_for(d_pad: int, n_pad: int, elements: int = 12288) -> int:
    """Keys per tile: k, v and B_rot tiles of together about ``elements`` elements
    (the family table's entry), 16..64 rows."""
    return max(16, min(64, 1 << (elements // (2 * d_pad + n_pad)).bit_length() - 1))


def block_m_for(rows: int, most: int = 32) -> int:
    """Query rows per program (a kv head's group heads x new queries): 16..``most``
    (the family table's entry)."""
    return max(16, min(most, triton.next_power_of_2(rows)))


def num_splits_for(T: int, programs: int, block_n: int, device: torch.device) -> int:
    """How many key splits: enough programs for >= 2 waves on the GPU's SMs (at
    most one tile of keys per split and at most 256 splits); 1-4 in the interpreter.
    Depends on the cache's capacity T, never on the live lengths."""
    tiles = triton.cdiv(T, block_n)
    if device.type != "cuda" or interpreting():
        return min(4, tiles)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(2 * sms, programs), 256))


def check_inputs(q, k, v, C_rot, B_rot, g, lam, lengths, key_mask):
    b, s, h, d = q.shape
    T, hk = k.shape[1], k.shape[2]
    assert k.shape == v.shape == (b, T, hk, d) and hk > 0 and h % hk == 0, "k, v: (b, T, hk, d), hk divides h"
    assert C_rot.shape[:3] == (b, s, h) and B_rot.shape[:3] == (b, T, h), "C_rot (b, s, h, n), B_rot (b, T, h, n)"
    assert C_rot.shape[3] == B_rot.shape[3], "C_rot and B_rot: same d_state"
    assert g.shape == (b, T, h) and lam.shape == (h,), "g: (b, T, h), lam: (h,)"
    assert 1 <= s <= T, f"need 1 <= s <= T, got s={s}, T={T}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"sisa_decode takes float16, bfloat16 or float32 inputs, got {q.dtype} (float64 "
                        "decoding runs the exact reference paths)")
    if key_mask is not None:
        assert key_mask.shape == (b, T) and key_mask.dtype == torch.bool, "key_mask: (b, T) bool"
    if lengths is not None:
        assert lengths.shape == (b,) and lengths.dtype == torch.int32 and lengths.device == q.device, \
            "lengths: (b,) int32 on q's device"


def sisa_decode(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, *, lengths=None, check_lengths=True,
                key_mask=None, num_splits=None, block_n=None, num_stages=2):
    """SISA attention of the s newest queries over a cache (forward only).

    q (b, s, h, d); k, v (b, T, hk, d); C_rot (b, s, h, n); B_rot (b, T, h, n);
    g (b, T, h) float64 (cumulative log-decay of all T positions); lam (h,).
    lengths: None (every batch row's cache holds T live positions) or a (b,) int32
    device tensor of live lengths s <= L <= T, read by the kernel (no host sync),
    so one CUDA graph captured over capacity-T buffers replays as the lengths grow;
    check_lengths=False skips their one-sync range check (needed under capture).
    key_mask: None or (b, T) bool, False at pads: a pad is never a key (a query still
    sees its own position), as ``naive_attention(key_mask=...)``.
    Query i of row b sits at position L_b - s + i. softmax_scale defaults to
    1/sqrt(d). num_splits / block_n / num_stages override the heuristics (tests).
    Returns (b, s, h, d) in q's dtype.
    """
    check_inputs(q, k, v, C_rot, B_rot, g, lam, lengths, key_mask)
    b, s, h, d = q.shape
    T, hk = k.shape[1], k.shape[2]
    n = C_rot.shape[3]
    g = g.to(torch.float64)                            # differences taken in float64 (a no-op for the cache's g)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    out = torch.empty((b, s, h, d), dtype=q.dtype, device=q.device)
    if b * h == 0 or d == 0:
        return out.zero_()
    if lengths is None:
        lengths = torch.full((b,), T, dtype=torch.int32, device=q.device)
    elif check_lengths and not bool(((lengths >= s) & (lengths <= T)).all()):
        raise ValueError(f"lengths: every live length must lie in [s, T] = [{s}, {T}], got {lengths.tolist()}")
    d_pad, n_pad, rep = padded(d), padded(n), h // hk
    lam = lam.to(torch.float32).contiguous()         # the kernel reads lam[h]
    keys = lengths if key_mask is None else key_mask.view(torch.uint8)   # a dummy pointer without a mask
    family = configs.launch_family(q.device)
    entries = ([(32, 12288, 4, num_stages)] if family is None or block_n is not None
               else configs.others("decode", family, q.dtype, (d_pad, n_pad)))

    def launch(entry):
        most_rows, elements, warps, stages = entry
        bn = block_n or block_n_for(d_pad, n_pad, elements)
        block_m = block_m_for(rep * s, most_rows)
        row_blocks = triton.cdiv(rep * s, block_m)
        splits = num_splits or num_splits_for(T, b * hk * row_blocks, bn, q.device)
        chunk = triton.cdiv(triton.cdiv(T, splits), bn) * bn
        splits = triton.cdiv(T, chunk)                 # no split past the end of the cache
        part_o = torch.empty((b * h * s * splits, d), dtype=torch.float32, device=q.device)
        part_l = torch.empty((b * h * s * splits,), dtype=torch.float32, device=q.device)
        _decode_split_kernel[(b * hk, row_blocks, splits)](
            q, k, v, C_rot, B_rot, g, lam, lengths, keys, part_o, part_l,
            *q.stride(), *k.stride(), *v.stride(), *C_rot.stride(), *B_rot.stride(), *g.stride(),
            *(key_mask.stride() if key_mask is not None else (0, 0)),
            h, s, d, n, chunk, splits, float(scale),
            REP=rep, BLOCK_M=block_m, D_PAD=d_pad, N_PAD=n_pad, BLOCK_N=bn,
            UPCAST=upcast_dot(q.dtype), HAS_KEY_MASK=key_mask is not None, num_warps=warps, num_stages=stages)
        _decode_merge_kernel[(b * h * s,)](
            part_o, part_l, out, *out.stride(), h, s, d, splits,
            D_PAD=d_pad, SPLITS_PAD=triton.next_power_of_2(splits), BLOCK_S=max(1, 2048 // d_pad),
            num_warps=4 if d_pad >= 128 else 2)
    configs.run("_decode_split_kernel", q.device, family, (d_pad, n_pad), entries, launch)
    return out
