"""Fused SISA scan: g = g0 + cumsum(log_alpha), Phi = phi0 + cumsum(theta), and
the rotated projections C_rot = R(Phi) C, B_rot = R(Phi) B, in one pass over t.

Layout of this file, top to bottom: Triton kernels, host launchers, the torch
custom ops with their fake (meta) versions and autograd, the public ``ssm_scan``.
``sisa_kernels.scan_ref`` is the same chunked maths in plain PyTorch.

One program owns one (batch, head, block of BLOCK_P angle pairs) and walks t in
chunks of BLOCK_T: ``tl.cumsum`` inside a chunk plus a carried total; the first
pair block of each (batch, head) also scans g. The carried state lives in the
(b, h) and (b, h, n/2) state buffers: they hold g0, phi0 (or zeros) on entry and
g_last, phi_last on exit (the backward does the same with the gradients). The
backward walks the chunks in reverse: two reverse cumulative sums (of dg and of
dPhi) plus the rotation's adjoint; it rebuilds Phi from the final state as
Phi_t = Phi_last - sum_{s>t} theta_s, so no Phi is stored between the passes.
g, its states and its running total are float64 whatever the inputs' dtype: a
float32 g spaced 1e-3..6e-2 nats apart at |g| ~ 1e4..1e6 would make g_i - g_j of
nearby tokens wrong by that much (docs/design.md section 5). The other state (Phi,
its totals, cos/sin) is float32, or float64 for float64 inputs; the gradients of g
(dlog_alpha, dg0) are accumulated in that dtype too.

Local memory: ``tl.cos`` / ``tl.sin`` compile to libdevice's cosf / sinf, whose
reduction of large angles (the Payne-Hanek branch, taken for |Phi| above ~1e5) keeps a
28-byte array in local memory. ptxas reports it as every scan kernel's 32-byte stack
frame. The 8-16 B some (arch, dtype) pairs spill besides are ptxas trading registers
for occupancy: the same PTX with ``.maxnreg 255`` spills nothing (``python -m
benchmarks.static`` reports both).
"""

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from . import configs
from .errors import KernelLaunchError
from .scan_ref import scan_ref_backward

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------

@triton.jit
def _rotate(x, y, cos, sin):
    """(x, y) -> (x cos - y sin, x sin + y cos); R^T is _rotate(x, y, cos, -sin)."""
    return x * cos - y * sin, x * sin + y * cos


@triton.jit
def _program(H, P, BLOCK_P: tl.constexpr):
    """This program's batch, head, flat (batch, head) index, its pair indices
    (int64) and their mask."""
    pid_bh = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return pid_bh // H, pid_bh % H, pid_bh, p.to(tl.int64), p < P


@triton.jit
def _rotate_tile(Z, ZR, in_x, s_n, out_x, mask, cos, sin, ACC: tl.constexpr):
    """ZR[out] = R(Phi) Z[in] for one (BLOCK_T, BLOCK_P) tile of pairs."""
    x = tl.load(Z + in_x, mask=mask, other=0.0).to(ACC)
    y = tl.load(Z + in_x + s_n, mask=mask, other=0.0).to(ACC)
    ox, oy = _rotate(x, y, cos, sin)
    tl.store(ZR + out_x, ox.to(ZR.dtype.element_ty), mask=mask)
    tl.store(ZR + out_x + 1, oy.to(ZR.dtype.element_ty), mask=mask)


