"""The readable maths: SISA scan and attention with an explicit score matrix.

This is the judge every other path is compared with (run it in float64). It
materialises the full (t x t) score matrix, so it is for small t only.

Shapes (flash-attn layout, batch first):
    q            (b, t, h, d)
    k, v         (b, t, hk, d)     hk divides h
    C, B         (b, t, h, n)      n = d_state, even
    log_alpha    (b, t, h)         <= 0
    theta        (b, t, h, n/2)
    lam          (h,)              > 0
"""
from __future__ import annotations

import math

import torch


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision for Phi, the decay and the rotation: float64 stays float64,
    everything else is float32. g itself is always ``G_DTYPE``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# g = cumsum(log_alpha) is float64 for every input dtype: a float32 g is spaced
# 1e-3..6e-2 nats apart at |g| ~ 1e4..1e6 (one hard reset), so g_i - g_j of nearby
# tokens would be wrong by that much. Differences are taken in float64 and then
# rounded to the compute dtype (docs/design.md section 5).
G_DTYPE = torch.float64


def unit_phasor(phi: torch.Tensor) -> torch.Tensor:
    """e^(i phi) as a complex tensor of phi's shape (cos and sin are vectorised on the
    CPU where ``torch.polar`` is not)."""
    return torch.complex(phi.cos(), phi.sin())


