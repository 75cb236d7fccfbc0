"""The scan kernel's maths in plain PyTorch, chunk by chunk, readable by eye.

Same contract and shapes as ``sisa_kernels.scan.ssm_scan`` (see its docstring).
``scan_ref`` walks t in chunks with carried totals exactly as the forward kernel
does; ``scan_ref_backward`` walks the chunks in reverse as the backward kernel
does, rebuilding Phi from the final state; ``augment_ref`` builds the paper's Qhat and
Khat. No Triton; for reading and testing.
"""
from __future__ import annotations

import torch


def _state_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rotate(z, cos, sin):
    """Rotate interleaved pairs of z (..., n) by angles with cos/sin (..., n/2)."""
    x, y = z[..., 0::2], z[..., 1::2]
    return torch.stack((x * cos - y * sin, x * sin + y * cos), dim=-1).flatten(-2)


def scan_ref(C, B, log_alpha, theta, g0=None, phi0=None, chunk=32):
    """Forward: returns (C_rot, B_rot, g, g_last, phi_last)."""
    b, t, h, n = C.shape
    sd = _state_dtype(C.dtype)
    g_carry = g0.to(torch.float64) if g0 is not None else C.new_zeros(b, h, dtype=torch.float64)
    phi_carry = phi0.to(sd) if phi0 is not None else C.new_zeros(b, h, n // 2, dtype=sd)
    C_rot, B_rot, g = [], [], []
    for t0 in range(0, t, chunk):
        sl = slice(t0, t0 + chunk)
        g_c = log_alpha[:, sl].to(torch.float64).cumsum(1) + g_carry[:, None]   # (b, T, h) float64
        phi = theta[:, sl].to(sd).cumsum(1) + phi_carry[:, None]          # (b, T, h, n/2)
        g_carry, phi_carry = g_c[:, -1], phi[:, -1]
        cos, sin = phi.cos(), phi.sin()
        C_rot.append(_rotate(C[:, sl].to(sd), cos, sin).to(C.dtype))
        B_rot.append(_rotate(B[:, sl].to(sd), cos, sin).to(B.dtype))
        g.append(g_c)
    if t == 0:
        return C.clone(), B.clone(), C.new_zeros(b, 0, h, dtype=torch.float64), g_carry, phi_carry
    return torch.cat(C_rot, 1), torch.cat(B_rot, 1), torch.cat(g, 1), g_carry, phi_carry


def scan_ref_backward(C, B, theta, phi_last, dC_rot, dB_rot, dg, dg_last, dphi_last, chunk=32):
    """Backward from the incoming grads of all five outputs (zeros, not None).

    Returns (dC, dB, dlog_alpha, dtheta, dg0, dphi0); the last four in the state dtype.
    """
    sd = _state_dtype(C.dtype)
    t = C.shape[1]
    phi_end = phi_last.to(sd)                       # Phi at the current chunk's last row
    dg_carry, dphi_carry = dg_last.to(sd), dphi_last.to(sd)
    dC, dB, dla, dth = [], [], [], []
    for t0 in reversed(range(0, t, chunk)):
        sl = slice(t0, t0 + chunk)
        th = theta[:, sl].to(sd)
        phi = phi_end[:, None] - (th.flip(1).cumsum(1).flip(1) - th)    # Phi_last - sum_{s>t}
        phi_end = phi_end - th.sum(1)
        cos, sin = phi.cos(), phi.sin()
        dphi = 0
        for z, dz, out in ((C, dC_rot, dC), (B, dB_rot, dB)):
            o, dz = _rotate(z[:, sl].to(sd), cos, sin), dz[:, sl].to(sd)
            dphi = dphi + dz[..., 1::2] * o[..., 0::2] - dz[..., 0::2] * o[..., 1::2]
            out.insert(0, _rotate(dz, cos, -sin).to(z.dtype))              # R(Phi)^T dz
        dth.insert(0, dphi.flip(1).cumsum(1).flip(1) + dphi_carry[:, None])
        dphi_carry = dphi_carry + dphi.sum(1)
        dgc = dg[:, sl].to(sd)
        dla.insert(0, dgc.flip(1).cumsum(1).flip(1) + dg_carry[:, None])
        dg_carry = dg_carry + dgc.sum(1)
    if t == 0:
        return (torch.zeros_like(C), torch.zeros_like(B), dg.to(sd), theta.to(sd),
                dg_carry, dphi_carry)
    return (torch.cat(dC, 1), torch.cat(dB, 1), torch.cat(dla, 1), torch.cat(dth, 1),
            dg_carry, dphi_carry)


def augment_ref(q, k, C_rot, B_rot, g, lam, c, width=None):
    """The paper's Qhat = [q, s exp(g-c) C_rot, 0], Khat = [k_rep, s exp(c-g) B_rot, 0]
    with s = d**0.25 sqrt(lam) (see ``sisa_kernels.augment.augment_qk``)."""
    b, t, h, d = q.shape
    n = C_rot.shape[-1]
    width = d + n if width is None else width
    sd = _state_dtype(q.dtype)
    s = d ** 0.25 * lam.to(sd).sqrt()[:, None]                     # (h, 1)
    x = (g.double() - c.double()[:, None]).to(sd)[..., None]       # (b, t, h, 1); g - c in float64
    pad = q.new_zeros(b, t, h, width - d - n)
    k_rep = k.repeat_interleave(h // k.shape[2], dim=2)
    Qh = torch.cat([q, (s * x.exp() * C_rot.to(sd)).to(q.dtype), pad], -1)
    Kh = torch.cat([k_rep, (s * (-x).exp() * B_rot.to(sd)).to(q.dtype), pad], -1)
    return Qh, Kh
