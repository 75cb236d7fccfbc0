"""Cached decoding: per-layer state and attention of new tokens over the cache.

A cached step keeps, per layer, k and v (b, T, hk, d), B_rot (b, T, h, n) and the
float64 g (b, T, h) of every past token (docs/design.md section 5), plus the running scan state
(g_last (b, h), phi_last (b, h, n/2)). New tokens continue the scan from that state
and attend over the cache with the exact SISA score: the decay is the difference
g_i - g_j of stored cumulative log-decays, never a clamped factorisation. The
per-token phase increments theta (b, T, h, n/2) are kept too, so that ``crop`` can
recover the scan state at any shorter length (what assisted decoding needs).

Where the Triton decode kernel does not run (a CPU), the cache also keeps Khat and
the padded v in the heads-first layout stock SDPA wants, extended by the new rows
at each step, so a step copies O(s) rows instead of rebuilding O(T) (see
``_widened_attention``). That roughly doubles the cache's memory on a CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import backends
from .naive import G_DTYPE, naive_attention, state_dtype
from .ops import exact_sdpa
from .sdpa import DECAY_BUDGET, all_finite, causal_args, fill_wide, overflow_check


class LayerCache:
    """Growable per-layer storage. ``capacity`` preallocates; when full, the
    buffers double, so appending T tokens one by one costs O(T) copies in all."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self.length = 0
        self.state = None            # (g_last, phi_last) of the scan, or None before the first step
        self._buf: dict[str, torch.Tensor] = {}
        self.wide = None             # the stock-SDPA decode's Khat / padded v (see _widened_attention)
        self._valid = None           # (b, >= length) bool: which cached positions are real tokens (None: all)
        self._real = None            # (b,) int64: real tokens cached per row (None: length in every row)

    @property
    def batch(self) -> int | None:
        """The batch size of the cached tokens, or None while nothing is cached."""
        return next(iter(self._buf.values())).shape[0] if self._buf else None

    @property
    def has_pads(self) -> bool:
        """Whether any cached position is a pad (an attention_mask with zeros was recorded)."""
        return self._valid is not None

    def key_mask(self) -> torch.Tensor | None:
        """(b, length) bool, False at pads; None when every cached position is a real token."""
        return None if self._valid is None else self._valid[:, : self.length]

    def real_lengths(self, batch: int, device) -> torch.Tensor:
        """(b,) int64: how many real (non-pad) tokens each row holds (the next RoPE position)."""
        if self._real is None:
            return torch.full((batch,), self.length, dtype=torch.long, device=device)
        return self._real

    def record_mask(self, mask: torch.Tensor) -> None:
        """After appending s rows: mask (b, s) bool marks which of them are real tokens."""
        b, s = mask.shape
        start = self.length - s
        if self._valid is None or self._valid.shape[1] < self.length:
            old = 0 if self._valid is None else self._valid.shape[1]
            grown = mask.new_ones(b, max(self.length, 2 * old, self.capacity))   # earlier rows: all real
            if self._valid is not None:
                grown[:, :start] = self._valid[:, :start]
            self._valid = grown
        self._valid[:, start : self.length] = mask
        before = self._real if self._real is not None else torch.full((b,), start, dtype=torch.long,
                                                                     device=mask.device)
        self._real = before + mask.sum(1)

    def select_batch(self, index: torch.Tensor) -> None:
        """Keep (and reorder) the batch rows ``index`` (b',) of every cached tensor (beam search)."""
        self._buf = {name: buf.index_select(0, index) for name, buf in self._buf.items()}
        if self.state is not None:
            self.state = tuple(x.index_select(0, index) for x in self.state)
        if self._valid is not None:
            self._valid, self._real = self._valid.index_select(0, index), self._real.index_select(0, index)
        self.wide = None             # rebuilt from the buffers at the next step

    def crop(self, length: int) -> None:
        """Forget every token from position ``length`` on (0 <= length <= self.length),
        as if only the first ``length`` had been fed. The scan state at ``length`` is
        recovered from what is cached: g_last = g[:, length - 1] and phi_last = phi_last
        minus the thetas of the dropped tokens."""
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= self.length:
            raise ValueError(f"length must be an int in [0, {self.length}] (the cached tokens), got {length!r}")
        if length == self.length:
            return
        if length == 0:
            self.state, self._valid, self._real = None, None, None
        elif self.state is not None:
            g_last, phi_last = self.state
            dropped = self._buf["theta"][:, length : self.length].to(phi_last.dtype).sum(1)
            self.state = (self._buf["g"][:, length - 1].to(g_last.dtype), phi_last - dropped)
        if self._valid is not None:
            self._real = self._valid[:, :length].sum(1)
        if self.wide is not None:
            self.wide["rows"] = min(self.wide["rows"], length)
        self.length = length

    def append(self, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Append (b, s, ...) tensors; return views of everything cached so far (b, T, ...)."""
        s = next(iter(tensors.values())).shape[1]
        need = self.length + s
        for name, x in tensors.items():
            buf = self._buf.get(name)
            if buf is None or buf.shape[1] < need:
                old = 0 if buf is None else buf.shape[1]
                grown = x.new_empty(x.shape[0], max(need, 2 * old, self.capacity), *x.shape[2:])
                if buf is not None:
                    grown[:, : self.length] = buf[:, : self.length]
                self._buf[name] = buf = grown
            buf[:, self.length : need] = x
        self.length = need
        return {name: buf[:, :need] for name, buf in self._buf.items()}


def cached_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None, cache=None, key_mask=None):
    """SISA attention of s new queries over T cached keys (the queries are the last s).

    q (b, s, h, d); k, v (b, T, hk, d); C_rot (b, s, h, n); B_rot (b, T, h, n);
    g (b, T, h) float64; lam (h,); key_mask None or (b, T) bool, False at pads (never
    keys; a query still sees itself). Returns (b, s, h, d).

    Where autograd records none of the inputs, uses the Triton decode kernel on CUDA
    when available (16/32-bit inputs; with the key mask too). Elsewhere: with a key
    mask, the explicit masked score (``naive_attention``, O(s T)); without one, stock
    SDPA over the widened keys that ``cache`` (the LayerCache holding k, v, B_rot, g)
    extends step by step, or, when that cannot be used (no cache, autograd recording,
    a non-finite value, a decay span past the dtype's budget within one step), rebuilt
    in full by the exact chunked path of ``sisa.sdpa``. (The decode kernel has no
    backward, so a recorded call never reaches it.)
    """
    inputs = (q, k, v, C_rot, B_rot, g, lam)
    recorded = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    if (q.is_cuda and not recorded and q.dtype != torch.float64
            and backends.triton_unavailable_reason(q.device) is None):
        try:
            return backends.kernel("decode").sisa_decode(*inputs, softmax_scale, key_mask=key_mask)
        except backends.KernelLaunchError as exc:     # no config launches on this GPU: the exact paths below
            exc.warn_once("the exact decode path")
    if key_mask is not None:
        return naive_attention(*inputs, softmax_scale, key_mask=key_mask)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if cache is not None and not recorded and not torch.compiler.is_compiling() and q.device.type != "meta":
        out = _widened_attention(cache, *inputs, scale)
        if out is not None:
            return out
    return exact_sdpa(q, k, v, C_rot, B_rot, g, lam, scale)


def _widened_attention(cache, q, k, v, C_rot, B_rot, g, lam, scale):
    """One stock-SDPA call over cache.wide, after appending the rows not yet in it.

    Khat row j holds [k_j, exp(c0 - g_j) Br_j] and the query [q_i, (lam / scale)
    exp(g_i - c0) Cr_i], so scale * Qhat_i.Khat_j is the exact score for any
    reference c0 (b, 1, h). Both factors stay within exp(budget): when the newest
    g falls more than the budget below c0, c0 moves to it and the stored rows'
    factors are multiplied by exp(c0_new - c0_old) <= 1 (an O(T) pass once per
    budget / decay tokens). Returns None (the caller rebuilds in full) when a new
    value is non-finite or a widened piece exceeds float16's range (and from then on),
    or the new queries alone span more than the budget.
    """
    b, s, h, d = q.shape
    T, n = k.shape[1], C_rot.shape[-1]
    sd, budget = state_dtype(q.dtype), DECAY_BUDGET[q.dtype]
    g = g.to(G_DTYPE)                                             # exponents in float64, then rounded to sd
    w = cache.wide
    if w is None or w["rows"] > T or w["khat"].dtype != q.dtype or w["khat"].shape[-1] != d + n:
        if w is not None and w.get("off"):
            return None
        w = cache.wide = {"rows": 0, "c0": g[:, T - 1 : T].clone(), "khat": q.new_empty(b, h, 0, d + n),
                          "vhat": q.new_empty(b, h, 0, d + n)}
    if w.get("off"):
        return None
    new = g[:, w["rows"] :]

    def spans():     # the largest new key exponent c0 - g_j and query exponent |g_i - c0|: one sync
        return torch.stack(((w["c0"] - new).amax(), (g[:, T - s :] - w["c0"]).abs().amax())).tolist()
    key_span, query_span = spans()
    if key_span > budget:                                         # rebase on the newest g
        c0 = g[:, T - 1 : T]
        rescale = torch.exp((c0 - w["c0"]).to(sd)).transpose(1, 2)[..., None].to(q.dtype)   # (b, h, 1, 1) <= 1
        w["khat"][:, :, : w["rows"], d:] *= rescale
        w["c0"] = c0.clone()
        key_span, query_span = spans()
    if key_span > budget or query_span > budget:
        return None                                               # the new rows alone span too much
    if w["khat"].shape[2] < T:                                    # grow by doubling
        cap = max(T, 2 * w["khat"].shape[2], cache.capacity)
        for name in ("khat", "vhat"):
            grown = q.new_empty(b, h, cap, d + n)
            grown[:, :, : w["rows"]] = w[name][:, :, : w["rows"]]
            w[name] = grown
    r0, sums = w["rows"], []
    bk = B_rot[:, r0:T].to(sd) * torch.exp((w["c0"] - g[:, r0:T]).to(sd))[..., None]
    fill_wide(w["khat"][:, :, r0:T], [k[:, r0:T], bk], sums)
    fill_wide(w["vhat"][:, :, r0:T], [v[:, r0:T]], sums)
    cq = C_rot.to(sd) * (torch.exp((g[:, T - s :] - w["c0"]).to(sd)) * (lam.to(sd) / scale))[..., None]
    qhat = fill_wide(q.new_empty(b, h, s, d + n), [q, cq], sums)
    if q.dtype == torch.float16:          # a piece past float16's range: the exact path instead
        overflow_check([bk, cq], q.dtype, sums)
    if not all_finite(sums):
        w["off"] = True                                           # the exact path handles NaN rows
        return None
    w["rows"] = T
    mask, causal = causal_args(T - s, T)
    o = F.scaled_dot_product_attention(qhat, w["khat"][:, :, :T], w["vhat"][:, :, :T], attn_mask=mask,
                                       is_causal=causal, scale=scale)
    return o[..., :d].transpose(1, 2)
