"""The decode kernel's split + merge maths in plain PyTorch, for reading beside decode.py.

The T cached keys are cut into ``num_splits`` contiguous chunks. Per chunk and
query, an explicit score row gives the chunk's softmax-normalised output and its
log-sum-exp (a chunk with no visible key gets lse = -inf and weight 0); the
chunks are then merged with weights exp(lse_k - max_k lse_k).

Shapes: q (b, s, h, d); k, v (b, T, hk, d); C_rot (b, s, h, n); B_rot (b, T, h, n);
g (b, T, h); lam (h,). The s queries are positions T - s .. T - 1.
Returns (b, s, h, d) in q's dtype.
"""
from __future__ import annotations

import math

import torch

from .attention_ref import heads_first


def sisa_decode_splits(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, num_splits=3):
    b, s, h, d = q.shape
    T = k.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    qh, kh, vh, crh, brh, gk, lam = heads_first(q, k, v, C_rot, B_rot, g, lam)   # gk (b, h, T)
    gq = gk[:, :, T - s:]                                          # (b, h, s)
    pos = torch.arange(T - s, T, device=q.device)[:, None]          # query positions

    chunk = -(-T // num_splits)
    outs, lses = [], []
    for j0 in range(0, T, chunk):
        j1 = min(j0 + chunk, T)
        visible = pos >= torch.arange(j0, j1, device=q.device)[None, :]          # (s, j1 - j0)
        expo = (gq[..., :, None] - gk[:, :, None, j0:j1]).clamp(max=0).masked_fill(~visible, 0).to(qh.dtype)
        score = scale * qh @ kh[:, :, j0:j1].transpose(-1, -2) \
            + lam * torch.exp(expo) * (crh @ brh[:, :, j0:j1].transpose(-1, -2))
        score = score.masked_fill(~visible, -math.inf)
        lse = torch.logsumexp(score, -1)                           # -inf where nothing is visible
        p = torch.exp(score - lse.clamp(min=-1e30)[..., None])     # finite exponent: 0, not NaN
        outs.append(p @ vh[:, :, j0:j1])
        lses.append(lse)

    lse = torch.stack(lses)                                        # (splits, b, h, s)
    w = torch.exp(lse - lse.amax(0))                               # chunk 0 always holds key 0
    out = (w[..., None] * torch.stack(outs)).sum(0) / w.sum(0)[..., None]
    return out.transpose(1, 2).to(q.dtype)
