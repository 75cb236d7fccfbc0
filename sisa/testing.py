"""Parity machinery shared by ``python -m sisa.parity`` and the test-suite.

The judge is the naive path in float64. A low-precision result passes
FlashAttention's rule: its error against the float64 reference is within
``2x`` (outputs) or ``3x`` (gradients) of PyTorch's own error, i.e. the naive
path run in that dtype (``upcast=False``), plus a small floor scaled to the dtype.
"""
from __future__ import annotations

import dataclasses

import torch

from .naive import naive_scan, naive_sisa_attention

NAMES = ("q", "k", "v", "C", "B", "log_alpha", "theta", "lam")
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# The kernel tests' floor, relative to the reference's magnitude: their shapes are
# small, so it can be tighter (in float32 both errors are ~1e-7 and their ratio noise).
KERNEL_FLOOR = {torch.float32: 2e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


@dataclasses.dataclass(frozen=True)
class Case:
    """One problem: batch, seqlen, heads, kv heads, head dim, d_state, mean decay/token."""
    b: int
    t: int
    h: int
    hk: int
    d: int
    n: int
    decay: float = 0.0067

    def __str__(self):
        return f"b{self.b} t{self.t} h{self.h}/{self.hk} d{self.d} n{self.n} decay{self.decay:g}"


def make_inputs(case: Case, dtype, device="cpu", seed=0) -> dict:
    """Random inputs for ``case``: q, k, v, C, B in ``dtype``; log_alpha (float32,
    mean ``-case.decay``), theta, lam (float32, in [0.2, 1.2])."""
    gen = torch.Generator().manual_seed(seed)
    c = case

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(device)

    x = {"q": randn(c.b, c.t, c.h, c.d), "k": randn(c.b, c.t, c.hk, c.d), "v": randn(c.b, c.t, c.hk, c.d),
         "C": randn(c.b, c.t, c.h, c.n), "B": randn(c.b, c.t, c.h, c.n),
         "log_alpha": -2 * c.decay * torch.rand(c.b, c.t, c.h, generator=gen, dtype=torch.float64).to(device),
         "theta": randn(c.b, c.t, c.h, c.n // 2, std=0.1),
         "lam": (0.2 + torch.rand(c.h, generator=gen, dtype=torch.float64)).to(device)}
    state = torch.float64 if dtype == torch.float64 else torch.float32
    return {k: v.to(state if k in ("log_alpha", "lam") else dtype) for k, v in x.items()}


def make_scanned(b, t, h, hk, d, n, dtype, log_alpha, device="cpu", seed=0, lam_dtype=torch.float32):
    """Inputs of the attention kernels, through the naive scan: [q, k, v, C_rot, B_rot,
    g, lam], with q, k, v (b, t, h|hk, d) and C_rot, B_rot (b, t, h, n) in ``dtype``,
    g (b, t, h) float64, lam (h,) in ``lam_dtype``. log_alpha: the mean per-token
    log-decay (<= 0), e.g. -0.005 (weak) or -1.0 (strong)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    q, k, v = rnd(b, t, h, d), rnd(b, t, hk, d), rnd(b, t, hk, d)
    C, B = rnd(b, t, h, n, scale=n ** -0.25), rnd(b, t, h, n, scale=n ** -0.25)
    la = (log_alpha * 2 * torch.rand(b, t, h, generator=gen)).to(device)
    theta = rnd(b, t, h, n // 2, scale=0.3)
    C_rot, B_rot, g, _ = naive_scan(C.to(dtype), B.to(dtype), la, theta)
    lam = (torch.rand(h, generator=gen) + 0.3).to(device, lam_dtype)
    return [q.to(dtype), k.to(dtype), v.to(dtype), C_rot, B_rot, g, lam]


def run(fn, inputs: dict, dout=None):
    """Call ``fn(**inputs)``; with ``dout`` also backpropagate it. Returns
    (out, {name: grad} or None)."""
    leaves = {k: v.detach().clone().requires_grad_(dout is not None) for k, v in inputs.items()}
    out = fn(*(leaves[k] for k in NAMES))
    if dout is None:
        return out.detach(), None
    out.backward(dout.to(out.dtype))
    return out.detach(), {k: leaves[k].grad for k in NAMES}


def _err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@dataclasses.dataclass
class Report:
    fwd_err: float
    fwd_tol: float
    grad_err: dict      # name -> error
    grad_tol: dict      # name -> tolerance

    @property
    def worst_grad(self):
        """(name, err/tol) of the gradient closest to its tolerance, or None."""
        if not self.grad_err:
            return None
        return max(((k, self.grad_err[k] / self.grad_tol[k]) for k in self.grad_err), key=lambda kv: kv[1])

    @property
    def ok(self) -> bool:
        grads_ok = all(self.grad_err[k] <= self.grad_tol[k] for k in self.grad_err)
        return self.fwd_err <= self.fwd_tol and grads_ok


def compare(fn, case: Case, dtype, device="cpu", grads=True, seed=0) -> Report:
    """Run ``fn`` (sisa_attention's signature) on ``case`` and judge it against the
    float64 naive path with FlashAttention's rule."""
    x = make_inputs(case, dtype, device, seed)
    x64 = {k: v.double() for k, v in x.items()}
    gen = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(case.b, case.t, case.h, case.d, generator=gen, dtype=torch.float64).to(device) if grads else None
    ref, ref_g = run(naive_sisa_attention, x64, dout)
    low, low_g = run(lambda *a: naive_sisa_attention(*a, upcast=False), x, dout)
    out, out_g = run(fn, x, dout)
    floor = FLOOR[dtype]
    fwd_tol = 2 * _err(low, ref) + floor * max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
    grad_err, grad_tol = {}, {}
    if grads:
        for k in NAMES:
            scale = max(1.0, ref_g[k].abs().max().item() if ref_g[k].numel() else 1.0)
            grad_err[k] = _err(out_g[k], ref_g[k])
            grad_tol[k] = 3 * _err(low_g[k], ref_g[k]) + floor * scale
    return Report(_err(out, ref), fwd_tol, grad_err, grad_tol)