@triton.jit
def _rotate_tile_bwd(Z, DZR, DZ, in_x, s_n, out_x, mask, cos, sin, ACC: tl.constexpr):
    """DZ[out] = R(Phi)^T DZR[out]; returns this tile's dPhi = gy*ox - gx*oy."""
    ox, oy = _rotate(tl.load(Z + in_x, mask=mask, other=0.0).to(ACC),
                     tl.load(Z + in_x + s_n, mask=mask, other=0.0).to(ACC), cos, sin)
    gx = tl.load(DZR + out_x, mask=mask, other=0.0).to(ACC)
    gy = tl.load(DZR + out_x + 1, mask=mask, other=0.0).to(ACC)
    dx, dy = _rotate(gx, gy, cos, -sin)
    tl.store(DZ + out_x, dx.to(DZ.dtype.element_ty), mask=mask)
    tl.store(DZ + out_x + 1, dy.to(DZ.dtype.element_ty), mask=mask)
    return gy * ox - gx * oy


@triton.jit
def _seg_add(a, fa, b, fb):
    """Combine of a segmented sum: a flag starts a new segment (in scan order)."""
    return tl.where(fb != 0, b, a + b), fa | fb


@triton.jit
def _seg_cumsum(x, flags, REVERSE: tl.constexpr):
    """Cumulative sum along axis 0 that restarts where flags != 0 (int32, x's shape;
    reverse: restarts at flagged rows walking backwards)."""
    out, _ = tl.associative_scan((x, flags), 0, _seg_add, reverse=REVERSE)
    return out


@triton.jit
def _segments(rows, mask_t, i_b, i_h, H, T, CU, SEQ, IS_VARLEN: tl.constexpr):
    """For chunk rows: (is_start, is_end) as int32 and the state row seq * H + head of
    each row's sequence: the batch row, or (IS_VARLEN) its packed sequence."""
    if IS_VARLEN:
        seq = tl.load(SEQ + rows, mask=mask_t, other=0).to(tl.int64)
        start = tl.load(CU + seq, mask=mask_t, other=-1)
        end = tl.load(CU + seq + 1, mask=mask_t, other=-1)
    else:
        seq = i_b + 0 * rows
        start = 0 * rows
        end = T + 0 * rows
    is_start = ((rows == start) & mask_t).to(tl.int32)
    is_end = ((rows == end - 1) & mask_t).to(tl.int32)
    return is_start, is_end, seq * H + i_h


@triton.jit
def _at_row(x, dt, row):
    """x's entry along axis 0 at chunk row ``row``, exactly (a masked sum); dt: the
    chunk's row offsets, shaped to broadcast against x."""
    return tl.sum(tl.where(dt == row, x, 0.0), 0)


