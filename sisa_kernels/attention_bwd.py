"""Fused causal SISA attention: the backward kernels and their launcher.

Deterministic (no atomics), FlashAttention-2 style, memory O(t) (no t x t buffer).
With P = softmax(S), dP = dO V^T, delta_i = dO_i.O_i, dS = P * (dP - delta),
D_ij = exp(g_i - g_j) and the raw SSM product X = D * (Cr Br^T):
    dq = scale dS k        dk = scale dS^T q        dv = P^T dO
    dCr = lam (dS * D) Br  dBr = lam (dS * D)^T Cr
    G = dS * X (so F = lam G):   dlam = sum G,   dg_t = lam (sum_j G[t, j] - sum_i G[i, t])

Kernels:
- ``_sisa_bwd_delta_kernel``: delta = rowsum(dO * O), float32 (b, h, t).
- ``_sisa_bwd_dkv_kernel``: one program per (key block, kv head, batch), looping
  over the kv head's query heads and, for each, the query blocks at and below the
  key block: dk, dv (summed over the GQA group in registers, written once in k's
  dtype), and per query head dBr and the column sums of G.
- ``_sisa_bwd_dq_kernel``: one program per (query block, head, batch), looping
  over the key blocks at and left of it: dq, dCr and the row sums of G.
Both kernels recompute P from the forward's lse, in one shared tile step
(``_grad_step``, oriented by a constexpr). Off-diagonal tiles use the
factorised decay with an anchor between the key block and the query block
(both factors <= 1); diagonal tiles use exp(min(g_i - g_j, 0)) per element.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .attention import (block_offsets, g_sub, key_tile, load_g, load_rows, logit_scales, logits,
                        neg_part, padded, query_rows, sequence_starts, state_padded, tile_dot, upcast_dot)


@triton.jit
def _sisa_bwd_delta_kernel(O, DO, DELTA, so_b, so_t, so_h, so_d, sdo_b, sdo_t, sdo_h, sdo_d,
                           H, T, D, D_PAD: tl.constexpr, BLOCK: tl.constexpr):
    hi = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < T
    d_ok = offs_d < D
    rows = offs_m.to(tl.int64)
    o = load_rows(O + bi * so_b + hi * so_h, rows, row_ok, so_t, offs_d, d_ok, so_d)
    do = load_rows(DO + bi * sdo_b + hi * sdo_h, rows, row_ok, sdo_t, offs_d, d_ok, sdo_d)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + (bi * H + hi) * T + rows, delta, mask=row_ok)


@triton.jit
def _grad_step(a_qk, a_ssm, a_pv, b_qk, b_ssm, b_pv, dec, keep, lse, delta, c_scale, s_scale,
               acc_qk, acc_ssm, acc_pv, sum_g,
               KEYS_OUT: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr):
    """One tile of the backward, shared by both kernels, in the orientation of the
    block they write (its rows "a", the loop's block "b"):

    - query rows (KEYS_OUT False, dq): a = (q, Cr, dO), b = (k, Br, v); lse and delta
      per row. acc_qk += dS k (dq / scale), acc_ssm += (dS dec) Br (dCr / lam).
    - key rows (KEYS_OUT True, dk/dv): a = (k, Br, v), b = (q, Cr, dO); lse and delta
      per column. acc_qk += dS^T q (dk / scale), acc_ssm += (dS dec)^T Cr (dBr / lam),
      acc_pv += P^T dO (dv).

    P = exp2(s - lse) (0 where not keep, if MASK), dP = dO V^T in either orientation
    (a_pv b_pv^T), dS = P (dP - delta); sum_g += the a-row sums of dS * x.
    """
    x, s = logits(a_qk, b_qk, a_ssm, b_ssm, dec, c_scale, s_scale, UPCAST)
    if KEYS_OUT:
        p = tl.exp2(s - lse[None, :])
    else:
        p = tl.exp2(s - lse[:, None])
    if MASK:
        p = tl.where(keep, p, 0.0)
    if KEYS_OUT:
        acc_pv += tile_dot(p.to(b_pv.dtype), b_pv, UPCAST)
        ds = p * (tile_dot(a_pv, tl.trans(b_pv), UPCAST) - delta[None, :])
    else:
        ds = p * (tile_dot(a_pv, tl.trans(b_pv), UPCAST) - delta[:, None])
    acc_qk += tile_dot(ds.to(b_qk.dtype), b_qk, UPCAST)
    acc_ssm += tile_dot((ds * dec).to(b_ssm.dtype), b_ssm, UPCAST)
    sum_g += tl.sum(ds * x, 1)
    return acc_qk, acc_ssm, acc_pv, sum_g


@triton.jit
def _dkv_blocks(acc_dk, acc_dv, acc_db, col_g, k, v, br, g_j, g_a, offs_n, m_lo, m_hi, q_off,
                q_base, do_base, c_base, g_base, LSE, DELTA, SEQ_START, row_base,
                sq_t, sq_d, sdo_t, sdo_d, sc_t, sc_n, sg_t,
                offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale,
                BLOCK_IN: tl.constexpr, DIAG: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr):
    """Accumulate over the query blocks in [m_lo, m_hi) for a fixed key block, in the
    transposed (keys x queries) orientation.

    Query rows i in [m_lo, m_hi) sit at positions i + q_off (the queries are the last
    ones of the T positions).
    DIAG False: queries after a >= every key; br holds Br_j
    exp(g_a - g_j); the row factor exp(g_i - g_a) scales the products (dec), never an
    operand. DIAG True: br holds the raw Br rows; per-element decay under the causal
    mask. Either way x = dec * (br cr^T) and acc_db gets (dS * dec)^T Cr (_grad_step).
    IS_VARLEN: a query sees only keys of its own sequence. g_j, g_a: ``load_g`` pairs.
    """
    for m0 in range(m_lo, m_hi, BLOCK_IN):
        offs_i = m0 + tl.arange(0, BLOCK_IN)              # query rows; their positions: + q_off
        row_ok = offs_i < m_hi                            # m_hi <= S; a range need not fill its last block
        rows = offs_i.to(tl.int64)
        q = load_rows(q_base, rows, row_ok, sq_t, offs_d, d_ok, sq_d)
        do = load_rows(do_base, rows, row_ok, sdo_t, offs_d, d_ok, sdo_d)
        cr = load_rows(c_base, rows, row_ok, sc_t, offs_s, s_ok, sc_n)
        gi_hi, gi_lo = load_g(g_base, rows + q_off, row_ok, sg_t)
        lse = tl.load(LSE + row_base + rows, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
        keep = row_ok[None, :]
        if IS_VARLEN:
            keep &= offs_n[:, None] >= tl.load(SEQ_START + rows, mask=row_ok, other=0)[None, :]
        if DIAG:
            keep &= (offs_i + q_off)[None, :] >= offs_n[:, None]
            expo = g_sub(gi_hi[None, :], gi_lo[None, :], g_j[0][:, None], g_j[1][:, None])
            dec = tl.exp(tl.where(keep, neg_part(expo), 0.0))
        else:
            dec = tl.exp(neg_part(g_sub(gi_hi, gi_lo, g_a[0], g_a[1])))[None, :]
        acc_dk, acc_db, acc_dv, col_g = _grad_step(k, br, v, q, cr, do, dec, keep, lse, delta, c_scale, s_scale,
                                                   acc_dk, acc_db, acc_dv, col_g, True, True, UPCAST)
    return acc_dk, acc_dv, acc_db, col_g


@triton.jit
def _sisa_bwd_dkv_kernel(
    Q, K, V, CR, BR, G, LAM, DO, LSE, DELTA, DK, DV, DBR, COLG, BOUNDS,
    sq_b, sq_t, sq_h, sq_d,
    sk_b, sk_t, sk_h, sk_d,
    sv_b, sv_t, sv_h, sv_d,
    sc_b, sc_t, sc_h, sc_n,
    sb_b, sb_t, sb_h, sb_n,
    sg_b, sg_t, sg_h,
    sdo_b, sdo_t, sdo_h, sdo_d,
    sdk_b, sdk_t, sdk_h, sdk_d,
    sdb_b, sdb_t, sdb_h, sdb_n,
    H, T, S, REP, qk_scale, T_BUCKET,                   # T_BUCKET: the opt-in autotuner's key only
    D: tl.constexpr, N: tl.constexpr, D_PAD: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr,
):
    """Keys j in [n0, n0 + BLOCK_OUT) of kv head hk fixed; for each of its REP query
    heads in turn, loop over query blocks of BLOCK_IN rows (IS_VARLEN: up to the end of
    the last key's sequence, BOUNDS = sequence_bounds). dK, dV sum over the group
    in registers, in a fixed order (deterministic), and are written once."""
    hk = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    n0 = tl.program_id(0) * BLOCK_OUT

    offs_n, col_ok, cols, offs_d, d_ok, offs_s, s_ok = block_offsets(n0, T, D, N, BLOCK_OUT, D_PAD, N_PAD)
    k = load_rows(K + bi * sk_b + hk * sk_h, cols, col_ok, sk_t, offs_d, d_ok, sk_d)
    v = load_rows(V + bi * sv_b + hk * sv_h, cols, col_ok, sv_t, offs_d, d_ok, sv_d)
    # Query blocks below the key block: anchor a = the block's last key (<= every
    # query, >= every key); the key factor exp(g_a - g_j) <= 1 goes on the Br rows once.
    a = tl.minimum(n0 + BLOCK_OUT - 1, T - 1)
    q_off = T - S                                       # query row i sits at position i + q_off
    if IS_VARLEN:
        m_hi = tl.load(BOUNDS + T + a)                  # no later query sees these keys (q_off = 0)
    else:
        m_hi = S
    after = tl.maximum(n0 + BLOCK_OUT - q_off, 0)        # the first query row after every key
    diag_lo = tl.maximum(n0 - q_off, 0)                 # query rows at the block's positions
    diag_hi = tl.maximum(tl.minimum(n0 + BLOCK_OUT, T) - q_off, 0)
    acc_dk = tl.zeros([BLOCK_OUT, D_PAD], dtype=tl.float32)
    acc_dv = tl.zeros([BLOCK_OUT, D_PAD], dtype=tl.float32)

    for r in range(0, REP):
        hi = hk * REP + r
        b_base = BR + bi * sb_b + hi * sb_h
        br = load_rows(b_base, cols, col_ok, sb_t, offs_s, s_ok, sb_n)
        g_base = G + bi * sg_b + hi * sg_h
        g_j = load_g(g_base, cols, col_ok, sg_t)
        g_a = load_g(g_base, a.to(tl.int64), True, sg_t)
        lam, c_scale, s_scale = logit_scales(LAM, hi, qk_scale)
        q_base = Q + bi * sq_b + hi * sq_h
        do_base = DO + bi * sdo_b + hi * sdo_h
        c_base = CR + bi * sc_b + hi * sc_h
        row_base = (bi * H + hi) * S
        acc_db = tl.zeros([BLOCK_OUT, N_PAD], dtype=tl.float32)     # dBr / lam
        col_g = tl.zeros([BLOCK_OUT], dtype=tl.float32)

        key_f = tl.exp(neg_part(g_sub(g_a[0], g_a[1], g_j[0], g_j[1])))
        br_f = (br.to(tl.float32) * key_f[:, None]).to(br.dtype)
        acc_dk, acc_dv, acc_db, col_g = _dkv_blocks(
            acc_dk, acc_dv, acc_db, col_g, k, v, br_f, g_j, g_a, offs_n, after, m_hi, q_off,
            q_base, do_base, c_base, g_base, LSE, DELTA, BOUNDS, row_base,
            sq_t, sq_d, sdo_t, sdo_d, sc_t, sc_n, sg_t, offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale,
            BLOCK_IN, False, IS_VARLEN, UPCAST)
        # From here on acc_db takes dS * D directly: give the off-diagonal part its key factor.
        # The raw Br rows are loaded again (one Br tile live per phase).
        acc_db = acc_db * key_f[:, None]
        br = load_rows(b_base, cols, col_ok, sb_t, offs_s, s_ok, sb_n)
        acc_dk, acc_dv, acc_db, col_g = _dkv_blocks(
            acc_dk, acc_dv, acc_db, col_g, k, v, br, g_j, g_a, offs_n, diag_lo, diag_hi, q_off,
            q_base, do_base, c_base, g_base, LSE, DELTA, BOUNDS, row_base,
            sq_t, sq_d, sdo_t, sdo_d, sc_t, sc_n, sg_t, offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale,
            BLOCK_IN, True, IS_VARLEN, UPCAST)
        tl.store(DBR + bi * sdb_b + hi * sdb_h + cols[:, None] * sdb_t + offs_s[None, :] * sdb_n,
                 (lam * acc_db).to(DBR.dtype.element_ty), mask=col_ok[:, None] & s_ok[None, :])
        tl.store(COLG + (bi * H + hi) * T + cols, col_g, mask=col_ok)

    kv_mask = col_ok[:, None] & d_ok[None, :]
    dk_off = bi * sdk_b + hk * sdk_h + cols[:, None] * sdk_t + offs_d[None, :] * sdk_d
    tl.store(DK + dk_off, (acc_dk * qk_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + dk_off, acc_dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_blocks(acc_dq, acc_dc, row_g, q, do, cr, g_i, g_m0, lse, delta, offs_m, start_i, n_lo, n_hi,
               k_base, v_base, b_base, g_base, sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t,
               offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale,
               BLOCK_IN: tl.constexpr, DIAG: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr):
    """Accumulate over the key blocks in [n_lo, n_hi) for a fixed query block: the
    forward's key_tile loads each, _grad_step recomputes its logits. acc_dc gets
    (dS * dec) Br: with the column factor exp(g_m0 - g_j) below the diagonal (DIAG
    False), D on it (True)."""
    for n0 in range(n_lo, n_hi, BLOCK_IN):
        k, v, br, dec, keep = key_tile(
            g_i, g_m0, offs_m, start_i, n0, k_base, v_base, b_base, g_base,
            sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t, offs_d, d_ok, offs_s, s_ok, T, BLOCK_IN, DIAG, IS_VARLEN)
        acc_dq, acc_dc, _, row_g = _grad_step(q, cr, do, k, br, v, dec, keep, lse, delta, c_scale, s_scale,
                                              acc_dq, acc_dc, 0.0, row_g, False, DIAG or IS_VARLEN, UPCAST)
    return acc_dq, acc_dc, row_g


@triton.jit
def _sisa_bwd_dq_kernel(
    Q, K, V, CR, BR, G, LAM, DO, LSE, DELTA, DQ, DCR, ROWG, BOUNDS,
    sq_b, sq_t, sq_h, sq_d,
    sk_b, sk_t, sk_h, sk_d,
    sv_b, sv_t, sv_h, sv_d,
    sc_b, sc_t, sc_h, sc_n,
    sb_b, sb_t, sb_h, sb_n,
    sg_b, sg_t, sg_h,
    sdo_b, sdo_t, sdo_h, sdo_d,
    sdq_b, sdq_t, sdq_h, sdq_d,
    sdc_b, sdc_t, sdc_h, sdc_n,
    H, T, S, REP, qk_scale, T_BUCKET,                   # T_BUCKET: the opt-in autotuner's key only
    D: tl.constexpr, N: tl.constexpr, D_PAD: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, IS_VARLEN: tl.constexpr, UPCAST: tl.constexpr,
):
    """Queries i in [m0, m0 + BLOCK_OUT) fixed; loop over key blocks of BLOCK_IN columns
    (IS_VARLEN: from the block holding the first row's sequence start)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)     # longest rows first (causal balance)
    hi = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    hk = hi // REP
    m0 = pid_m * BLOCK_OUT
    q_off = T - S                                       # the S queries are the last S of T positions
    p0 = m0 + q_off
    n_split = (p0 // BLOCK_IN) * BLOCK_IN               # keys before it: below the diagonal

    offs_m, row_ok, rows, offs_d, d_ok, offs_s, s_ok = block_offsets(m0, S, D, N, BLOCK_OUT, D_PAD, N_PAD)
    row_base = (bi * H + hi) * S
    c_base = CR + bi * sc_b + hi * sc_h
    g_base = G + bi * sg_b + hi * sg_h
    q, cr, g_i, g_m0 = query_rows(Q + bi * sq_b + hi * sq_h, c_base, g_base, rows, row_ok, m0, q_off,
                                  sq_t, sq_d, sc_t, sc_n, sg_t, offs_d, d_ok, offs_s, s_ok)
    pos_m = offs_m + q_off
    do = load_rows(DO + bi * sdo_b + hi * sdo_h, rows, row_ok, sdo_t, offs_d, d_ok, sdo_d)
    lse = tl.load(LSE + row_base + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
    lam, c_scale, s_scale = logit_scales(LAM, hi, qk_scale)
    start_i, n_lo = sequence_starts(BOUNDS, rows, row_ok, m0, BLOCK_IN, IS_VARLEN)
    k_base = K + bi * sk_b + hk * sk_h
    v_base = V + bi * sv_b + hk * sv_h
    b_base = BR + bi * sb_b + hi * sb_h

    acc_dq = tl.zeros([BLOCK_OUT, D_PAD], dtype=tl.float32)
    acc_dc = tl.zeros([BLOCK_OUT, N_PAD], dtype=tl.float32)          # dCr / lam
    row_g = tl.zeros([BLOCK_OUT], dtype=tl.float32)

    # Keys j < n_split <= p0: the query factor exp(g_i - g_p0) <= 1 goes on the Cr rows once.
    row_f = tl.exp(neg_part(g_sub(g_i[0], g_i[1], g_m0[0], g_m0[1])))
    cr_f = (cr.to(tl.float32) * row_f[:, None]).to(cr.dtype)
    acc_dq, acc_dc, row_g = _dq_blocks(
        acc_dq, acc_dc, row_g, q, do, cr_f, g_i, g_m0, lse, delta, pos_m, start_i, n_lo, n_split,
        k_base, v_base, b_base, g_base, sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t,
        offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale, BLOCK_IN, False, IS_VARLEN, UPCAST)
    # From here on acc_dc takes dS * D directly: give the off-diagonal part its row factor.
    # The raw Cr rows are loaded again (one Cr tile live per phase).
    acc_dc = acc_dc * row_f[:, None]
    cr = load_rows(c_base, rows, row_ok, sc_t, offs_s, s_ok, sc_n)
    acc_dq, acc_dc, row_g = _dq_blocks(
        acc_dq, acc_dc, row_g, q, do, cr, g_i, g_m0, lse, delta, pos_m, start_i, n_split,
        tl.minimum(p0 + BLOCK_OUT, T),
        k_base, v_base, b_base, g_base, sk_t, sk_d, sv_t, sv_d, sb_t, sb_n, sg_t,
        offs_d, d_ok, offs_s, s_ok, T, c_scale, s_scale, BLOCK_IN, True, IS_VARLEN, UPCAST)

    tl.store(DQ + bi * sdq_b + hi * sdq_h + rows[:, None] * sdq_t + offs_d[None, :] * sdq_d,
             (acc_dq * qk_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(DCR + bi * sdc_b + hi * sdc_h + rows[:, None] * sdc_t + offs_s[None, :] * sdc_n,
             (lam * acc_dc).to(DCR.dtype.element_ty), mask=row_ok[:, None] & s_ok[None, :])
    tl.store(ROWG + row_base + rows, row_g, mask=row_ok)


_sisa_bwd_dkv_tuned = configs.autotuned(_sisa_bwd_dkv_kernel, "dkv")
_sisa_bwd_dq_tuned = configs.autotuned(_sisa_bwd_dq_kernel, "dq")


def sisa_attn_bwd(dout, q, k, v, C_rot, B_rot, g, lam, out, lse, softmax_scale, config=None, bounds=None):
    """Gradients of sisa_attn. dout, out (b, s, h, d); lse (b, h, s) float32; the s
    queries are the last s of k's t positions (s = t for a whole sequence).

    config: optional {"BLOCK_OUT": .., "BLOCK_IN": ..} (BLOCK_OUT a multiple of
    BLOCK_IN, optionally num_warps / num_stages) for both kernels instead of
    ``configs``' choice. bounds: as in sisa_attn_fwd.
    Returns (dq, dk, dv, dC_rot, dB_rot, dg, dlam) with each input's shape and dtype
    (dlam in float32; the caller casts).
    """
    b, s, h, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    n = C_rot.shape[-1]
    rep = h // hk
    dev = q.device
    lam32 = lam.to(torch.float32).contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dcr = torch.empty_like(C_rot, memory_format=torch.contiguous_format)
    dbr = torch.empty_like(B_rot, memory_format=torch.contiguous_format)
    dk = torch.empty((b, t, hk, d), dtype=k.dtype, device=dev)      # GQA groups summed in the kernel
    dv = torch.empty((b, t, hk, d), dtype=v.dtype, device=dev)
    delta = torch.empty((b, h, s), dtype=torch.float32, device=dev)
    row_g = torch.empty((b, h, s), dtype=torch.float32, device=dev)
    col_g = torch.empty((b, h, t), dtype=torch.float32, device=dev)
    if s == 0 or b * h == 0:
        z = torch.zeros
        return (z(q.shape, dtype=q.dtype, device=dev), z(k.shape, dtype=k.dtype, device=dev),
                z(v.shape, dtype=v.dtype, device=dev), z(C_rot.shape, dtype=C_rot.dtype, device=dev),
                z(B_rot.shape, dtype=B_rot.dtype, device=dev), z(g.shape, dtype=g.dtype, device=dev),
                z((h,), dtype=torch.float32, device=dev))
    if config is not None:
        assert config["BLOCK_OUT"] % config["BLOCK_IN"] == 0
    d_pad = padded(d)
    n_pad = state_padded(n, d_pad)
    upcast = upcast_dot(q.dtype, C_rot.dtype)
    family = configs.launch_family(dev)
    configs.run("_sisa_bwd_delta_kernel", dev, family, d_pad, [16] if family is None else configs.others(
        "delta", family, q.dtype), lambda blk: _sisa_bwd_delta_kernel[(triton.cdiv(s, blk), h, b)](
            out, dout, delta, *out.stride(), *dout.stride(), h, s, d, D_PAD=d_pad, BLOCK=blk))
    strides = lambda qq, kk, vv, oo: (*qq.stride(), *kk.stride(), *vv.stride(), *C_rot.stride(),  # noqa: E731
                                      *B_rot.stride(), *g.stride(), *oo.stride())
    common = strides(q, k, v, dout)
    grid = lambda meta: (triton.cdiv(s, meta["BLOCK_OUT"]), h, b)
    kv_grid = lambda meta: (triton.cdiv(t, meta["BLOCK_OUT"]), hk, b)
    consts = dict(D=d, N=n, D_PAD=d_pad, N_PAD=n_pad, IS_VARLEN=bounds is not None, UPCAST=upcast)
    tail = (h, t, s, rep, float(softmax_scale), configs.length_bucket(t))
    kv_in, kv_out, kv_consts = (q, k, v, dout), (dk, dv), consts
    padding = config is None and configs.pads_head_dim("dkv", d, d_pad, n_pad, family, q.dtype)
    if padding:
        # The family's dk/dv tiles spill with a masked head dim (sm120.py): zero columns up to
        # d_pad leave every product unchanged, and the padded dk, dv columns are dropped.
        kv_in = tuple(torch.nn.functional.pad(x, (0, d_pad - d)) for x in kv_in)
        kv_out = tuple(torch.empty((b, t, hk, d_pad), dtype=x.dtype, device=dev) for x in (k, v))
        kv_consts = {**consts, "D": d_pad}
    qq, kk, vv, oo = kv_in
    configs.launch(_sisa_bwd_dkv_kernel, _sisa_bwd_dkv_tuned, "dkv", kv_grid,
                   (qq, kk, vv, C_rot, B_rot, g, lam32, oo, lse, delta, *kv_out, dbr, col_g, bounds,
                    *strides(*kv_in), *kv_out[0].stride(), *dbr.stride(), *tail), kv_consts, config, t, dev, q.dtype)
    if padding:
        dk.copy_(kv_out[0][..., :d])
        dv.copy_(kv_out[1][..., :d])
    configs.launch(_sisa_bwd_dq_kernel, _sisa_bwd_dq_tuned, "dq", grid,
                   (q, k, v, C_rot, B_rot, g, lam32, dout, lse, delta, dq, dcr, row_g, bounds,
                    *common, *dq.stride(), *dcr.stride(), *tail), consts, config, t, dev, q.dtype)
    dlam = row_g.sum(dim=(0, 2))
    # dg_t = lam (row sums of G at position t, for the query there) - lam (column sums at t)
    diff = -col_g
    diff[..., t - s:] += row_g
    dg = (lam32[None, :, None] * diff).transpose(1, 2).contiguous().to(g.dtype)   # float32 sums, in g's dtype
    return dq, dk, dv, dcr, dbr, dg, dlam
