"""The forward kernel's tile maths in plain PyTorch, for reading beside attention.py.

Same blocking as the kernel: for each query block [m0, m1), online softmax over
key blocks; blocks strictly below the diagonal use the factorised decay
exp(g_i - g_m0) * exp(g_m0 - g_j) (both factors <= 1) on the rows of Cr and the
rows of Br, the diagonal block uses exp(min(g_i - g_j, 0)) per element under the
causal mask. Differences of g are taken in float64 (as the kernels' hi/lo pairs
give them), the rest in the compute dtype. Slow (Python loops); for checking by eye and by test on small inputs.

Shapes: q (b, t, h, d); k, v (b, t, hk, d); C_rot, B_rot (b, t, h, n);
g (b, t, h); lam (h,). Returns (out (b, t, h, d) in q's dtype, lse (b, h, t)).
"""
from __future__ import annotations

import math

import torch


def heads_first(q, k, v, C_rot, B_rot, g, lam):
    """The inputs as (b, h, ., .) views in the compute dtype (float64 stays float64,
    the rest float32), kv heads repeated for GQA: (qh, kh, vh, crh, brh, gh (b, h, t)
    float64, lam (1, h, 1, 1))."""
    rep = q.shape[2] // k.shape[2]
    f = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh, crh, brh = (x.to(f).transpose(1, 2) for x in (q, C_rot, B_rot))
    kh, vh = (x.to(f).repeat_interleave(rep, dim=2).transpose(1, 2) for x in (k, v))
    return qh, kh, vh, crh, brh, g.to(torch.float64).transpose(1, 2), lam.to(f)[None, :, None, None]


def sisa_attn_tiles(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, block=16):
    b, t, h, d = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    qh, kh, vh, crh, brh, gh, lam = heads_first(q, k, v, C_rot, B_rot, g, lam)
    f = qh.dtype
    out = torch.empty_like(qh)
    lse = torch.empty(b, h, t, dtype=f, device=q.device)
    for m0 in range(0, t, block):
        m1 = min(m0 + block, t)
        qi, gi = qh[:, :, m0:m1], gh[:, :, m0:m1]
        cr_f = crh[:, :, m0:m1] * torch.exp((gi - gh[:, :, m0:m0 + 1]).clamp(max=0).to(f))[..., None]
        m = torch.full_like(gi, -math.inf, dtype=f)
        l = torch.zeros_like(gi, dtype=f)
        acc = torch.zeros_like(qi)
        for n0 in range(0, m1, block):
            n1 = min(n0 + block, m1)
            gj = gh[:, :, n0:n1]
            content = scale * qi @ kh[:, :, n0:n1].transpose(-1, -2)
            if n1 <= m0:    # strictly below the diagonal: BM + BN exps, one small product
                br_f = brh[:, :, n0:n1] * torch.exp((gh[:, :, m0:m0 + 1] - gj).clamp(max=0).to(f))[..., None]
                s = content + lam * (cr_f @ br_f.transpose(-1, -2))
            else:           # diagonal: per-element decay, finite exponent where masked
                causal = torch.arange(m0, m1)[:, None] >= torch.arange(n0, n1)[None, :]
                causal = causal.to(q.device)
                expo = (gi[..., :, None] - gj[..., None, :]).clamp(max=0).masked_fill(~causal, 0).to(f)
                ssm = (crh[:, :, m0:m1] @ brh[:, :, n0:n1].transpose(-1, -2)) * torch.exp(expo)
                s = (content + lam * ssm).masked_fill(~causal, -math.inf)
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[..., None])
            l = l * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + p @ vh[:, :, n0:n1]
            m = m_new
        out[:, :, m0:m1] = acc / l[..., None]
        lse[:, :, m0:m1] = m + torch.log(l)
    return out.transpose(1, 2).to(q.dtype), lse


def dense_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale, bounds=None):
    """The op's maths with one explicit (s x t) score per head, differentiable: what
    ``attention_op`` differentiates when no backward config launches on a GPU
    (O(b h s t) memory). The s queries are the last s of k's t positions; bounds:
    None or (2, t) int32, each position's sequence [start, end) (s = t)."""
    b, s, h, d = q.shape
    t = k.shape[1]
    qh, kh, vh, crh, brh, gh, lam = heads_first(q, k, v, C_rot, B_rot, g, lam)
    pos_i = torch.arange(t - s, t, device=q.device)[:, None]
    pos_j = torch.arange(t, device=q.device)[None, :]
    seen = pos_j <= pos_i
    if bounds is not None:
        seen = seen & (pos_j >= bounds[0].to(q.device)[t - s:, None].long())
    gq = gh[:, :, t - s:]
    expo = (gq[..., :, None] - gh[..., None, :]).clamp(max=0).masked_fill(~seen, 0)
    decay = torch.exp(expo).to(qh.dtype)                           # the difference taken in float64
    score = softmax_scale * qh @ kh.transpose(-1, -2) + lam * decay * (crh @ brh.transpose(-1, -2))
    p = torch.softmax(score.masked_fill(~seen, -math.inf), dim=-1)
    return (p @ vh).transpose(1, 2).to(q.dtype)