@triton.jit
def _scan_fwd_kernel(
    C, B, LA, TH,                                 # inputs
    CR, BR, G,                                    # outputs (contiguous)
    G0, PHI0, G_LAST, PHI_LAST,                   # states (n_states, h), (n_states, h, P)
    CU, SEQ,                                      # IS_VARLEN: cu_seqlens, sequence of each row
    T, H, P,                                      # P = n / 2 angle pairs
    s_cb, s_ct, s_ch, s_cn,                       # strides of C and of B (equal)
    s_lb, s_lt, s_lh,                             # strides of log_alpha
    s_tb, s_tt, s_th, s_tp,                       # strides of theta
    IS_VARLEN: tl.constexpr, ACC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Segmented scans: each sequence (a batch row, or with IS_VARLEN a packed
    sequence) starts from its G0 / PHI0 row and leaves its last value in G_LAST /
    PHI_LAST; a chunk carries the running total of its last row into the next."""
    i_b, i_h, pid_bh, p, mask_p = _program(H, P, BLOCK_P)
    dt = tl.arange(0, BLOCK_T)

    # g: one scalar per step, done by the first pair block only, in float64.
    if tl.program_id(0) == 0:
        g_carry = tl.zeros([], dtype=tl.float64)
        for t0 in range(0, T, BLOCK_T):
            rows = (t0 + dt).to(tl.int64)
            mask_t = rows < T
            is_start, is_end, state = _segments(rows, mask_t, i_b, i_h, H, T, CU, SEQ, IS_VARLEN)
            la = tl.load(LA + i_b * s_lb + rows * s_lt + i_h * s_lh, mask=mask_t, other=0.0).to(tl.float64)
            la += tl.load(G0 + state, mask=is_start != 0, other=0.0).to(tl.float64)
            la += tl.where((dt == 0) & (is_start == 0), g_carry, 0.0)
            g = _seg_cumsum(la, is_start, False)
            tl.store(G + (i_b * T + rows) * H + i_h, g, mask=mask_t)
            tl.store(G_LAST + state, g, mask=is_end != 0)
            g_carry = _at_row(g, dt, tl.minimum(T - t0, BLOCK_T) - 1)

    # Phi and the rotation, BLOCK_P pairs wide.
    phi_carry = tl.zeros([BLOCK_P], dtype=ACC)
    c_base = C + i_b * s_cb + i_h * s_ch
    b_base = B + i_b * s_cb + i_h * s_ch
    for t0 in range(0, T, BLOCK_T):
        rows = (t0 + dt).to(tl.int64)
        mask_t = rows < T
        mask = mask_t[:, None] & mask_p[None, :]
        is_start, is_end, state = _segments(rows, mask_t, i_b, i_h, H, T, CU, SEQ, IS_VARLEN)
        at = state[:, None] * P + p[None, :]
        th = tl.load(TH + i_b * s_tb + rows[:, None] * s_tt + i_h * s_th + p[None, :] * s_tp,
                     mask=mask, other=0.0).to(ACC)
        th += tl.load(PHI0 + at, mask=mask & (is_start != 0)[:, None], other=0.0).to(ACC)
        th += tl.where(((dt == 0) & (is_start == 0))[:, None], phi_carry[None, :], 0.0)
        phi = _seg_cumsum(th, tl.broadcast_to(is_start[:, None], th.shape), False)
        tl.store(PHI_LAST + at, phi, mask=mask & (is_end != 0)[:, None])
        phi_carry = _at_row(phi, dt[:, None], tl.minimum(T - t0, BLOCK_T) - 1)
        cos, sin = tl.cos(phi), tl.sin(phi)

        in_x = rows[:, None] * s_ct + (2 * p)[None, :] * s_cn      # x = z[2m]; y = z[2m+1]
        out_x = ((i_b * T + rows[:, None]) * H + i_h) * (2 * P) + (2 * p)[None, :]
        _rotate_tile(c_base, CR, in_x, s_cn, out_x, mask, cos, sin, ACC)
        _rotate_tile(b_base, BR, in_x, s_cn, out_x, mask, cos, sin, ACC)


@triton.jit
def _scan_bwd_kernel(
    C, B, TH, PHI_LAST,                           # saved forward inputs / output
    DCR, DBR, DG,                                 # incoming grads (contiguous)
    DC, DB, DLA, DTH,                             # outputs (contiguous)
    DG_LAST, DPHI_LAST, DG0, DPHI0,               # in: grads of the final states; out: of the initial
    CU, SEQ,
    T, H, P,
    s_cb, s_ct, s_ch, s_cn,                       # strides of C and of B (equal)
    s_tb, s_tt, s_th, s_tp,                       # strides of theta
    HAS_DCR: tl.constexpr, HAS_DBR: tl.constexpr, HAS_DG: tl.constexpr,
    IS_VARLEN: tl.constexpr, ACC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The chunks in reverse: segmented reverse cumulative sums that restart at each
    sequence's last row (where the grad of its final state enters) and leave their
    total at its first row (the grad of its initial state)."""
    i_b, i_h, pid_bh, p, mask_p = _program(H, P, BLOCK_P)
    dt = tl.arange(0, BLOCK_T)
    n_chunks = tl.cdiv(T, BLOCK_T)

    # dlog_alpha = reverse_cumsum(dg) + d g_last; dg0 = the total.
    if tl.program_id(0) == 0:
        dg_carry = tl.zeros([], dtype=ACC)
        for k in range(0, n_chunks):
            rows = ((n_chunks - 1 - k) * BLOCK_T + dt).to(tl.int64)
            mask_t = rows < T
            is_start, is_end, state = _segments(rows, mask_t, i_b, i_h, H, T, CU, SEQ, IS_VARLEN)
            if HAS_DG:
                dg = tl.load(DG + (i_b * T + rows) * H + i_h, mask=mask_t, other=0.0).to(ACC)
            else:
                dg = tl.zeros([BLOCK_T], dtype=ACC)
            dg += tl.load(DG_LAST + state, mask=is_end != 0, other=0.0).to(ACC)
            dg += tl.where((dt == tl.minimum(T - (n_chunks - 1 - k) * BLOCK_T, BLOCK_T) - 1)
                           & (is_end == 0), dg_carry, 0.0)
            dla = _seg_cumsum(dg, is_end, True)
            tl.store(DLA + (i_b * T + rows) * H + i_h, dla, mask=mask_t)
            tl.store(DG0 + state, dla, mask=is_start != 0)
            dg_carry = _at_row(dla, dt, 0)

    # dtheta = reverse_cumsum(dPhi), dPhi = sum over C and B of gy*ox - gx*oy; dz = R^T dz_rot.
    # Phi is rebuilt from the final state: Phi_t = Phi_last - sum_{s > t in its sequence} theta_s.
    th_carry = tl.zeros([BLOCK_P], dtype=ACC)
    dphi_carry = tl.zeros([BLOCK_P], dtype=ACC)
    c_base = C + i_b * s_cb + i_h * s_ch
    b_base = B + i_b * s_cb + i_h * s_ch
    for k in range(0, n_chunks):
        t0 = (n_chunks - 1 - k) * BLOCK_T
        rows = (t0 + dt).to(tl.int64)
        mask_t = rows < T
        mask = mask_t[:, None] & mask_p[None, :]
        is_start, is_end, state = _segments(rows, mask_t, i_b, i_h, H, T, CU, SEQ, IS_VARLEN)
        at = state[:, None] * P + p[None, :]
        ends = tl.broadcast_to(is_end[:, None], [BLOCK_T, BLOCK_P])
        carry_in = ((dt == tl.minimum(T - t0, BLOCK_T) - 1) & (is_end == 0))[:, None]
        th = tl.load(TH + i_b * s_tb + rows[:, None] * s_tt + i_h * s_th + p[None, :] * s_tp,
                     mask=mask, other=0.0).to(ACC)
        th_after = _seg_cumsum(th + tl.where(carry_in, th_carry[None, :], 0.0), ends, True)
        th_carry = _at_row(th_after, dt[:, None], 0)
        phi = tl.load(PHI_LAST + at, mask=mask, other=0.0).to(ACC) - (th_after - th)
        cos, sin = tl.cos(phi), tl.sin(phi)

        in_x = rows[:, None] * s_ct + (2 * p)[None, :] * s_cn
        out_x = ((i_b * T + rows[:, None]) * H + i_h) * (2 * P) + (2 * p)[None, :]
        dphi = tl.load(DPHI_LAST + at, mask=mask & (is_end != 0)[:, None], other=0.0).to(ACC)
        if HAS_DCR:
            dphi += _rotate_tile_bwd(c_base, DCR, DC, in_x, s_cn, out_x, mask, cos, sin, ACC)
        if HAS_DBR:
            dphi += _rotate_tile_bwd(b_base, DBR, DB, in_x, s_cn, out_x, mask, cos, sin, ACC)
        dth = _seg_cumsum(dphi + tl.where(carry_in, dphi_carry[None, :], 0.0), ends, True)
        dphi_carry = _at_row(dth, dt[:, None], 0)
        dt_off = ((i_b * T + rows[:, None]) * H + i_h) * P + p[None, :]
        tl.store(DTH + dt_off, dth.to(DTH.dtype.element_ty), mask=mask)
        tl.store(DPHI0 + at, dth, mask=mask & (is_start != 0)[:, None])


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


G_DTYPE = torch.float64     # g, g0, g_last: differences of nearby tokens stay exact at any |g|


def _block_sizes(n_pairs: int, n_bh: int, device: torch.device, elements: int = 1024) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_P, num_warps). Interpreter: small fixed chunks. CUDA: narrow
    the pair block until there are ~4 programs per SM (the loop over t is serial),
    then size BLOCK_T for a tile of ``elements`` (the family table's entry; at most
    128 rows), 4 warps from 512 elements or 128 rows (with 2 warps the 128 x 2 tile the
    narrowing leaves spills on sm_80 and sm_89, ``python -m benchmarks.static``)."""
    block_p = min(triton.next_power_of_2(n_pairs), 32)
    if _INTERPRET or device.type != "cuda":
        return 64, block_p, 4
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    while block_p > 2 and n_bh * triton.cdiv(n_pairs, block_p) < target:
        block_p //= 2
    block_t = max(16, min(128, elements // block_p))
    return block_t, block_p, 4 if block_t * block_p >= 512 or block_t >= 128 else 2


def _launch(kernel_name, dev, dtype, launch_one):
    """``launch_one(elements, options)`` through the family table's scan entries (the
    safety net of ``configs.run``). An entry is a tile's elements, or (elements,
    maxnreg): Triton's register cap, passed on in ``options``."""
    family = configs.launch_family(dev)
    entries = [1024] if family is None else configs.others("scan", family, dtype)

    def one(entry):
        elements, *cap = entry if isinstance(entry, tuple) else (entry,)
        launch_one(elements, {"maxnreg": cap[0]} if cap else {})
    configs.run(kernel_name, dev, family, None, entries, one)


