"""flash-attn-shaped faces over the SISA ops, so a flash-attn or fla user can switch by name.

    sisa_attn_func(q, k, v, C, B, log_alpha, theta, lam, softmax_scale=None, return_lse=False)
    sisa_attn_varlen_func(q, k, v, C, B, log_alpha, theta, lam, cu_seqlens_q, cu_seqlens_k,
                          max_seqlen_q, max_seqlen_k, softmax_scale=None, return_lse=False)
    sisa_attn_with_kvcache(q, k_cache, v_cache, b_cache, g_cache, phi_state, k, v, C, B,
                           log_alpha, theta, lam, cache_seqlens, softmax_scale=None)

Always causal (SISA's decay runs forward in time); no dropout, window or alibi.
With fewer queries than keys the queries are the last positions of their sequence
(flash-attn's bottom-right causal alignment): chunked prefill, speculative
verification. The maths, validation and backends are ``sisa.sisa_attention``'s
(docs/design.md); these functions only reshape and dispatch.
"""
from __future__ import annotations

import numbers

import torch

from . import backends
from ._checks import check_attention_inputs, check_scan_inputs, check_softmax_scale
from .naive import G_DTYPE
from .ops import attention_from_scan, sisa_attention, ssm_importance_scan
from .varlen import check_cu_seqlens

Tensor = torch.Tensor


def _lse_needs_triton(return_lse: bool, backend: str, device) -> str:
    """The backend to run: with return_lse, the Triton kernel (the only path that forms
    the log-sum-exp); else ``backend`` unchanged."""
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if not return_lse:
        return backend
    if backends.resolve(backend, torch.device(device), "attention") != "triton":
        raise NotImplementedError(
            "return_lse=True needs backend='triton' (CUDA, or the CPU under TRITON_INTERPRET=1): "
            "the naive and sdpa paths do not form the log-sum-exp")
    return "triton"


def _attention_and_lse(q, k, v, C_rot, B_rot, g, lam, softmax_scale, cu_seqlens=None):
    """The Triton forward's (out (b, s, h, d), lse (b, h, s) float32, natural log);
    differentiable in out (lse is not)."""
    op = backends.kernel("attention_op")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    bounds = None if cu_seqlens is None else backends.kernel("attention").sequence_bounds(cu_seqlens, q.shape[1])
    return op._attn_fwd_op(q, k, v, C_rot, B_rot, g.to(G_DTYPE), lam.float().contiguous(), float(scale), bounds)


def sisa_attn_func(q: Tensor, k: Tensor, v: Tensor, C: Tensor, B: Tensor, log_alpha: Tensor, theta: Tensor,
                   lam: Tensor, softmax_scale: float | None = None, return_lse: bool = False, *,
                   backend: str = "auto", check_inputs: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """Causal SISA attention, flash_attn_func's shape: ``sisa.sisa_attention``.

    q (b, t, h, d); k, v (b, t, hk, d), hk divides h; C, B (b, t, h, n); log_alpha
    (b, t, h) <= 0; theta (b, t, h, n/2); lam (h,) > 0. Returns out (b, t, h, d), and
    with return_lse also lse (b, h, t) float32 (natural log, as flash-attn's
    softmax_lse; needs the triton backend).
    """
    backend = _lse_needs_triton(return_lse, backend, q.device)
    if not return_lse:
        return sisa_attention(q, k, v, C, B, log_alpha, theta, lam, softmax_scale=softmax_scale,
                              backend=backend, check_inputs=check_inputs)
    check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, check_values=check_inputs,
                           softmax_scale=softmax_scale)
    C_rot, B_rot, g, _ = ssm_importance_scan(C, B, log_alpha, theta, backend="triton", check_inputs=False)
    return _attention_and_lse(q, k, v, C_rot, B_rot, g, lam, check_softmax_scale(softmax_scale))


