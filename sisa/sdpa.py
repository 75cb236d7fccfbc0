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
  fused (CPU) / flash (CUDA) kernels take the call. On a CPU the scan's rotation
  is folded into the build (one complex multiply per side), and calls autograd
  does not record build in reused per-thread buffers; on CUDA the Triton scan
  and, for one chunk, the Triton epilogue do the build.

Shapes: q (b, t, h, d); k, v (b, t, hk, d); C_rot, B_rot (b, t, h, n); g (b, t, h)
(float64; the exponents g - c are taken in float64, then rounded); lam (h,).
"""
from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from . import backends
from ._checks import check_attention_inputs
from .naive import G_DTYPE, naive_attention, naive_scan, rotate_pairs, state_dtype, unit_phasor

# Largest decay (nats) allowed inside one query chunk. The query factor is at most
# exp(budget) and must stay far from the dtype's maximum after multiplying C_rot;
# key factors are <= 1 and only underflow where the true product is negligible.
DECAY_BUDGET = {torch.float16: 6.0, torch.bfloat16: 40.0, torch.float32: 40.0, torch.float64: 300.0}


def plan_chunks(g: torch.Tensor, budget: float) -> list[tuple[int, int]]:
    """Cut [0, t) into query chunks whose decay span, for every (batch, head), is
    at most ``budget`` nats. g: (b, t, h). Usually one scalar host transfer: when
    no (batch, head) has g ranging over more than the budget, one chunk; else one
    transfer of length t."""
    t = g.shape[1]
    if t == 0:
        return []
    if g.numel() == 0:                                             # no batch or no heads
        return [(0, t)]
    if g.device.type == "meta":                                    # no values: shapes only
        return [(0, t)]
    if not float((g.amax(1) - g.amin(1)).amax()) > budget:       # the common case (or NaN in, NaN out)
        return [(0, t)]
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


class _Workspace(threading.local):
    """Per-thread CPU buffers for Qhat, Khat and the padded v, reused across calls
    that autograd does not record. Fresh multi-megabyte CPU allocations are costly
    to first touch: at t=2048, 8 heads, d=64, n=16, fp32, with each call following
    a plain SDPA call, the forward costs 1.25x plain SDPA with reuse and 1.40x
    without. A buffer is kept only up to WORKSPACE_BYTES (three per thread at
    most), so long sequences allocate as usual; release_workspace frees them."""

    def __init__(self):
        self.buffers = {}


WORKSPACE_BYTES = 32 << 20
_workspace = _Workspace()


def release_workspace() -> None:
    """Free this thread's reused CPU buffers (they come back on the next no-grad call)."""
    _workspace.buffers.clear()


