"""The paper's augmented queries and keys, built in one pass (docs/design.md section 3):

    Qhat = [q,     s exp(g - c) C_rot, 0 ...]      s = d**0.25 sqrt(lam_h)
    Khat = [k_rep, s exp(c - g) B_rot, 0 ...]      k_rep: k repeated to h heads (GQA)

so that scale Qhat_i . Khat_j = scale q_i . k_j + lam exp(g_i - g_j) Cr_i . Br_j with
scale = 1/sqrt(d). The offset c (b, h) is the caller's: exp(g - c) is not clamped,
so c must keep both factors inside the dtype's range (see docs/design.md section 3.1).

Layout: Triton kernels, launchers, custom ops with autograd, public ``augment_qk``.
Forward: one program per (batch, head, BLOCK_T rows). Backward: one program per
(batch, kv head, BLOCK_T rows), looping over the heads that share the kv head so
dk is summed without atomics. ``sisa_kernels.scan_ref.augment_ref`` is the same
maths in plain PyTorch.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from . import configs
from .scan import _INTERPRET, _store_dtype


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------

@triton.jit
def _augment_fwd_kernel(
    Q, K, CR, BR, G, S, OFF,                      # inputs; S (h,) = d**0.25 sqrt(lam)
    QH, KH,                                       # outputs (b, t, h, W), contiguous
    T, H, HK, D, N, W,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,           # strides of q, k (last dim contiguous)
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = pid_bh // H, pid_bh % H
    i_hk = i_h // (H // HK)
    rows = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    mask_t = rows < T
    cd, cn = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    mask_d = mask_t[:, None] & (cd < D)[None, :]
    mask_n = mask_t[:, None] & (cn < N)[None, :]
    out = ((i_b * T + rows) * H + i_h) * W                      # row starts in Qhat / Khat

    q = tl.load(Q + i_b * s_qb + rows[:, None] * s_qt + i_h * s_qh + cd[None, :], mask=mask_d)
    tl.store(QH + out[:, None] + cd[None, :], q.to(QH.dtype.element_ty), mask=mask_d)
    k = tl.load(K + i_b * s_kb + rows[:, None] * s_kt + i_hk * s_kh + cd[None, :], mask=mask_d)
    tl.store(KH + out[:, None] + cd[None, :], k.to(KH.dtype.element_ty), mask=mask_d)

    # Masked rows get g = c: the exponent stays finite (no inf * 0). g - c in float64.
    x = tl.load(G + (i_b * T + rows) * H + i_h, mask=mask_t, other=0.0)
    x = tl.where(mask_t, (x - tl.load(OFF + pid_bh)).to(tl.float32), 0.0)
    s = tl.load(S + i_h).to(tl.float32)
    ssm = ((i_b * T + rows[:, None]) * H + i_h) * N + cn[None, :]
    cr = tl.load(CR + ssm, mask=mask_n, other=0.0).to(tl.float32)
    br = tl.load(BR + ssm, mask=mask_n, other=0.0).to(tl.float32)
    qs = (s * tl.exp(x))[:, None] * cr
    ks = (s * tl.exp(-x))[:, None] * br
    tl.store(QH + out[:, None] + D + cn[None, :], qs.to(QH.dtype.element_ty), mask=mask_n)
    tl.store(KH + out[:, None] + D + cn[None, :], ks.to(KH.dtype.element_ty), mask=mask_n)

    zeros = tl.zeros([BLOCK_T, BLOCK_D], dtype=QH.dtype.element_ty)
    for c0 in range(D + N, W, BLOCK_D):
        mask = mask_t[:, None] & (c0 + cd < W)[None, :]
        tl.store(QH + out[:, None] + c0 + cd[None, :], zeros, mask=mask)
        tl.store(KH + out[:, None] + c0 + cd[None, :], zeros, mask=mask)


@triton.jit
def _augment_bwd_kernel(
    DQH, DKH, CR, BR, G, S, OFF,                  # incoming grads (b, t, h, W) contiguous
    DQ, DK, DCR, DBR, DG, DS,                     # outputs; DG, DS (b, t, h) float32
    T, H, HK, D, N, W,
    HAS_DQH: tl.constexpr, HAS_DKH: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bk = tl.program_id(1).to(tl.int64)
    i_b, i_hk = pid_bk // HK, pid_bk % HK
    rows = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    mask_t = rows < T
    cd, cn = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    mask_d = mask_t[:, None] & (cd < D)[None, :]
    mask_n = mask_t[:, None] & (cn < N)[None, :]
    dk = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for j in range(0, H // HK):
        i_h = i_hk * (H // HK) + j
        row = (i_b * T + rows) * H + i_h                         # (b, t, h) flat index
        x = tl.load(G + row, mask=mask_t, other=0.0)
        x = tl.where(mask_t, (x - tl.load(OFF + i_b * H + i_h)).to(tl.float32), 0.0)
        s = tl.load(S + i_h).to(tl.float32)
        ssm = row[:, None] * N + cn[None, :]
        dg = tl.zeros([BLOCK_T], dtype=tl.float32)
        ds = tl.zeros([BLOCK_T], dtype=tl.float32)
        if HAS_DQH:
            dq = tl.load(DQH + row[:, None] * W + cd[None, :], mask=mask_d, other=0.0)
            tl.store(DQ + row[:, None] * D + cd[None, :], dq.to(DQ.dtype.element_ty), mask=mask_d)
            dqs = tl.load(DQH + row[:, None] * W + D + cn[None, :], mask=mask_n, other=0.0)
            u = dqs.to(tl.float32) * tl.exp(x)[:, None]           # d/d(s C_rot)
            cr = tl.load(CR + ssm, mask=mask_n, other=0.0).to(tl.float32)
            tl.store(DCR + ssm, (s * u).to(DCR.dtype.element_ty), mask=mask_n)
            ds += tl.sum(u * cr, 1)
            dg += s * tl.sum(u * cr, 1)
        if HAS_DKH:
            dk += tl.load(DKH + row[:, None] * W + cd[None, :], mask=mask_d, other=0.0).to(tl.float32)
            dks = tl.load(DKH + row[:, None] * W + D + cn[None, :], mask=mask_n, other=0.0)
            u = dks.to(tl.float32) * tl.exp(-x)[:, None]
            br = tl.load(BR + ssm, mask=mask_n, other=0.0).to(tl.float32)
            tl.store(DBR + ssm, (s * u).to(DBR.dtype.element_ty), mask=mask_n)
            ds += tl.sum(u * br, 1)
            dg -= s * tl.sum(u * br, 1)
        tl.store(DG + row, dg, mask=mask_t)
        tl.store(DS + row, ds, mask=mask_t)
    dk_off = ((i_b * T + rows[:, None]) * HK + i_hk) * D + cd[None, :]
    tl.store(DK + dk_off, dk.to(DK.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------

def _blocks(d: int, n: int, rows: tuple[int, int] = (64, 16)) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, BLOCK_N): ``rows`` (the family table's entry) gives BLOCK_T
    for rows of d + n <= 128 and for wider ones (the backward's wide tiles spill,
    ``python -m benchmarks.static``)."""
    block_d, block_n = triton.next_power_of_2(d), triton.next_power_of_2(n)
    block_t = 32 if _INTERPRET else rows[0] if block_d + block_n <= 128 else rows[1]
    return block_t, block_d, block_n