def _store_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the kernels write. Triton's interpreter casts float32 -> bfloat16 by
    truncation (compiled code rounds to nearest even), so under the interpreter
    bfloat16 results are written as float32 and rounded by PyTorch."""
    return torch.float32 if _INTERPRET and dtype == torch.bfloat16 else dtype


def _same_strides(C: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels take one stride set for C and B: copy both once if they differ."""
    if C.stride() != B.stride():
        return C.contiguous(), B.contiguous()
    return C, B


def _segment_index(cu_seqlens, t):
    """(cu_seqlens (n_seqs + 1,) int32, seq (t,) int32: the sequence of each packed
    row) for the kernels, on the device, without a host sync; or two dummies."""
    if cu_seqlens is None:
        return None, None
    cu = cu_seqlens.to(torch.int32)
    seq = torch.searchsorted(cu, torch.arange(t, device=cu.device, dtype=torch.int32), right=True) - 1
    return cu, seq.to(torch.int32)


def _states(x, n_states, shape_tail, sd, dev):
    """A fresh (n_states, *shape_tail) state buffer: x's values, or zeros."""
    return torch.zeros(n_states, *shape_tail, dtype=sd, device=dev) if x is None else x.to(sd, copy=True)


def _scan_fwd(C, B, log_alpha, theta, g0, phi0, cu_seqlens=None):
    b, t, h, n = C.shape
    P, sd, dev = n // 2, _state_dtype(C.dtype), C.device
    n_states = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    C_rot = torch.empty(C.shape, dtype=_store_dtype(C.dtype), device=dev)
    B_rot = torch.empty(B.shape, dtype=_store_dtype(B.dtype), device=dev)
    g = torch.empty(b, t, h, dtype=G_DTYPE, device=dev)
    g0, phi0 = _states(g0, n_states, (h,), G_DTYPE, dev), _states(phi0, n_states, (h, P), sd, dev)
    g_last, phi_last = g0.clone(), phi0.clone()        # an empty sequence keeps its initial state
    if t > 0 and b * h > 0:
        C, B = _same_strides(C, B)
        cu, seq = _segment_index(cu_seqlens, t)

        def launch(elements, options):
            block_t, block_p, warps = _block_sizes(P, b * h, dev, elements)
            _scan_fwd_kernel[(triton.cdiv(P, block_p), b * h)](
                C, B, log_alpha, theta, C_rot, B_rot, g, g0, phi0, g_last, phi_last, cu, seq,
                t, h, P, *C.stride(), *log_alpha.stride(), *theta.stride(),
                IS_VARLEN=cu is not None, ACC=_TL_ACC[sd], BLOCK_T=block_t, BLOCK_P=block_p, num_warps=warps, **options,
            )
        _launch("_scan_fwd_kernel", dev, C.dtype, launch)
    return C_rot.to(C.dtype), B_rot.to(B.dtype), g, g_last, phi_last


