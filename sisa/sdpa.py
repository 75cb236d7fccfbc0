"""SISA through stock ``scaled_dot_product_attention``: the paper's form and ours.

Both append the SSM term to q and k as n extra channels, so that

    scale * Qhat_i . Khat_j = scale q_i.k_j + lam exp(g_i - g_j) Cr_i.Br_j.

The decay is split into a query factor exp(g_i - c) and a key factor exp(c - g_j).

* ``paper_sdpa_attention`` is the paper's realisation, kept to measure against: one
  offset c per sequence (the midpoint of g), ``g - c`` clamped to [-11, 11], v left
  narrow so PyTorch must use its memory-efficient or math backend. Past 22 nats of
  total decay the clamp silently changes the answer.
* ``sdpa_attention`` is ours and exact at any length: the query axis is cut into
  chunks, each with c = g at the chunk's last row, so every key factor is <= 1 and
  the query factor is bounded by the decay inside the chunk, which the chunking
  keeps below a per-dtype budget. v is zero-padded to the augmented width so the
  fused (CPU) / flash (CUDA) kernels take the call.

Shapes: q (b, t, h, d); k, v (b, t, hk, d); C_rot, B_rot (b, t, h, n); g (b, t, h)
(float32, float64 for float64 inputs); lam (h,).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from . import backends
from .naive import naive_scan, state_dtype

# Largest decay (nats) allowed inside one query chunk. The query factor is at most
# exp(budget) and must stay far from the dtype's maximum after multiplying C_rot;
# key factors are <= 1 and only underflow where the true product is negligible.
DECAY_BUDGET = {torch.float16: 6.0, torch.bfloat16: 40.0, torch.float32: 40.0, torch.float64: 300.0}


def plan_chunks(g: torch.Tensor, budget: float) -> list[tuple[int, int]]:
    """Cut [0, t) into query chunks whose decay span, for every (batch, head), is
    at most ``budget`` nats. g: (b, t, h). One small host transfer (length t)."""
    t = g.shape[1]
    if t == 0:
        return []
    step = (g[:, :-1] - g[:, 1:]).amax(dim=(0, 2)).clamp(min=0)       # (t-1,) worst decay per step
    span = torch.cat((step.new_zeros(1), step.cumsum(0))).double().cpu()  # span[i] = decay from 0 to i
    if not bool(torch.isfinite(span[-1])) or float(span[-1]) <= budget:
        return [(0, t)]                                            # one call (NaN in, NaN out)
    chunks, m0 = [], 0
    while m0 < t:
        m1 = int(torch.searchsorted(span, span[m0] + budget, right=True))
        m1 = max(m1, m0 + 1)
        chunks.append((m0, m1))
        m0 = m1
    return chunks


def _heads_first(x):
    return x.transpose(1, 2)                                      # (b, t, h, w) -> (b, h, t, w) view


def _widen(parts, width):
    """(b, t, h, w_i) pieces -> one (b, h, t, width) contiguous tensor, zero-padded:
    a single copy that also gives SDPA the heads-first layout it runs fastest on."""
    b, t, h = parts[0].shape[:3]
    out = parts[0].new_empty(b, h, t, width)
    start = 0
    for p in parts:
        out[..., start : start + p.shape[-1]].copy_(_heads_first(p))
        start += p.shape[-1]
    out[..., start:].zero_()
    return out


def _augment_torch(q, k, C_rot, B_rot, g, s, m0, m1, width):
    """Qhat rows [m0, m1) and Khat rows [0, m1), offset by c = g[m1 - 1], in PyTorch.
    k already has one head per query head. Returns both heads-first (b, h, ., width)."""
    c = g[:, m1 - 1 : m1]                                         # (b, 1, h): smallest g of the keys
    cq = ((torch.exp(g[:, m0:m1] - c)[..., None] * s) * C_rot[:, m0:m1]).to(q.dtype)
    bk = ((torch.exp(c - g[:, :m1])[..., None] * s) * B_rot[:, :m1]).to(q.dtype)
    return _widen([q[:, m0:m1], cq], width), _widen([k[:, :m1], bk], width)


def _augment_fused(q, k, C_rot, B_rot, g, lam, scale, width):
    """The single-chunk case with the Triton epilogue: Qhat and Khat of all rows in
    one fused pass, offset by c = g[t - 1] (k keeps its kv heads)."""
    augment_qk = backends.kernel("augment").augment_qk
    lam_eff = lam.float() / (scale * math.sqrt(q.shape[-1]))     # its s is d^(1/4) sqrt(lam)
    qhat, khat = augment_qk(q, k, C_rot, B_rot, g, lam_eff, g[:, -1].contiguous(), width)
    return _heads_first(qhat), _heads_first(khat)


def _nan_guard(qhat, khat, vhat, m0):
    """None when every input is finite (one host sync); else a (b, h, m1 - m0, 1) term
    that is NaN exactly where the naive path's output would be: a non-finite query
    row, or any non-finite key/value at or before the row (PyTorch's fused CPU
    kernel returns 0 for such rows) and 0 elsewhere."""
    with torch.no_grad():
        if bool(torch.isfinite(qhat.sum() + khat.sum() + vhat.sum())):   # whole-tensor sums: cheap
            return None
        keys = (khat.sum(-1) + vhat.sum(-1)).cumsum(-1)[..., m0:]
        return ((qhat.sum(-1) + keys) * 0)[..., None]


def sdpa_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, fused_augment=None):
    """Exact SISA attention from the scan's outputs with stock SDPA calls.

    fused_augment: build Qhat/Khat with the Triton epilogue when the whole sequence
    is one chunk (default: on CUDA when Triton works, for 16/32-bit inputs).
    Returns (b, t, h, d) in q's dtype.
    """
    b, t, h, d = q.shape
    n = C_rot.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    sd = state_dtype(q.dtype)
    g = g.to(sd)
    chunks = plan_chunks(g.detach(), DECAY_BUDGET[q.dtype])
    if fused_augment is None:
        fused_augment = (q.is_cuda and q.dtype != torch.float64
                         and backends.triton_unavailable_reason(q.device) is None)
    fused_augment = fused_augment and len(chunks) == 1
    rep = h // k.shape[2]
    if rep > 1:  # one head per query head: B_rot, hence Khat, is per query head
        v = v.repeat_interleave(rep, dim=2)
        if not fused_augment:
            k = k.repeat_interleave(rep, dim=2)
    width = d + n
    if q.is_cuda:
        width = -(-width // 8) * 8                                # flash wants a multiple of 8
    s = torch.sqrt(lam.to(sd) / scale)[:, None]                   # scale * s^2 = lam
    vpad = _widen([v], width)
    outs = []
    for m0, m1 in chunks:
        if fused_augment:
            qhat, khat = _augment_fused(q, k, C_rot, B_rot, g, lam, scale, width)
        else:
            qhat, khat = _augment_torch(q, k, C_rot, B_rot, g, s, m0, m1, width)
        if m0 == 0:
            mask, causal = None, True
        else:
            mask, causal = causal_lower_right(m1 - m0, m1), False
        o = F.scaled_dot_product_attention(qhat, khat, vpad[:, :, :m1], attn_mask=mask,
                                           is_causal=causal, scale=scale)[..., :d]
        guard = _nan_guard(qhat, khat, vpad[:, :, :m1], m0)
        outs.append(o if guard is None else o + guard)
    if not outs:
        return q.new_empty(b, 0, h, d)
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).transpose(1, 2)


def paper_sdpa_attention(q, k, v, C, B, log_alpha, theta, lam, *, softmax_scale=None,
                         clamp=11.0, sdpa_backend=None):
    """The paper's single-call realisation (SPEC.md section 3), kept as a baseline.

    Midpoint offset c per (batch, head), ``g - c`` clamped to [-clamp, clamp]
    (pass clamp=None for none: then it overflows instead), v left d wide, so SDPA
    runs its memory-efficient backend on CUDA (``sdpa_backend`` may force one of
    torch.nn.attention.SDPBackend) and its math path on CPU. Not exact once the
    total decay exceeds 2*clamp nats. Returns (b, t, h, d) in q's dtype.
    """
    b, t, h, d = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    C_rot, B_rot, g, _ = naive_scan(C, B, log_alpha, theta)
    c = (g.amax(dim=1, keepdim=True) + g.amin(dim=1, keepdim=True)) / 2
    gc = g - c if clamp is None else (g - c).clamp(-clamp, clamp)
    s = d ** 0.25 * torch.sqrt(lam.to(g.dtype))[:, None]
    cbar = (torch.exp(gc)[..., None] * C_rot.to(g.dtype) * s).to(q.dtype)
    bbar = (torch.exp(-gc)[..., None] * B_rot.to(g.dtype) * s).to(q.dtype)
    rep = h // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    qhat, khat = torch.cat((q, cbar), -1), torch.cat((k, bbar), -1)
    if sdpa_backend is None and q.is_cuda:
        sdpa_backend = torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION
    args = (_heads_first(qhat), _heads_first(khat), _heads_first(v))
    if sdpa_backend is None:
        o = F.scaled_dot_product_attention(*args, is_causal=True, scale=scale)
    else:
        with torch.nn.attention.sdpa_kernel(sdpa_backend):
            o = F.scaled_dot_product_attention(*args, is_causal=True, scale=scale)
    return o.transpose(1, 2)
