"""Fused causal SISA attention: the forward kernel and its launcher.

    score[i, j] = scale q_i.k_j + lam exp(g_i - g_j) Cr_i.Br_j      (j <= i)
    out_i       = softmax_j(score[i, :]) @ v

FlashAttention-2 style: one program per (query block, head, batch), online
softmax in float32 in base 2 (log2 e folded into the two logit scales).

The decay is taken inside the tile, never factorised over the sequence:
- key blocks strictly below the diagonal (every key j < m0, the query block's
  first row) use exp(g_i - g_j) = exp(g_i - g_m0) * exp(g_m0 - g_j), both <= 1:
  the Cr rows are scaled once per query block (BLOCK_M exps); the key factors
  (BLOCK_N exps per key block) scale the columns of the (BM x n)(n x BN) product,
  so no operand is rescaled and written back to shared memory inside the loop;
- key blocks on the diagonal use exp(min(g_i - g_j, 0)) per element (a min that keeps
  NaN), with the exponent set to 0 where the causal mask removes the entry (no inf * 0);
- key blocks above the diagonal are skipped.
Every difference of g is taken from float32 (hi, lo) pairs split from the float64
g (``load_g``, ``g_sub``): exact to float32 rounding of the difference itself at any
|g|, with float32 arithmetic on the tiles.

Shapes: q (b, t, h, d); k, v (b, t, hk, d); C_rot, B_rot (b, t, h, n);
g (b, t, h) float64 (float32 works, with the precision it has); lam (h,) float32. Output (b, t, h, d) in q's dtype and
the log-sum-exp lse (b, h, t) float32 (natural log) for the backward.
Head dims and d_state are padded to powers of two (>= 16) with masked loads.
16-bit inputs use 16-bit tensor-core products with float32 accumulation; float32
inputs use exact float32 products (IEEE FMA, no tensor cores: three-pass TF32 spilled in
every tile, see ``configs/fp32.py``).
Under TRITON_INTERPRET=1 bf16 operands are upcast before tl.dot (the interpreter
multiplies raw bf16 bit patterns) and fixed square blocks are used; on a GPU the
tile config comes from ``sisa_kernels.configs`` (a fixed table; tuning is opt-in).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .configs import interpreting, min_state_tile


def padded(x: int) -> int:
    """Tile width for a head dim or d_state: next power of two, at least 16."""
    return max(16, triton.next_power_of_2(x))


def state_padded(n: int, d_pad: int) -> int:
    """Tile width for d_state in the attention kernels: ``padded(n)``, but at least
    ``configs.min_state_tile`` (32 beside head dim 256: 16-wide state tiles there make
    ptxas for sm_90 spill kilobytes in both backward kernels)."""
    return max(padded(n), min_state_tile(d_pad))


def upcast_dot(*dtypes: torch.dtype) -> bool:
    """The interpreter multiplies raw bf16 bit patterns in tl.dot: upcast there."""
    return interpreting() and torch.bfloat16 in dtypes


# float32 operands: exact float32 products on a GPU and in the interpreter alike.
F32_DOT = tl.constexpr("ieee")


@triton.jit
def tile_dot(a, b, UPCAST: tl.constexpr):
    """tl.dot with float32 accumulation (operands upcast under the interpreter for bf16)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        c = tl.dot(a, b, input_precision=F32_DOT)   # float32 inputs: no plain TF32
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def neg_part(x):
    """min(x, 0) that keeps NaN (tl.minimum may drop it on a GPU): a NaN decay
    exponent must poison its score, as it does in the maths."""
    return tl.where(x > 0.0, 0.0, x)


@triton.jit
def load_rows(base, rows, row_ok, s_row, offs_c, col_ok, s_col):
    """Masked (len(rows), len(offs_c)) tile at base + rows * s_row + offs_c * s_col (0 outside)."""
    return tl.load(base + rows[:, None] * s_row + offs_c[None, :] * s_col,
                   mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def block_offsets(start, T, D: tl.constexpr, N: tl.constexpr, BLOCK: tl.constexpr, D_PAD: tl.constexpr,
                  N_PAD: tl.constexpr):
    """Positions [start, start + BLOCK) and the head-dim / d_state columns, with their
    masks: (offs, ok, idx (int64 offs), offs_d, d_ok, offs_s, s_ok). D and N are
    constexpr: where they equal their padded widths the column masks fold away."""
    offs = start + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D_PAD)
    offs_s = tl.arange(0, N_PAD)
    return offs, offs < T, offs.to(tl.int64), offs_d, offs_d < D, offs_s, offs_s < N


