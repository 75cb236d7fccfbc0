"""Cached decoding: per-layer state and attention of new tokens over the cache.

A cached step keeps, per layer, k and v (b, T, hk, d), B_rot (b, T, h, n) and the
float32 g (b, T, h) of every past token, plus the running scan state
(g_last (b, h), phi_last (b, h, n/2)). New tokens continue the scan from that state
and attend over the cache with the exact SISA score: the decay is the difference
g_i - g_j of stored cumulative log-decays, never a clamped factorisation.
"""
from __future__ import annotations

import torch

from . import backends
from .sdpa import sdpa_attention


class LayerCache:
    """Growable per-layer storage. ``capacity`` preallocates; when full, the
    buffers double, so appending T tokens one by one costs O(T) copies in all."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self.length = 0
        self.state = None            # (g_last, phi_last) of the scan, or None before the first step
        self._buf: dict[str, torch.Tensor] = {}

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


def cached_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None):
    """SISA attention of s new queries over T cached keys (the queries are the last s).

    q (b, s, h, d); k, v (b, T, hk, d); C_rot (b, s, h, n); B_rot (b, T, h, n);
    g (b, T, h) float32; lam (h,). Returns (b, s, h, d). Uses the Triton decode
    kernel on CUDA when available, the exact stock-SDPA path elsewhere.
    """
    if q.is_cuda and backends.triton_unavailable_reason(q.device) is None:
        return backends.kernel("decode").sisa_decode(q, k, v, C_rot, B_rot, g, lam, softmax_scale)
    return sdpa_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale)