def _launch(kernel_name, dev, dtype, d, n, launch_one):
    """``launch_one(BLOCK_T, BLOCK_D, BLOCK_N)`` through the family table's augment
    entries (the safety net of ``configs.run``)."""
    family = configs.launch_family(dev)
    entries = [(64, 16)] if family is None else configs.others("augment", family, dtype)
    configs.run(kernel_name, dev, family, (d, n), entries, lambda rows: launch_one(*_blocks(d, n, rows)))


def _augment_fwd(q, k, C_rot, B_rot, g, s, c, width):
    b, t, h, d = q.shape
    hk, n = k.shape[2], C_rot.shape[-1]
    Qh = torch.empty(b, t, h, width, dtype=_store_dtype(q.dtype), device=q.device)
    Kh = torch.empty(b, t, h, width, dtype=_store_dtype(q.dtype), device=q.device)
    if Qh.numel():
        q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
        C_rot, B_rot, g, s, c = (x.contiguous() for x in (C_rot, B_rot, g, s, c))
        _launch("_augment_fwd_kernel", q.device, q.dtype, d, n, lambda block_t, block_d, block_n:
                _augment_fwd_kernel[(triton.cdiv(t, block_t), b * h)](
                    q, k, C_rot, B_rot, g, s, c, Qh, Kh, t, h, hk, d, n, width,
                    *q.stride()[:3], *k.stride()[:3],
                    BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_N=block_n))
    return Qh.to(q.dtype), Kh.to(q.dtype)