@triton.jit
def logit_scales(LAM, hi, qk_scale):
    """(lam, c_scale, s_scale): head hi's lam and the content / SSM logit scales in
    base 2 (log2 e folded in: scale * log2 e and lam * log2 e)."""
    lam = tl.load(LAM + hi).to(tl.float32)
    return lam, qk_scale * 1.4426950408889634, lam * 1.4426950408889634


@triton.jit
def load_g(g_base, idx, ok, sg_t):
    """g at positions idx (float64 in memory) as a float32 pair (hi, lo): hi = g
    rounded to float32, lo = g - hi rounded to float32 (hi + lo = g to ~1e-15
    relative). It stays in natural units: scaling by log2 e would round it."""
    g = tl.load(g_base + idx * sg_t, mask=ok, other=0.0)
    hi = g.to(tl.float32)
    return hi, (g - hi.to(g.dtype)).to(tl.float32)


@triton.jit
def g_sub(a_hi, a_lo, b_hi, b_lo):
    """g_a - g_b from (hi, lo) pairs (already broadcast), in float32: hi_a - hi_b is
    exact where the two are within a factor 2 of each other (Sterbenz), so nearby
    tokens' differences keep float32 accuracy however large |g| is; far apart ones
    are rounded only once, relative to the difference itself."""
    return (a_hi - b_hi) + (a_lo - b_lo)


@triton.jit
def query_rows(q_base, c_base, g_base, rows, row_ok, m0, q_off, sq_t, sq_d, sc_t, sc_n, sg_t,
               offs_d, d_ok, offs_s, s_ok):
    """A query block's q and raw Cr tiles (query rows), and g at the rows' positions
    (row + q_off) and at the first row's, p0 = m0 + q_off (``load_g``'s pairs)."""
    q = load_rows(q_base, rows, row_ok, sq_t, offs_d, d_ok, sq_d)
    cr = load_rows(c_base, rows, row_ok, sc_t, offs_s, s_ok, sc_n)
    return (q, cr, load_g(g_base, rows + q_off, row_ok, sg_t),
            load_g(g_base, (m0 + q_off).to(tl.int64), True, sg_t))