def rotate_pairs(z: torch.Tensor, phi: torch.Tensor, phasor: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate each interleaved pair (z[2m], z[2m+1]) by angle phi[m], times ``scale``.

    (x, y) -> (x cos - y sin, x sin + y cos), i.e. x + iy times e^(i phi).
    z: (..., n), phi: (..., n/2) -> (..., n) in phi's dtype (float32 or float64).
    phasor: optionally e^(i phi) already computed (to rotate several z by one phi).
    scale: optionally a real (...) factor folded into the same multiply.
    """
    z = z.to(phi.dtype).contiguous()
    if torch.compiler.is_compiling():  # the pairs written out: the compiler fuses them
        x, y = z.unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = phi.cos(), phi.sin()
        if scale is not None:
            cos, sin = cos * scale[..., None], sin * scale[..., None]
        return torch.stack((x * cos - y * sin, x * sin + y * cos), dim=-1).flatten(-2)
    if z.storage_offset() % 2:                                     # view_as_complex needs an even offset
        z = z.clone()
    if phasor is None:
        phasor = unit_phasor(phi)
    if scale is not None:
        phasor = phasor * scale[..., None]
    pairs = torch.view_as_complex(z.unflatten(-1, (-1, 2)))      # eagerly: one complex multiply
    return torch.view_as_real(pairs * phasor).flatten(-2)


def scan_state(log_alpha, theta, sd, initial_state=None):
    """g = g0 + cumsum(log_alpha) (b, t, h) float64 and Phi = phi0 + cumsum(theta)
    (b, t, h, n/2) along t, in the state dtype ``sd`` (see state_dtype)."""
    g = torch.cumsum(log_alpha.to(G_DTYPE), dim=1)
    phi = torch.cumsum(theta.to(sd), dim=1)
    if initial_state is not None:
        g0, phi0 = initial_state
        g = g + g0.to(G_DTYPE).unsqueeze(1)
        phi = phi + phi0.to(sd).unsqueeze(1)
    return g, phi


def naive_scan(C, B, log_alpha, theta, initial_state=None):
    """g = g0 + cumsum(log_alpha), Phi = phi0 + cumsum(theta), rotated C and B.

    C, B: (b, t, h, n); log_alpha: (b, t, h); theta: (b, t, h, n/2);
    initial_state: optional (g0 (b, h), phi0 (b, h, n/2)).
    Returns (C_rot, B_rot, g, (g_last, phi_last)): C_rot, B_rot (b, t, h, n) in
    C's dtype, g (b, t, h) and g_last (b, h) float64 (for every input dtype),
    phi_last (b, h, n/2) float32 (float64 for float64 inputs).
    """
    sd = state_dtype(C.dtype)
    g, phi = scan_state(log_alpha, theta, sd, initial_state)
    phasor = None if torch.compiler.is_compiling() else unit_phasor(phi)
    C_rot = rotate_pairs(C, phi, phasor).to(C.dtype)
    B_rot = rotate_pairs(B, phi, phasor).to(B.dtype)
    b, t, h = log_alpha.shape
    if t > 0:
        final = (g[:, -1], phi[:, -1])
    elif initial_state is not None:
        final = (initial_state[0].to(G_DTYPE), initial_state[1].to(sd))
    else:
        final = (g.new_zeros(b, h), phi.new_zeros(b, h, theta.shape[-1]))
    return C_rot, B_rot, g, final


def naive_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, upcast=True, key_mask=None):
    """Causal SISA attention from the scan's outputs, with an explicit score matrix.

    score[i, j] = scale q_i.k_j + lam exp(g_i - g_j) Cr_i.Br_j  (j <= i)
    q (b, s, h, d); k, v (b, t, hk, d); C_rot (b, s, h, n); B_rot (b, t, h, n);
    g (b, t, h); lam (h,). The s queries are the last s of the t positions
    (s = t for a whole sequence; s < t for cached decoding). Returns (b, s, h, d)
    in q's dtype. Compute runs in float32 (float64 for float64 inputs);
    upcast=False keeps the products and softmax in q's dtype (only the decay in
    float32): PyTorch's own low-precision error, the yardstick for tolerances.
    key_mask: optional (b, t) bool; a key where it is False (a pad) is never
    attended, except by the query at its own position, so no row is empty and no
    NaN appears (callers discard pad queries' rows).
    """
    b, s, h, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    sd = state_dtype(q.dtype) if upcast else q.dtype
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    rep = h // hk
    kk = k.to(sd).repeat_interleave(rep, dim=2)
    vv = v.to(sd).repeat_interleave(rep, dim=2)
    content = torch.einsum("bihd,bjhd->bhij", q.to(sd), kk) * scale
    gk = g.to(G_DTYPE).transpose(1, 2)                             # (b, h, t)
    gq = gk[:, :, t - s:]                                          # (b, h, s)
    causal = torch.ones(s, t, dtype=torch.bool, device=q.device).tril(diagonal=t - s)
    if key_mask is not None:                                       # (b, 1, s, t): pads only see themselves
        own = torch.arange(t, device=q.device)[None, :] == torch.arange(t - s, t, device=q.device)[:, None]
        causal = causal & (key_mask[:, None, None, :] | own)
    # exp(min(g_i - g_j, 0)): the min guards cumsum rounding; masked entries stay finite.
    # The difference is taken in float64, the exp in float32 (float64 for float64).
    expo = (gq[:, :, :, None] - gk[:, :, None, :]).clamp(max=0).masked_fill(~causal, 0)
    decay = torch.exp(expo.to(state_dtype(q.dtype))).to(sd)
    ssm = torch.einsum("bihn,bjhn->bhij", C_rot.to(sd), B_rot.to(sd))
    score = content + lam.to(sd)[None, :, None, None] * decay * ssm
    score = score.masked_fill(~causal, float("-inf"))
    p = torch.softmax(score, dim=-1)
    return weighted_values(p, vv, causal, score).to(q.dtype)


def weighted_values(p, v, causal, score):
    """out[b, i, h] = sum over j <= i of p[b, h, i, j] v[b, j, h]: p and score (b, h,
    s, t), v (b, t, h, d), causal (s, t) or (b, 1, s, t) bool -> (b, s, h, d).

    A masked key contributes nothing even where v is inf or NaN (a plain product
    would give 0 * inf = NaN in rows before it). A kept key with a finite score has
    p > 0 in the maths, even where it underflows to 0, so its inf stays inf; one
    with score -inf has p = 0 exactly, and 0 * inf is NaN."""
    if torch.compiler.is_compiling() or v.device.type == "meta" or bool(torch.isfinite(v).all()):
        return torch.einsum("bhij,bjhd->bihd", p, v)
    finite = torch.isfinite(v)
    out = torch.einsum("bhij,bjhd->bihd", p, v.masked_fill(~finite, 0))

    def hits(weights, values):          # whether any key in ``weights`` has one of ``values`` (b, s, h, d)
        return torch.einsum("bhij,bjhd->bihd", weights.to(p.dtype), values.to(p.dtype)) > 0
    kept = causal.expand_as(p)
    live = kept & (score > float("-inf"))
    pos, neg = hits(live, v == float("inf")), hits(live, v == float("-inf"))
    nan = hits(kept, torch.isnan(v)) | hits(kept & ~live, torch.isinf(v)) | (pos & neg)
    extra = torch.zeros_like(out).masked_fill(pos, float("inf")).masked_fill(neg, float("-inf"))
    return out + extra.masked_fill(nan, float("nan"))


def naive_sisa_attention(q, k, v, C, B, log_alpha, theta, lam, softmax_scale=None, upcast=True):
    """The whole operation: scan then attention (shapes in the module docstring)."""
    C_rot, B_rot, g, _ = naive_scan(C, B, log_alpha, theta)
    return naive_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale, upcast)