def _scan_bwd(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last, dphi_last, cu_seqlens=None):
    """Returns dC, dB (their inputs' dtypes), dtheta (theta's dtype), and
    dlog_alpha (b, t, h), dg0 (n_states, h), dphi0 (n_states, h, n/2) in the state dtype."""
    b, t, h, n = C.shape
    P, sd, dev = n // 2, _state_dtype(C.dtype), C.device
    n_states = phi_last.shape[0]
    runs = t > 0 and b * h > 0
    new = lambda written: torch.empty if runs and written else torch.zeros  # noqa: E731
    dC = new(dC_rot is not None)(C.shape, dtype=_store_dtype(C.dtype), device=dev)
    dB = new(dB_rot is not None)(B.shape, dtype=_store_dtype(B.dtype), device=dev)
    dth = new(True)(theta.shape, dtype=_store_dtype(theta.dtype), device=dev)
    dla = new(True)(b, t, h, dtype=sd, device=dev)
    dg_last, dphi_last = _states(dg_last, n_states, (h,), sd, dev), _states(dphi_last, n_states, (h, P), sd, dev)
    dg0, dphi0 = dg_last.clone(), dphi_last.clone()     # an empty sequence passes its grads through
    if runs:
        C, B = _same_strides(C, B)
        dC_rot, dB_rot, dg = (x.contiguous() if x is not None else None for x in (dC_rot, dB_rot, dg))
        cu, seq = _segment_index(cu_seqlens, t)

        def launch(elements, options):
            block_t, block_p, warps = _block_sizes(P, b * h, dev, elements)
            _scan_bwd_kernel[(triton.cdiv(P, block_p), b * h)](
                C, B, theta, phi_last, dC_rot, dB_rot, dg, dC, dB, dla, dth, dg_last, dphi_last, dg0, dphi0,
                cu, seq, t, h, P, *C.stride(), *theta.stride(),
                HAS_DCR=dC_rot is not None, HAS_DBR=dB_rot is not None, HAS_DG=dg is not None,
                IS_VARLEN=cu is not None, ACC=_TL_ACC[sd], BLOCK_T=block_t, BLOCK_P=block_p, num_warps=warps, **options,
            )
        _launch("_scan_bwd_kernel", dev, C.dtype, launch)
    return dC.to(C.dtype), dB.to(B.dtype), dla, dth.to(theta.dtype), dg0, dphi0