def _empty(shape, like, slot):
    """An uninitialised ``shape`` tensor like ``like``: workspace slot ``slot``
    (a name), or a fresh allocation when slot is None or the tensor is too big."""
    numel = math.prod(shape)
    if slot is None or numel * like.element_size() > WORKSPACE_BYTES:
        return like.new_empty(shape)
    key = (slot, like.dtype)
    buf = _workspace.buffers.get(key)
    if buf is None or buf.numel() < numel:                       # grow by half at least (decoding grows t by 1)
        cap = WORKSPACE_BYTES // like.element_size()
        size = numel if buf is None else min(max(numel, buf.numel() * 3 // 2), cap)
        buf = _workspace.buffers[key] = like.new_empty(size)
    return buf[:numel].view(shape)


def _reusable(*tensors) -> bool:
    """Whether buffers built from ``tensors`` may be reused after the call: on the
    CPU, with no autograd graph that could save them (a compiled call never gets here:
    sdpa_attention hands it to one opaque op, which runs this eagerly)."""
    recorded = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    return tensors[0].device.type == "cpu" and not recorded


def fill_wide(out, parts, sums=None):
    """Write (b, t, h_i, w_i) pieces side by side into out (b, heads, t, width) and
    zero the columns after them. A piece with fewer heads (GQA) is broadcast across
    its group. sums: a list that gets each piece's sum (see all_finite), taken just
    before the copy: the sum streams the piece into cache, so the transposing copy
    reads it from there and the two together cost about what the copy alone would."""
    heads, width = out.shape[1], out.shape[-1]
    start = 0
    for p in parts:
        if sums is not None:
            sums.append(p.detach().sum(dtype=state_dtype(p.dtype)))
        hp, w = p.shape[2], p.shape[3]
        dst = out[..., start : start + w].unflatten(1, (hp, heads // hp))   # (b, hp, rep, t, w)
        dst.copy_(_heads_first(p)[:, :, None])
        start += w
    if start < width:
        out[..., start:].zero_()
    return out


def _widen(parts, width, heads, slot=None, sums=None):
    """(b, t, h_i, w_i) pieces -> one (b, heads, t, width) contiguous tensor (see
    fill_wide): a single copy that also gives SDPA the heads-first layout it runs
    fastest on. slot: build in that workspace buffer (see _empty)."""
    b, t = parts[0].shape[:2]
    return fill_wide(_empty((b, heads, t, width), parts[0], slot), parts, sums)


def _augment_torch(q, k, C, B, g, s, m0, m1, width, phi=None, phasor=None, reuse=False, sums=None):
    """Qhat rows [m0, m1) and Khat rows [0, m1), offset by c = g[m1 - 1], in PyTorch.
    Positions count keys; q and C hold the last q.shape[1] positions only (decoding).

    C, B are the scan's C_rot, B_rot; or, with phi (and its unit phasor) given, the
    unrotated C, B, whose rotation then folds into the decay multiply. s: (h,) with
    scale * s^2 = lam; reuse: build in the workspace; sums: see _widen. Returns both
    heads-first (b, h, ., width)."""
    c = g[:, m1 - 1 : m1]                                         # (b, 1, h): smallest g of the keys
    a_q = torch.exp((g[:, m0:m1] - c).to(s.dtype)) * s            # (b, m, h) query factors
    a_k = torch.exp((c - g[:, :m1]).to(s.dtype)) * s              # (b, m1, h) key factors, <= s
    off = k.shape[1] - q.shape[1]
    rows = slice(m0 - off, m1 - off)                              # the chunk's rows of q and C
    if phi is None:
        cq, bk = C[:, rows].to(s.dtype) * a_q[..., None], B[:, :m1].to(s.dtype) * a_k[..., None]
    else:
        cq = rotate_pairs(C[:, rows], phi[:, m0:m1], phasor[:, m0:m1], scale=a_q)
        bk = rotate_pairs(B[:, :m1], phi[:, :m1], phasor[:, :m1], scale=a_k)
    if q.dtype == torch.float16 and sums is not None:
        cq, bk = _balance(cq, bk, sums)
    h = q.shape[2]
    return (_widen([q[:, rows], cq], width, h, "qhat" if reuse else None, sums),
            _widen([k[:, :m1], bk], width, h, "khat" if reuse else None, sums))


def _balance(cq, bk, sums):
    """float16: (b, m, h, n) query and (b, m1, h, n) key pieces rescaled by a power of
    two per (batch, head), cq * sigma and bk / sigma (their products unchanged), so that
    both peaks are about sqrt(max|cq| max|bk|): large |C| with small |B|, or a small
    softmax_scale (s = sqrt(lam / scale) big), would otherwise overflow float16 on one
    side only. Where even the balanced peak exceeds float16's range, appends to sums
    (see overflow_check) so that the chunk takes the exact path."""
    if not cq.numel() or not bk.numel():
        return cq, bk
    mq, mk = cq.detach().abs().amax(dim=(1, 3)), bk.detach().abs().amax(dim=(1, 3))     # (b, h)
    sigma = torch.exp2(torch.round(torch.log2(mk / mq) / 2))
    sigma = torch.where(torch.isfinite(sigma) & (sigma > 0), sigma, 1.0)     # a zero (or NaN) side: as is
    overflow_check([torch.maximum(mq * sigma, mk / sigma)], torch.float16, sums)
    sigma = sigma[:, None, :, None]
    return cq * sigma, bk / sigma


def overflow_check(pieces, dtype, sums):
    """Append to sums a 0-d term that is inf where any element of ``pieces`` (tensors
    in the state dtype) exceeds ``dtype``'s largest value, i.e. where it would turn to
    inf on its copy into a ``dtype`` operand: all_finite then fails and the call takes
    the exact path. Only float16 has a smaller range than the state dtype."""
    peaks = [p.detach().abs().amax() for p in pieces if p.numel()]
    if dtype == torch.float16 and peaks:
        sums.append(torch.where(torch.stack(peaks).amax() > torch.finfo(dtype).max, math.inf, 0.0))


def _augment_fused(q, k, C_rot, B_rot, g, lam, scale, width):
    """The single-chunk case with the Triton epilogue: Qhat and Khat of all rows in
    one fused pass, offset by c = g[t - 1] (k keeps its kv heads)."""
    augment_qk = backends.kernel("augment").augment_qk
    lam_eff = lam.float() / (scale * math.sqrt(q.shape[-1]))     # its s is d^(1/4) sqrt(lam)
    qhat, khat = augment_qk(q, k, C_rot, B_rot, g, lam_eff, g[:, -1].contiguous(), width)
    return _heads_first(qhat), _heads_first(khat)


def all_finite(sums) -> bool:
    """Whether every summed element was finite, with one host sync: a NaN or inf
    anywhere makes its sum non-finite (a finite sum that overflows only sends the
    call down the exact row-wise path of _exact_rows). On the meta device: True."""
    total = sum(sums)
    return not isinstance(total, torch.Tensor) or total.device.type == "meta" or bool(torch.isfinite(total))


def causal_args(m0, m1):
    """(attn_mask, is_causal) for SDPA when queries [m0, m1) attend keys [0, m1):
    square causal from the first position, none for a single query (it sees every
    key), a lower-right causal mask otherwise."""
    if m0 == 0:
        return None, True
    if m1 - m0 == 1:
        return None, False
    from torch.nn.attention.bias import causal_lower_right   # here: it imports torch._dynamo (seconds)
    return causal_lower_right(m1 - m0, m1), False


EXACT_ROWS = 128     # query rows per explicit-score block of the non-finite fallback


def _exact_rows(q, k, v, C, B, g, lam, scale, m0, m1, phi=None):
    """Heads-first (b, h, m1 - m0, d) output of query positions [m0, m1) by the naive
    path's explicit scores, EXACT_ROWS rows at a time: for chunks that hold a NaN or
    inf, whose positions only the maths as written gets right (stock SDPA may give 0
    for a NaN row, and NaN for a whole row where one value is inf). Arguments as in
    sdpa_attention (C, B unrotated when phi is given); memory O(EXACT_ROWS * m1)."""
    off = k.shape[1] - q.shape[1]
    outs = []
    for r0 in range(m0, m1, EXACT_ROWS):
        r1 = min(r0 + EXACT_ROWS, m1)
        cr, br = C[:, r0 - off:r1 - off], B[:, :r1]
        if phi is not None:
            cr, br = rotate_pairs(cr, phi[:, r0:r1]), rotate_pairs(br, phi[:, :r1])
        o = naive_attention(q[:, r0 - off:r1 - off], k[:, :r1], v[:, :r1], cr, br, g[:, :r1], lam, scale)
        outs.append(_heads_first(o))
    return torch.cat(outs, dim=2)


def fused_augment_available(q) -> bool:
    """Whether the Triton epilogue can build Qhat/Khat for q (CUDA, 16/32-bit)."""
    return (q.is_cuda and q.dtype != torch.float64
            and backends.triton_unavailable_reason(q.device) is None)


def sdpa_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, fused_augment=None, phi=None):
    """Exact SISA attention from the scan's outputs with stock SDPA calls.

    q (b, s, h, d) and C_rot (b, s, h, n) may hold only the last s <= t positions
    (cached decoding: s new queries over t keys); k, v, B_rot and g hold all t.

    phi: (b, t, h, n/2) cumulative angles. When given, C_rot and B_rot are the
    unrotated C and B and the rotation happens inside the Qhat/Khat build (the
    CPU path: one complex multiply per side instead of a separate scan pass); it
    needs s = t.
    fused_augment: build Qhat/Khat with the Triton epilogue when the whole sequence
    is one chunk, s = t and phi is None (default: where ``fused_augment_available``).
    Returns (b, s, h, d) in q's dtype.
    """
    if torch.compiler.is_compiling():   # the host reads below: one opaque op in the graph instead
        from ._compile import sdpa_attention_op
        scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        return sdpa_attention_op(q, k, v, C_rot, B_rot, g, lam, scale, phi)
    b, sq, h, d = q.shape
    t = k.shape[1]
    off = t - sq                                                  # position of the first query
    n = C_rot.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    sd = state_dtype(q.dtype)
    g = g.to(G_DTYPE)
    chunks = [(m0 + off, m1 + off) for m0, m1 in plan_chunks(g[:, off:].detach(), DECAY_BUDGET[q.dtype])]
    if fused_augment is None:
        fused_augment = fused_augment_available(q)
    fused_augment = fused_augment and phi is None and len(chunks) == 1 and off == 0
    phasor = None if phi is None else unit_phasor(phi)
    width = d + n
    if q.is_cuda:
        width = -(-width // 8) * 8                                # flash wants a multiple of 8
    s = torch.sqrt(lam.to(sd) / scale)                            # (h,): scale * s^2 = lam
    reuse = _reusable(q, k, v, C_rot, B_rot, g, lam, *(() if phi is None else (phi,)))
    vsums = []
    vpad = _widen([v], width, h, "vhat" if reuse else None, vsums)
    outs = []
    for m0, m1 in chunks:
        sums = list(vsums)
        if fused_augment:
            qhat, khat = _augment_fused(q, k, C_rot, B_rot, g, lam, scale, width)
            sums += [qhat.detach().sum(dtype=sd), khat.detach().sum(dtype=sd)]
        else:
            qhat, khat = _augment_torch(q, k, C_rot, B_rot, g, s, m0, m1, width, phi, phasor, reuse, sums)
        if not all_finite(sums):       # a NaN or inf somewhere: the maths as written (rare)
            outs.append(_exact_rows(q, k, v, C_rot, B_rot, g, lam, scale, m0, m1, phi))
            continue
        mask, causal = causal_args(m0, m1)
        outs.append(F.scaled_dot_product_attention(qhat, khat, vpad[:, :, :m1], attn_mask=mask,
                                                   is_causal=causal, scale=scale)[..., :d])
    if not outs:
        return q.new_empty(b, sq, h, d)
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).transpose(1, 2)


def paper_sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor, B: torch.Tensor, log_alpha: torch.Tensor, theta: torch.Tensor,
                         lam: torch.Tensor, *, softmax_scale: float | None = None, clamp: float | None = 11.0,
                         sdpa_backend=None) -> torch.Tensor:
    """The paper's single-call realisation (docs/design.md section 3), kept as a baseline.

    Midpoint offset c per (batch, head), ``g - c`` clamped to [-clamp, clamp]
    (pass clamp=None for none: then it overflows instead), v left d wide, so SDPA
    runs its memory-efficient backend on CUDA (``sdpa_backend`` may force one of
    torch.nn.attention.SDPBackend) and its math path on CPU. Not exact once the
    total decay exceeds 2*clamp nats. Returns (b, t, h, d) in q's dtype.
    """
    check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, softmax_scale=softmax_scale)
    b, t, h, d = q.shape
    if t == 0:
        return q.new_empty(q.shape)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    C_rot, B_rot, g, _ = naive_scan(C, B, log_alpha, theta)
    c = (g.amax(dim=1, keepdim=True) + g.amin(dim=1, keepdim=True)) / 2
    gc = (g - c if clamp is None else (g - c).clamp(-clamp, clamp)).to(state_dtype(q.dtype))
    s = torch.sqrt(lam.to(gc.dtype) / scale)[:, None]               # scale * s^2 = lam (d^(1/4) sqrt(lam) by default)
    cbar = (torch.exp(gc)[..., None] * C_rot.to(gc.dtype) * s).to(q.dtype)
    bbar = (torch.exp(-gc)[..., None] * B_rot.to(gc.dtype) * s).to(q.dtype)
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