@triton.jit
def sequence_starts(SEQ_START, rows, row_ok, m0, BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(start_i, n_lo): the first position of each row's sequence (IS_VARLEN; else 0)
    and the first key block any row of the block [m0, ...) can see, in BLOCK steps."""
    start_i = tl.zeros(rows.shape, dtype=tl.int32)
    n_lo = m0 * 0
    if IS_VARLEN:
        start_i = tl.load(SEQ_START + rows, mask=row_ok, other=0)
        n_lo = (tl.load(SEQ_START + m0) // BLOCK) * BLOCK      # starts never decrease along the rows
    return start_i, n_lo


@triton.jit
def key_tile(g_i, g_m0, offs_m, start_i, n0, k_base, v_base, b_base, g_base,
             sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t, offs_d, d_ok, offs_s, s_ok, T,
             BLOCK_N: tl.constexpr, DIAG: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Key tile [n0, n0 + BLOCK_N) against a query block (rows offs_m), as the forward
    and the dq backward both use it. Returns (k, v, br, dec, keep): the k, v and raw
    Br tiles; the decay factor of the query block's (cr br^T) products and the mask.
    g_i, g_m0 and the keys' g are ``load_g``'s (hi, lo) pairs.

    DIAG False: keys j < m0; the caller's cr holds Cr_i exp(g_i - g_m0) and dec is the
    column factor exp(g_m0 - g_j) (both <= 1), applied to the product, never written
    back to an operand; keep is True (IS_VARLEN: keys of the row's own sequence, j >=
    start_i; the factors stay <= 1 on the others).
    DIAG True: cr holds the raw Cr rows; dec = exp(min(g_i - g_j, 0)) with the
    exponent set to 0 where the mask removes the entry (no inf * 0).
    """
    offs_j = n0 + tl.arange(0, BLOCK_N)
    col_ok = offs_j < T
    cols = offs_j.to(tl.int64)
    k = load_rows(k_base, cols, col_ok, sk_t, offs_d, d_ok, sk_d)
    v = load_rows(v_base, cols, col_ok, sv_t, offs_d, d_ok, sv_d)
    br = load_rows(b_base, cols, col_ok, sb_t, offs_s, s_ok, sb_n)
    gj_hi, gj_lo = load_g(g_base, cols, col_ok, sg_t)
    if DIAG:
        keep = (offs_m[:, None] >= offs_j[None, :]) & col_ok[None, :] & (offs_m < T)[:, None]
        if IS_VARLEN:
            keep &= offs_j[None, :] >= start_i[:, None]
        gi_hi, gi_lo = g_i
        expo = g_sub(gi_hi[:, None], gi_lo[:, None], gj_hi[None, :], gj_lo[None, :])
        dec = tl.exp(tl.where(keep, neg_part(expo), 0.0))
    else:
        if IS_VARLEN:
            keep = offs_j[None, :] >= start_i[:, None]
        else:
            keep = True
        gm_hi, gm_lo = g_m0
        dec = tl.exp(neg_part(g_sub(gm_hi, gm_lo, gj_hi, gj_lo)))[None, :]
    return k, v, br, dec, keep


@triton.jit
def logits(a_qk, b_qk, a_ssm, b_ssm, dec, c_scale, s_scale, UPCAST: tl.constexpr):
    """(x, s) of one tile in the a-rows x b-rows orientation: the SSM product
    x = dec * (a_ssm b_ssm^T) and the base-2 logits s = c_scale a_qk b_qk^T + s_scale x
    (unmasked). Queries x keys in the forward and dq, keys x queries in dk/dv."""
    x = tile_dot(a_ssm, tl.trans(b_ssm), UPCAST) * dec
    return x, tile_dot(a_qk, tl.trans(b_qk), UPCAST) * c_scale + x * s_scale


@triton.jit
def _fwd_blocks(acc, m_i, l_i, q, cr, g_i, g_m0, offs_m, start_i, n_lo, n_hi,
                k_base, v_base, b_base, g_base, sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t,
                offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale,
                BLOCK_N: tl.constexpr, DIAG: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr):
    """Online softmax over the key blocks in [n_lo, n_hi), in base 2 (key_tile says
    what cr holds for DIAG False / True)."""
    for n0 in range(n_lo, n_hi, BLOCK_N):
        k, v, br, dec, keep = key_tile(
            g_i, g_m0, offs_m, start_i, n0, k_base, v_base, b_base, g_base,
            sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t, offs_d, d_ok, offs_s, s_ok, T, BLOCK_N, DIAG, IS_VARLEN)
        x, s = logits(q, k, cr, br, dec, c_scale, s_scale, UPCAST)
        if DIAG or IS_VARLEN:
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)     # a row with no key yet: no inf - inf
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tile_dot(p.to(v.dtype), v, UPCAST)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _sisa_fwd_kernel(
    Q, K, V, CR, BR, G, LAM, OUT, LSE, SEQ_START,
    sq_b, sq_t, sq_h, sq_d,
    sk_b, sk_t, sk_h, sk_d,
    sv_b, sv_t, sv_h, sv_d,
    sc_b, sc_t, sc_h, sc_n,
    sb_b, sb_t, sb_h, sb_n,
    sg_b, sg_t, sg_h,
    so_b, so_t, so_h, so_d,
    H, T, S, REP, qk_scale, T_BUCKET,                   # T_BUCKET: the opt-in autotuner's key only
    D: tl.constexpr, N: tl.constexpr, D_PAD: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)     # longest rows first (causal balance)
    hi = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    hk = hi // REP
    m0 = pid_m * BLOCK_M
    q_off = T - S                                       # the S queries are the last S of T positions
    p0 = m0 + q_off                                     # the block's first position
    n_split = (p0 // BLOCK_N) * BLOCK_N                 # keys before it: below the diagonal

    offs_m, row_ok, rows, offs_d, d_ok, offs_s, s_ok = block_offsets(m0, S, D, N, BLOCK_M, D_PAD, N_PAD)
    c_base = CR + bi * sc_b + hi * sc_h
    g_base = G + bi * sg_b + hi * sg_h
    q, cr, g_i, g_m0 = query_rows(Q + bi * sq_b + hi * sq_h, c_base, g_base, rows, row_ok, m0, q_off,
                                  sq_t, sq_d, sc_t, sc_n, sg_t, offs_d, d_ok, offs_s, s_ok)
    lam, c_scale, s_scale = logit_scales(LAM, hi, qk_scale)
    start_i, n_lo = sequence_starts(SEQ_START, rows, row_ok, m0, BLOCK_N, IS_VARLEN)
    pos_m = offs_m + q_off

    k_base = K + bi * sk_b + hk * sk_h
    v_base = V + bi * sv_b + hk * sv_h
    b_base = BR + bi * sb_b + hi * sb_h
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)   # any finite start fails some scale
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Keys j < n_split <= p0: the query factor exp(g_i - g_p0) <= 1 goes on the Cr rows once.
    row_f = tl.exp(neg_part(g_sub(g_i[0], g_i[1], g_m0[0], g_m0[1])))
    cr_f = (cr.to(tl.float32) * row_f[:, None]).to(cr.dtype)
    acc, m_i, l_i = _fwd_blocks(acc, m_i, l_i, q, cr_f, g_i, g_m0, pos_m, start_i, n_lo, n_split,
                                k_base, v_base, b_base, g_base, sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t,
                                offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale,
                                BLOCK_N, False, IS_VARLEN, UPCAST)
    # Diagonal blocks on the raw Cr rows (loaded again: one Cr tile live per phase).
    cr = load_rows(c_base, rows, row_ok, sc_t, offs_s, s_ok, sc_n)
    acc, m_i, l_i = _fwd_blocks(acc, m_i, l_i, q, cr, g_i, g_m0, pos_m, start_i, n_split,
                                tl.minimum(p0 + BLOCK_M, T),
                                k_base, v_base, b_base, g_base, sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t,
                                offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale,
                                BLOCK_N, True, IS_VARLEN, UPCAST)

    out = acc / l_i[:, None]
    tl.store(OUT + bi * so_b + hi * so_h + rows[:, None] * so_t + offs_d[None, :] * so_d,
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + (bi * H + hi) * S + rows, lse, mask=row_ok)