def _cu(name: str, cu: Tensor) -> Tensor:
    """cu_seqlens as int32 (int32 or int64 accepted)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {cu.dtype}")
    return cu.to(torch.int32)


def _max_seqlen(name: str, value, lengths: list[int]) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if lengths and value < max(lengths):
        raise ValueError(f"{name} is {value} but the longest sequence has {max(lengths)} positions")


def sisa_attn_varlen_func(q: Tensor, k: Tensor, v: Tensor, C: Tensor, B: Tensor, log_alpha: Tensor,
                          theta: Tensor, lam: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                          max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float | None = None,
                          return_lse: bool = False, *, backend: str = "auto",
                          check_inputs: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """Packed variable-length causal SISA attention, flash_attn_varlen_func's shape.

    q (total_q, h, d); k, v (total_k, hk, d); C, B (total_k, h, n), log_alpha
    (total_k, h), theta (total_k, h, n/2): every position of every sequence (only
    the query positions' C is used); lam (h,). cu_seqlens_q, cu_seqlens_k (n_seqs + 1,)
    int32 or int64: sequence s holds queries [cu_q[s], cu_q[s+1]) and keys [cu_k[s],
    cu_k[s+1]); its t_s keys are its whole sequence and its s_s <= t_s queries are the
    last s_s of them. g and Phi restart at each sequence; nothing attends across one.
    max_seqlen_q / max_seqlen_k: at least the longest sequence (checked). Returns out
    (total_q, h, d), and with return_lse also lse (h, total_q) float32 (triton only,
    and only when cu_seqlens_q equals cu_seqlens_k).
    """
    cu_q, cu_k = _cu("cu_seqlens_q", cu_seqlens_q), _cu("cu_seqlens_k", cu_seqlens_k)
    for name, x, dims in (("q", q, 3), ("k", k, 3), ("v", v, 3), ("C", C, 3), ("B", B, 3),
                          ("log_alpha", log_alpha, 2), ("theta", theta, 3)):
        if not isinstance(x, torch.Tensor) or x.dim() != dims:
            raise ValueError(f"{name} must be a {dims}-D tensor (total, ...) in the varlen layout, "
                             f"got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must both have n_seqs + 1 entries, "
                         f"got {tuple(cu_q.shape)} and {tuple(cu_k.shape)}")
    backend = _lse_needs_triton(return_lse, backend, q.device)
    segments_k = check_cu_seqlens(cu_k, k.shape[0], 1)            # one host sync each
    segments_q = check_cu_seqlens(cu_q, q.shape[0], 1)
    lens_q, lens_k = [b - a for a, b in segments_q], [b - a for a, b in segments_k]
    _max_seqlen("max_seqlen_q", max_seqlen_q, lens_q)
    _max_seqlen("max_seqlen_k", max_seqlen_k, lens_k)
    for i, (s, t) in enumerate(zip(lens_q, lens_k)):
        if s > t:
            raise ValueError(f"sequence {i} has {s} queries but {t} keys; queries must be the last "
                             "s <= t positions of their sequence")
    packed = [x[None] for x in (k, v, C, B, log_alpha, theta)]
    if lens_q == lens_k:                                          # every position a query
        if not return_lse:
            return sisa_attention(q[None], *packed, lam, softmax_scale=softmax_scale, backend=backend,
                                  cu_seqlens=cu_k, check_inputs=check_inputs)[0]
        check_attention_inputs(q[None], *packed, lam, check_values=check_inputs, softmax_scale=softmax_scale)
        C_rot, B_rot, g, _ = ssm_importance_scan(*packed[2:], backend="triton", cu_seqlens=cu_k,
                                                 check_inputs=False)
        out, lse = _attention_and_lse(q[None], packed[0], packed[1], C_rot, B_rot, g, lam,
                                      check_softmax_scale(softmax_scale), cu_seqlens=cu_k)
        return out[0], lse[0]
    if return_lse:
        raise NotImplementedError("return_lse with fewer queries than keys is not implemented")
    # Queries shorter than keys: shapes and values as for the whole (1, total_k) input,
    # q's (h, d) checked through a stand-in of k's length; then one call per sequence.
    stand_in = q.new_empty(1).expand(1, k.shape[0], *q.shape[1:])
    check_attention_inputs(stand_in, *packed, lam, check_values=check_inputs, softmax_scale=softmax_scale)
    scale = check_softmax_scale(softmax_scale)
    outs = []
    for (q0, q1), (k0, k1) in zip(segments_q, segments_k):
        if q1 == q0:
            continue
        C_rot, B_rot, g, _ = ssm_importance_scan(*(x[:, k0:k1] for x in packed[2:]), backend=_scan(backend),
                                                 check_inputs=False)
        outs.append(attention_from_scan(q[None, q0:q1], packed[0][:, k0:k1], packed[1][:, k0:k1],
                                        C_rot[:, (k1 - k0) - (q1 - q0):], B_rot, g, lam,
                                        softmax_scale=scale, backend=backend)[0])
    return torch.cat(outs) if outs else q.new_empty(q.shape)


def _scan(backend: str) -> str:
    return backend if backend in ("naive", "triton") else "auto"


def sisa_attn_with_kvcache(q: Tensor, k_cache: Tensor, v_cache: Tensor, b_cache: Tensor, g_cache: Tensor,
                           phi_state: Tensor, k: Tensor, v: Tensor, C: Tensor, B: Tensor, log_alpha: Tensor,
                           theta: Tensor, lam: Tensor, cache_seqlens: Tensor, softmax_scale: float | None = None,
                           *, backend: str = "auto", check_inputs: bool = True) -> Tensor:
    """Append s new tokens to a preallocated cache, then attend: flash_attn_with_kvcache's shape.

    Cache (capacity T, updated in place at rows [L_b, L_b + s) of batch row b, with
    L = cache_seqlens): k_cache, v_cache (b, T, hk, d); b_cache (b, T, h, n) the
    rotated B; g_cache (b, T, h) float64 the cumulative log-decay; phi_state
    (b, h, n/2) float32 (float64 in a float64 cache) the cumulative rotation angle
    after the L_b cached tokens (overwritten with the new one). New tokens: q (b, s, h, d);
    k, v (b, s, hk, d); C, B (b, s, h, n); log_alpha (b, s, h); theta (b, s, h, n/2);
    lam (h,). cache_seqlens (b,) int32 or int64, L_b + s <= T (not updated: add s).
    Query i of row b sits at position L_b + i and sees keys 0 .. L_b + i.

    On CUDA with Triton, where autograd records nothing, the decode kernel attends
    (per-row live lengths read on the device); elsewhere each row runs
    ``sisa.sisa_attention``'s attention over its own L_b + s keys. Returns (b, s, h, d).
    """
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cache_seqlens must be an int32 or int64 tensor, got "
                        f"{getattr(cache_seqlens, 'dtype', type(cache_seqlens).__name__)}")
    check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, check_values=check_inputs,
                           softmax_scale=softmax_scale)
    b, s, h, d = q.shape
    n = C.shape[-1]
    T = k_cache.shape[1] if isinstance(k_cache, torch.Tensor) and k_cache.dim() == 4 else None
    for name, x, shape in (("k_cache", k_cache, (b, T, k.shape[2], d)), ("v_cache", v_cache, (b, T, k.shape[2], d)),
                           ("b_cache", b_cache, (b, T, h, n)), ("g_cache", g_cache, (b, T, h)),
                           ("phi_state", phi_state, (b, h, n // 2)), ("cache_seqlens", cache_seqlens, (b,))):
        if not isinstance(x, torch.Tensor) or T is None or tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (b, T = capacity, ...), "
                             f"got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    for name, x, like in (("k_cache", k_cache, k), ("v_cache", v_cache, v), ("b_cache", b_cache, B)):
        if x.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the new tokens' {name[0]} has {like.dtype}")
    if g_cache.dtype != G_DTYPE:
        raise TypeError(f"g_cache must be {G_DTYPE} (the cumulative log-decay), got {g_cache.dtype}")
    if phi_state.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"phi_state must be float32 or float64, got {phi_state.dtype}")
    lengths = cache_seqlens.long()
    if check_inputs and not bool(((lengths >= 0) & (lengths + s <= T)).all()):
        raise ValueError(f"cache_seqlens must lie in [0, T - s] = [0, {T - s}], got {cache_seqlens.tolist()}")
    rows = torch.arange(b, device=q.device)
    last = (lengths - 1).clamp(min=0)
    g0 = torch.where(lengths[:, None] > 0, g_cache[rows, last], 0.0)     # (b, h): g after the cached tokens
    C_rot, B_rot, g, (_, phi_last) = ssm_importance_scan(C, B, log_alpha, theta, initial_state=(g0, phi_state),
                                                         backend=_scan(backend), check_inputs=False)
    at = (lengths[:, None] + torch.arange(s, device=q.device)).clamp(max=T - 1)   # (b, s) rows written
    for cache, new in ((k_cache, k), (v_cache, v), (b_cache, B_rot), (g_cache, g)):
        cache[rows[:, None], at] = new.to(cache.dtype)
    phi_state.copy_(phi_last)
    live = lengths + s
    scale = check_softmax_scale(softmax_scale)
    recorded = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, C, B, log_alpha, theta, lam))
    name = backends.resolve(backend, q.device, "attention", q.dtype)
    if name == "triton" and q.is_cuda and not recorded:
        return backends.kernel("decode").sisa_decode(q, k_cache, v_cache, C_rot, b_cache, g_cache, lam, scale,
                                                     lengths=live.to(torch.int32), check_lengths=False)
    outs = [attention_from_scan(q[i:i + 1], k_cache[i:i + 1, :L], v_cache[i:i + 1, :L], C_rot[i:i + 1],
                                b_cache[i:i + 1, :L], g_cache[i:i + 1, :L], lam, softmax_scale=scale, backend=name)
            for i, L in enumerate(live.tolist())]
    return torch.cat(outs)
