"""The correctness gate: no provider is timed before it matches the float64 judge.

At each shape the provider runs on a slice of the benchmark inputs (first batch
element, first two query heads and the key/value heads they read, the full
sequence length, so that range problems which only appear at length are caught)
and is compared with ``sisa.naive`` run in float64 on the same values:
the forward outputs, and in ``fwd+bwd`` mode the gradients of every input for a
random upstream gradient. Up to ``full_t`` tokens every query row is checked
with the judge itself; above it the judge's maths is evaluated for a set of query
rows only (``reference_rows``, O(rows * t) memory; tests/test_benchmarks.py checks
it against ``sisa.naive``): evenly spaced rows plus the last rows, which see
every key and the largest decays.

Error per tensor: max |x - ref| / max |ref| (infinite if x has NaN/inf where the
reference is finite); the gate passes when every tensor is within the dtype's
tolerance below. The tolerances separate rounding from bugs: a wrong mask,
decay or gradient formula gives errors of order one.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from sisa.naive import naive_scan, naive_sisa_attention

from .providers import INPUTS, Provider

# (forward, gradients): relative max error allowed. float32 leaves room for TF32
# in Triton's tl.dot on GPUs; 16-bit allows for P and dS rounded to 16 bits.
TOLERANCE = {
    torch.float64: (1e-8, 1e-7),
    torch.float32: (2e-3, 1e-2),
    torch.float16: (1e-2, 3e-2),
    torch.bfloat16: (4e-2, 1e-1),
}
GATE_HEADS = 2
OUTPUT_NAMES = {"sisa": ("out",), "plain": ("out",), "scan": ("C_rot", "B_rot", "g", "g_last", "phi_last")}


@dataclasses.dataclass
class GateResult:
    ok: bool
    err: float            # worst relative error over all checked tensors
    tol: float            # the tolerance that err was held to (forward or gradient)
    worst: str            # which tensor gave err, e.g. "out" or "grad theta"
    rows: str             # "all" or the number of query rows checked


def gate_slice(kind: str, inputs: dict, heads: int = GATE_HEADS) -> dict:
    """Batch element 0, the first ``heads`` query heads and the kv heads they read;
    detached copies that require grad."""
    h = inputs["C"].shape[2] if "C" in inputs else inputs["q"].shape[2]
    gh = min(h, heads)
    out = {}
    for name in INPUTS[kind]:
        x = inputs[name].detach()
        if name == "lam":
            x = x[:gh]
        elif name in ("k", "v"):
            rep = h // x.shape[2]
            x = x[:1, :, : -(-gh // rep)]
        else:
            x = x[:1, :, :gh]
        out[name] = x.clone().requires_grad_()
    return out


def gate_rows(t: int, full_t: int, device, n_rows: int = 256):
    """None (all rows) when t <= full_t, else evenly spaced rows plus the last rows."""
    if t <= full_t:
        return None
    spaced = torch.linspace(0, t - 1, n_rows // 2, device=device).long()
    last = torch.arange(t - n_rows // 2, t, device=device)
    return torch.unique(torch.cat((spaced, last)))


def reference_rows(q, k, v, C, B, log_alpha, theta, lam, rows, softmax_scale=None):
    """sisa.naive's SISA attention for the query rows ``rows`` (1-D, sorted) only.

    Same shapes as ``naive_sisa_attention``; returns (b, len(rows), h, d). Each row
    attends to every key j <= i, so this equals ``naive_sisa_attention(...)[:, rows]``.
    """
    C_rot, B_rot, g, _ = naive_scan(C, B, log_alpha, theta)
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    kk, vv = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    causal = rows[:, None] >= torch.arange(t, device=q.device)[None, :]        # (r, t)
    content = torch.einsum("bihd,bjhd->bhij", q[:, rows], kk) * scale
    gi, gj = g[:, rows].transpose(1, 2)[..., None], g.transpose(1, 2)[:, :, None, :]
    decay = torch.exp((gi - gj).clamp(max=0).masked_fill(~causal, 0))
    ssm = torch.einsum("bihn,bjhn->bhij", C_rot[:, rows], B_rot)
    score = content + lam[None, :, None, None] * decay * ssm
    p = torch.softmax(score.masked_fill(~causal, float("-inf")), dim=-1)
    return torch.einsum("bhij,bjhd->bihd", p, vv)


def judge(kind: str, x: dict, rows=None) -> tuple:
    """The float64 reference outputs for ``kind`` (rows selected for attention)."""
    if kind == "scan":
        C_rot, B_rot, g, (g_last, phi_last) = naive_scan(x["C"], x["B"], x["log_alpha"], x["theta"])
        return C_rot, B_rot, g, g_last, phi_last
    if kind == "plain":  # plain causal attention is SISA with lam = 0
        b, t, h, d = x["q"].shape
        zeros = x["q"].new_zeros
        args = (x["q"], x["k"], x["v"], zeros(b, t, h, 2), zeros(b, t, h, 2), zeros(b, t, h),
                zeros(b, t, h, 1), zeros(h))
    else:
        args = tuple(x[name] for name in INPUTS["sisa"])
    if rows is None:
        return (naive_sisa_attention(*args),)
    return (reference_rows(*args, rows),)


def _rel_err(x, ref) -> float:
    ref = ref.detach()
    x = torch.zeros_like(ref) if x is None else x.detach().to(ref.dtype)
    if not bool(torch.isfinite(x).all()):
        return math.inf
    diff = float((x - ref).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def check(provider: Provider, inputs: dict, mode: str, full_t: int = 1024, seed: int = 0) -> GateResult:
    """Run ``provider`` on the gate slice of ``inputs`` and compare with the judge."""
    x = gate_slice(provider.kind, inputs)
    dtype = x["C"].dtype if provider.kind == "scan" else x["q"].dtype
    fwd_tol, grad_tol = TOLERANCE[dtype]
    t = (x["C"] if provider.kind == "scan" else x["q"]).shape[1]
    rows = None if provider.kind == "scan" else gate_rows(t, full_t, x["q"].device)
    ref_in = {name: val.detach().double().requires_grad_() for name, val in x.items()}

    with torch.set_grad_enabled(mode == "fwd+bwd"):
        outs = provider.run(x, True)
        ref = judge(provider.kind, ref_in, rows)
    if rows is not None:
        outs = (outs[0][:, rows],) + tuple(outs[1:])
    names = OUTPUT_NAMES[provider.kind]
    worst = max(((_rel_err(o, r), name, fwd_tol) for name, o, r in zip(names, outs, ref)),
                key=lambda e: e[0] / e[2])

    if mode == "fwd+bwd":
        gen = torch.Generator(device=ref[0].device).manual_seed(seed + 1)
        douts = [torch.randn(r.shape, generator=gen, device=r.device, dtype=torch.float64).to(o.dtype)
                 for o, r in zip(outs[: provider.n_diff], ref)]
        names = list(x)
        grads = torch.autograd.grad(outs[: provider.n_diff], [x[n] for n in names], douts, allow_unused=True)
        ref_grads = torch.autograd.grad(ref[: provider.n_diff], [ref_in[n] for n in names],
                                        [d.double() for d in douts], allow_unused=True)
        for name, gr, rg in zip(names, grads, ref_grads):
            rg = torch.zeros_like(ref_in[name]) if rg is None else rg
            cand = (_rel_err(gr, rg), f"grad {name}", grad_tol)
            if cand[0] / cand[2] > worst[0] / worst[2]:
                worst = cand
    err, what, tol = worst
    return GateResult(ok=err <= tol, err=err, tol=tol, worst=what,
                      rows="all" if rows is None else str(len(rows)))