_sisa_fwd_tuned = configs.autotuned(_sisa_fwd_kernel, "fwd")


def check_inputs(q, k, v, C_rot, B_rot, g, lam):
    """q (b, s, h, d) and C_rot (b, s, h, n): the last s <= t of the t key positions."""
    b, s, h, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    assert k.shape == v.shape == (b, t, hk, d) and h % hk == 0, "k, v: (b, t, hk, d), hk divides h"
    assert s <= t, "q: at most k's t positions (the last s of them)"
    assert C_rot.shape[:3] == (b, s, h) and B_rot.shape[:3] == (b, t, h), "C_rot (b, s, h, n), B_rot (b, t, h, n)"
    assert C_rot.shape[3] == B_rot.shape[3], "C_rot, B_rot: one d_state"
    assert g.shape == (b, t, h) and lam.shape == (h,), "g: (b, t, h), lam: (h,)"
    assert q.dtype == k.dtype == v.dtype and C_rot.dtype == B_rot.dtype, "dtype mismatch"


def sequence_bounds(cu_seqlens: torch.Tensor, t: int) -> torch.Tensor:
    """(2, t) int32 on cu_seqlens' device: row 0 the first position of each packed
    token's sequence, row 1 one past its last. Device ops only (no host sync)."""
    cu = cu_seqlens.to(torch.int32)
    seq = torch.searchsorted(cu, torch.arange(t, device=cu.device, dtype=torch.int32), right=True) - 1
    return torch.stack((cu[seq], cu[seq + 1]))


def sisa_attn_fwd(q, k, v, C_rot, B_rot, g, lam, softmax_scale, config=None, bounds=None):
    """Launch the forward kernel. Shapes in the module docstring.

    config: optional {"BLOCK_M": .., "BLOCK_N": ..} (BLOCK_M a multiple of BLOCK_N,
    optionally num_warps / num_stages) instead of ``configs``' choice. bounds:
    ``sequence_bounds`` of a packed batch (b = 1, s = t): no row sees a key outside
    its own sequence. q and C_rot may hold only the last s <= t positions (a sequence
    shard's queries over the keys up to its end). Returns (out (b, s, h, d) in q's
    dtype, lse (b, h, s) float32).
    """
    check_inputs(q, k, v, C_rot, B_rot, g, lam)
    b, s, h, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    n = C_rot.shape[-1]
    assert bounds is None or s == t, "packed sequences take every position as a query"
    if config is not None:
        assert config["BLOCK_M"] % config["BLOCK_N"] == 0
    out = torch.empty((b, s, h, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, s), dtype=torch.float32, device=q.device)
    if s == 0 or b * h == 0:
        return out, lse
    lam = lam.to(torch.float32)
    grid = lambda meta: (triton.cdiv(s, meta["BLOCK_M"]), h, b)
    args = (q, k, v, C_rot, B_rot, g, lam, out, lse, bounds,
            *q.stride(), *k.stride(), *v.stride(), *C_rot.stride(), *B_rot.stride(), *g.stride(),
            *out.stride(), h, t, s, h // hk, float(softmax_scale), configs.length_bucket(t))
    consts = dict(D=d, N=n, D_PAD=padded(d), N_PAD=state_padded(n, padded(d)), IS_VARLEN=bounds is not None,
                  UPCAST=upcast_dot(q.dtype, C_rot.dtype))
    configs.launch(_sisa_fwd_kernel, _sisa_fwd_tuned, "fwd", grid, args, consts, config, t, q.device, q.dtype)
    return out, lse