# ----------------------------------------------------------------------------
# Custom ops (traceable by torch.compile) and autograd
# ----------------------------------------------------------------------------

@torch.library.custom_op("sisa_kernels::scan_fwd", mutates_args=())
def scan_fwd(C: torch.Tensor, B: torch.Tensor, log_alpha: torch.Tensor, theta: torch.Tensor,
             g0: Optional[torch.Tensor], phi0: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor] = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _scan_fwd(C, B, log_alpha, theta, g0, phi0, cu_seqlens)


@scan_fwd.register_fake
def _(C, B, log_alpha, theta, g0, phi0, cu_seqlens=None):
    b, t, h, n = C.shape
    sd = _state_dtype(C.dtype)
    n_states = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (torch.empty_like(C, memory_format=torch.contiguous_format),
            torch.empty_like(B, memory_format=torch.contiguous_format),
            C.new_empty(b, t, h, dtype=G_DTYPE), C.new_empty(n_states, h, dtype=G_DTYPE),
            C.new_empty(n_states, h, n // 2, dtype=sd))


@torch.library.custom_op("sisa_kernels::scan_bwd", mutates_args=())
def scan_bwd(C: torch.Tensor, B: torch.Tensor, theta: torch.Tensor, phi_last: torch.Tensor,
             dC_rot: Optional[torch.Tensor], dB_rot: Optional[torch.Tensor],
             dg: Optional[torch.Tensor], dg_last: Optional[torch.Tensor],
             dphi_last: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor] = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                        torch.Tensor]:
    return _scan_bwd(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last, dphi_last, cu_seqlens)


@scan_bwd.register_fake
def _(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last, dphi_last, cu_seqlens=None):
    b, t, h, n = C.shape
    sd = _state_dtype(C.dtype)
    n_states = phi_last.shape[0]
    return (torch.empty_like(C, memory_format=torch.contiguous_format),
            torch.empty_like(B, memory_format=torch.contiguous_format),
            C.new_empty(b, t, h, dtype=sd),
            torch.empty_like(theta, memory_format=torch.contiguous_format),
            C.new_empty(n_states, h, dtype=sd), C.new_empty(n_states, h, n // 2, dtype=sd))


def _setup_context(ctx, inputs, output):
    C, B, log_alpha, theta, g0, phi0, cu_seqlens = inputs
    ctx.save_for_backward(C, B, theta, output[4], cu_seqlens)
    ctx.set_materialize_grads(False)       # unused outputs (often g_last, phi_last) pass None
    ctx.la_dtype = log_alpha.dtype
    ctx.g0_dtype = g0.dtype if g0 is not None else None
    ctx.phi0_dtype = phi0.dtype if phi0 is not None else None


def _backward(ctx, dC_rot, dB_rot, dg, dg_last, dphi_last):
    C, B, theta, phi_last, cu_seqlens = ctx.saved_tensors
    try:
        dC, dB, dla, dth, dg0, dphi0 = scan_bwd(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last,
                                                dphi_last, cu_seqlens)
    except KernelLaunchError as exc:       # no backward config launches on this GPU
        exc.warn_once("the PyTorch reference backward (scan_ref)")
        dC, dB, dla, dth, dg0, dphi0 = _reference_bwd(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last,
                                                      dphi_last, cu_seqlens)
    return (dC, dB, dla.to(ctx.la_dtype), dth,
            dg0.to(ctx.g0_dtype) if ctx.g0_dtype is not None else None,
            dphi0.to(ctx.phi0_dtype) if ctx.phi0_dtype is not None else None, None)


def _reference_bwd(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last, dphi_last, cu_seqlens):
    """scan_ref_backward (missing incoming gradients as zeros), per packed sequence."""
    b, t, h, n = C.shape
    sd, z = _state_dtype(C.dtype), torch.zeros
    dC_rot = z(C.shape, dtype=C.dtype, device=C.device) if dC_rot is None else dC_rot
    dB_rot = z(B.shape, dtype=B.dtype, device=B.device) if dB_rot is None else dB_rot
    dg = z(b, t, h, dtype=sd, device=C.device) if dg is None else dg
    dg_last = z(phi_last.shape[:2], dtype=sd, device=C.device) if dg_last is None else dg_last
    dphi_last = torch.zeros_like(phi_last) if dphi_last is None else dphi_last
    if cu_seqlens is None:
        return scan_ref_backward(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last, dphi_last)
    cu = cu_seqlens.tolist()
    parts = [scan_ref_backward(*(x[:, a:e] for x in (C, B, theta)), phi_last[i:i + 1],
                               *(x[:, a:e] for x in (dC_rot, dB_rot, dg)), dg_last[i:i + 1], dphi_last[i:i + 1])
             for i, (a, e) in enumerate(zip(cu[:-1], cu[1:]))]
    return tuple(torch.cat(x, dim=1 if j < 4 else 0) for j, x in enumerate(zip(*parts)))


scan_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------

def ssm_scan(C: torch.Tensor, B: torch.Tensor, log_alpha: torch.Tensor, theta: torch.Tensor,
             g0: Optional[torch.Tensor] = None, phi0: Optional[torch.Tensor] = None,
             cu_seqlens: Optional[torch.Tensor] = None):
    """SISA's SSM scan, fused, differentiable in every input.

    Args:
        C, B:      (b, t, h, n)  n = d_state, even; fp32, fp16, bf16 or fp, same dtype.
        log_alpha: (b, t, h)     per-token log-decay (<= 0 in SISA; not checked).
        theta:     (b, t, h, n/2) per-token phase increments.
        g0:        (b, h) or None     initial g (continuing an earlier scan).
        phi0:      (b, h, n/2) or None initial Phi.
        cu_seqlens: optional int32 (n_seqs + 1,) for a packed batch (b = 1, not
                   checked): every sequence restarts from its own state row, so g0,
                   phi0, g_last, phi_last have n_seqs rows instead of b. One launch
                   whatever n_seqs, no host sync.
    Returns:
        C_rot, B_rot: (b, t, h, n) in C's / B's dtype, contiguous:
                      R(Phi_t) applied to each interleaved pair (z[2m], z[2m+1]).
        g:            (b, t, h)      g0 + cumsum_t(log_alpha), float64
        g_last:       (b, h)         g[:, -1]; g0 (or zeros) when t == 0, float64
        phi_last:     (b, h, n/2)    Phi[:, -1]; phi0 (or zeros) when t == 0
    g and g_last are float64 for every input dtype (summed in float64: nearby
    differences g_i - g_j keep float32 accuracy at any |g|); phi_last is float32
    (float64 when C is float64). Inputs may be
    non-contiguous: the kernels read C, B, log_alpha, theta through their strides
    (C and B are copied once if their strides differ); g0, phi0 are copied and incoming
    gradients are made contiguous. Runs on CUDA, or on CPU under TRITON_INTERPRET=1.
    """
    for name, x in (("C", C), ("B", B), ("log_alpha", log_alpha), ("theta", theta),
                    ("g0", g0), ("phi0", phi0)):
        if x is not None and x.dtype not in _DTYPES:
            raise TypeError(f"ssm_scan: {name} has unsupported dtype {x.dtype}; "
                            f"expected one of {_DTYPES}")
    if C.dim() != 4 or C.shape != B.shape or C.dtype != B.dtype:
        raise ValueError(f"ssm_scan: C and B must be (b, t, h, n) of one dtype, got "
                         f"{tuple(C.shape)} {C.dtype} and {tuple(B.shape)} {B.dtype}")
    b, t, h, n = C.shape
    if n < 2 or n % 2:
        raise ValueError(f"ssm_scan: d_state must be even and >= 2, got {n}")
    rows = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    expected = {"log_alpha": (log_alpha, (b, t, h)), "theta": (theta, (b, t, h, n // 2)),
                "g0": (g0, (rows, h)), "phi0": (phi0, (rows, h, n // 2))}
    for name, (x, shape) in expected.items():
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"ssm_scan: {name} must have shape {shape}, got {tuple(x.shape)}")
        if x is not None and x.device != C.device:
            raise ValueError(f"ssm_scan: {name} is on {x.device}, C on {C.device}")
    if C.device.type == "cpu" and not _INTERPRET:
        raise RuntimeError("ssm_scan: CPU tensors need TRITON_INTERPRET=1 set before import")
    return scan_fwd(C, B, log_alpha, theta, g0, phi0, cu_seqlens)