def _augment_bwd(dQh, dKh, C_rot, B_rot, g, s, c, d, hk):
    """Returns dq, dk (dQhat's dtype), dC_rot, dB_rot, and dg (b, t, h), ds (h,),
    dc (b, h) in float32."""
    b, t, h, n = C_rot.shape
    dtype, dev = (dQh if dQh is not None else dKh).dtype, C_rot.device
    runs = b * t * h > 0
    new = lambda written: torch.empty if runs and written else torch.zeros  # noqa: E731
    dq = new(dQh is not None)(b, t, h, d, dtype=_store_dtype(dtype), device=dev)
    dk = new(True)(b, t, hk, d, dtype=_store_dtype(dtype), device=dev)
    dC = new(dQh is not None)(C_rot.shape, dtype=_store_dtype(C_rot.dtype), device=dev)
    dB = new(dKh is not None)(B_rot.shape, dtype=_store_dtype(B_rot.dtype), device=dev)
    dg = new(True)(b, t, h, dtype=torch.float32, device=dev)
    ds = new(True)(b, t, h, dtype=torch.float32, device=dev)       # per-row parts of ds
    if runs:
        C_rot, B_rot, g, s, c = (x.contiguous() for x in (C_rot, B_rot, g, s, c))
        dQh, dKh = (x.contiguous() if x is not None else None for x in (dQh, dKh))
        _launch("_augment_bwd_kernel", dev, dtype, d, n, lambda block_t, block_d, block_n:
                _augment_bwd_kernel[(triton.cdiv(t, block_t), b * hk)](
                    dQh, dKh, C_rot, B_rot, g, s, c, dq, dk, dC, dB, dg, ds,
                    t, h, hk, d, n, dQh.shape[-1] if dQh is not None else dKh.shape[-1],
                    HAS_DQH=dQh is not None, HAS_DKH=dKh is not None,
                    BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_N=block_n))
    return (dq.to(dtype), dk.to(dtype), dC.to(C_rot.dtype), dB.to(B_rot.dtype),
            dg, ds.sum((0, 1)), -dg.sum(1))


# ----------------------------------------------------------------------------
# Custom ops and autograd
# ----------------------------------------------------------------------------

@torch.library.custom_op("sisa_kernels::augment_fwd", mutates_args=())
def augment_fwd(q: torch.Tensor, k: torch.Tensor, C_rot: torch.Tensor, B_rot: torch.Tensor,
                g: torch.Tensor, s: torch.Tensor, c: torch.Tensor, width: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    return _augment_fwd(q, k, C_rot, B_rot, g, s, c, width)


@augment_fwd.register_fake
def _(q, k, C_rot, B_rot, g, s, c, width):
    b, t, h, _ = q.shape
    return q.new_empty(b, t, h, width), q.new_empty(b, t, h, width)


@torch.library.custom_op("sisa_kernels::augment_bwd", mutates_args=())
def augment_bwd(dQh: Optional[torch.Tensor], dKh: Optional[torch.Tensor], C_rot: torch.Tensor,
                B_rot: torch.Tensor, g: torch.Tensor, s: torch.Tensor, c: torch.Tensor,
                d: int, hk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                          torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _augment_bwd(dQh, dKh, C_rot, B_rot, g, s, c, d, hk)


@augment_bwd.register_fake
def _(dQh, dKh, C_rot, B_rot, g, s, c, d, hk):
    b, t, h, n = C_rot.shape
    dtype = (dQh if dQh is not None else dKh).dtype
    f32 = dict(dtype=torch.float32)
    return (C_rot.new_empty(b, t, h, d, dtype=dtype), C_rot.new_empty(b, t, hk, d, dtype=dtype),
            torch.empty_like(C_rot), torch.empty_like(B_rot), C_rot.new_empty(b, t, h, **f32),
            C_rot.new_empty(h, **f32), C_rot.new_empty(b, h, **f32))


def _setup_context(ctx, inputs, output):
    q, k, C_rot, B_rot, g, s, c, width = inputs
    ctx.save_for_backward(C_rot, B_rot, g, s, c)
    ctx.d, ctx.hk = q.shape[-1], k.shape[2]
    ctx.dtypes = (g.dtype, s.dtype, c.dtype)


def _backward(ctx, dQh, dKh):
    C_rot, B_rot, g, s, c = ctx.saved_tensors
    if dQh is None and dKh is None:
        return (None,) * 8
    dq, dk, dC, dB, dg, ds, dc = augment_bwd(dQh, dKh, C_rot, B_rot, g, s, c, ctx.d, ctx.hk)
    gd, sd, cd = ctx.dtypes
    return dq, dk, dC, dB, dg.to(gd), ds.to(sd), dc.to(cd), None


augment_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------

def augment_qk(q: torch.Tensor, k: torch.Tensor, C_rot: torch.Tensor, B_rot: torch.Tensor,
               g: torch.Tensor, lam: torch.Tensor, c: torch.Tensor, width: Optional[int] = None):
    """The paper's augmented Qhat, Khat (docs/design.md section 3), fused and differentiable.

    Args:
        q:      (b, t, h, d)      fp32, fp16 or bf16 (k the same dtype)
        k:      (b, t, hk, d)     hk divides h; repeated to h heads in Khat
        C_rot, B_rot: (b, t, h, n) rotated SSM projections (from ``ssm_scan``)
        g:      (b, t, h)         float64 cumulative log-decay (g - c is taken in float64)
        lam:    (h,)              > 0; s = d**0.25 sqrt(lam) per head
        c:      (b, h)            float64 offset; exp(g - c) is not clamped
        width:  last dim of the outputs, >= d + n (default d + n); zero padded
    Returns:
        Qhat, Khat: (b, t, h, width) in q's dtype,
        Qhat = [q, s exp(g - c) C_rot, 0], Khat = [k_rep, s exp(c - g) B_rot, 0];
        the exponentials and products are computed in float32.
    Gradients flow to q, k, C_rot, B_rot, g, lam and c. q and k are read through
    their strides if their last dim is contiguous; other inputs are made contiguous.
    """
    b, t, h, d = q.shape
    hk, n = k.shape[2], C_rot.shape[-1]
    width = d + n if width is None else width
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k.dtype != q.dtype:
        raise TypeError(f"augment_qk: q, k must share one of fp32/fp16/bf16, got {q.dtype}, {k.dtype}")
    if (k.shape[:2] != q.shape[:2] or k.shape[3] != d or h % hk or B_rot.shape != C_rot.shape
            or C_rot.shape[:3] != q.shape[:3] or tuple(g.shape) != (b, t, h)
            or tuple(lam.shape) != (h,) or tuple(c.shape) != (b, h) or width < d + n):
        raise ValueError("augment_qk: inconsistent shapes " + ", ".join(
            f"{nm} {tuple(x.shape)}" for nm, x in zip("q k C_rot B_rot g lam c".split(),
                                                      (q, k, C_rot, B_rot, g, lam, c)))
            + f", width {width}")
    s = d ** 0.25 * lam.float().sqrt()
    return augment_fwd(q, k, C_rot, B_rot, g.to(torch.float64), s, c.to(torch.float64), width)
