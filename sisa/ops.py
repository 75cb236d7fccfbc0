"""The public functional ops: validation, then dispatch to a backend.

Layout is flash-attn's (batch, seqlen, heads, dim); see docs/design.md section 1.
"""
from __future__ import annotations

import math

import torch

from . import backends
from ._checks import check_attention_inputs, check_attention_values, check_scan_inputs, check_softmax_scale
from .naive import naive_attention, naive_scan, scan_state, state_dtype
from .sdpa import fused_augment_available, sdpa_attention
from .varlen import check_cu_seqlens, split_sequences


def ssm_importance_scan(C: torch.Tensor, B: torch.Tensor, log_alpha: torch.Tensor, theta: torch.Tensor, *,
                        initial_state: tuple[torch.Tensor, torch.Tensor] | None = None, backend: str = "auto",
                        cu_seqlens: torch.Tensor | None = None, check_inputs: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The SSM importance scan: cumulative log-decay and rotated C, B.

    Args:
        C, B: (b, t, h, n) SSM projections, n = d_state even.
        log_alpha: (b, t, h) per-token log-decays, <= 0.
        theta: (b, t, h, n/2) per-token phase increments.
        initial_state: optional (g0 (b, h), phi0 (b, h, n/2)) to continue a scan
            (with cu_seqlens: (n_seqs, h), (n_seqs, h, n/2), one per sequence).
        backend: "naive" (PyTorch ops), "triton" (fused kernel) or "auto".
        cu_seqlens: optional int32 (n_seqs + 1,) for packed inputs (b = 1): the scan
            restarts at every sequence start (inside the kernel for triton: one launch).
        check_inputs: validate values too (log_alpha <= 0, its total along t above
            -1e9, g0 finite, cu_seqlens' entries; one host sync).
    Returns:
        (C_rot (b, t, h, n) in C's dtype, B_rot (b, t, h, n), g (b, t, h) float64
        for every input dtype (see docs/design.md section 5), final_state (g_last,
        phi_last)) with g_last (b, h) float64 and phi_last (b, h, n/2) float32
        (float64 for float64 inputs) — (n_seqs, ...) with cu_seqlens.
    """
    segments = None
    if cu_seqlens is not None:
        check_scan_inputs(C, B, log_alpha, theta, None, check_values=False)   # shapes first
        segments = check_cu_seqlens(cu_seqlens, C.shape[1], C.shape[0], values=check_inputs, device=C.device)
    n_seqs = None if cu_seqlens is None else cu_seqlens.shape[0] - 1
    check_scan_inputs(C, B, log_alpha, theta, initial_state, check_values=check_inputs, n_seqs=n_seqs)
    backend = backends.resolve(backend, C.device, "scan")
    if backend == "triton":
        g0, phi0 = initial_state if initial_state is not None else (None, None)
        try:
            C_rot, B_rot, g, g_last, phi_last = backends.kernel("scan").ssm_scan(
                C, B, log_alpha, theta, g0, phi0, cu_seqlens=cu_seqlens)
            return C_rot, B_rot, g, (g_last, phi_last)
        except backends.KernelLaunchError as exc:     # no config launches on this GPU
            exc.warn_once("the naive scan")
    if cu_seqlens is None:
        return naive_scan(C, B, log_alpha, theta, initial_state)
    if C.device.type == "meta":                                   # no values: the shapes of n_seqs sequences
        C_rot, B_rot, g, (g_last, phi_last) = naive_scan(C, B, log_alpha, theta)
        return C_rot, B_rot, g, (g_last.new_empty(n_seqs, *g_last.shape[1:]),
                                 phi_last.new_empty(n_seqs, *phi_last.shape[1:]))
    return _packed_naive_scan(C, B, log_alpha, theta, initial_state,
                              segments or check_cu_seqlens(cu_seqlens, C.shape[1], 1))


def _packed_naive_scan(C, B, log_alpha, theta, initial_state, segments):
    """The naive scan of each packed sequence from its own state row."""
    if not segments:                                              # no sequences (so t = 0)
        C_rot, B_rot, g, (g_last, phi_last) = naive_scan(C, B, log_alpha, theta)
        return C_rot, B_rot, g, (g_last[:0], phi_last[:0])
    parts = zip(*(split_sequences(x, segments) for x in (C, B, log_alpha, theta)))
    outs = [naive_scan(*p, None if initial_state is None else (initial_state[0][s:s + 1], initial_state[1][s:s + 1]))
            for s, p in enumerate(parts)]
    C_rot, B_rot, g = (torch.cat(x, dim=1) for x in zip(*(o[:3] for o in outs)))
    return C_rot, B_rot, g, tuple(torch.cat(x) for x in zip(*(o[3] for o in outs)))


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on the output of a backend with first derivatives only (sdpa: PyTorch's
    fused SDPA backward has none; triton: the kernels'). Its backward runs first, so a
    backward with create_graph=True (a double backward) stops here with one clear
    error instead of one from deep inside PyTorch or the kernels."""

    @staticmethod
    def forward(ctx, out, backend):
        ctx.backend = backend
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():                      # create_graph=True: a graph of the backward is wanted
            raise NotImplementedError(
                f"backend {ctx.backend!r} has first derivatives only; a double backward (create_graph=True) "
                "needs backend='naive', which supports derivatives of any order")
        return grad, None


def _first_order(out, backend):
    """out, marked as differentiable once only when autograd records it (see _FirstOrderOnly)."""
    if torch.is_grad_enabled() and out.requires_grad and not torch.compiler.is_compiling():
        return _FirstOrderOnly.apply(out, backend)
    return out


def attention_from_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C_rot: torch.Tensor, B_rot: torch.Tensor, g: torch.Tensor, lam: torch.Tensor, *,
                        softmax_scale: float | None = None, backend: str = "auto",
                        cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """SISA attention given the scan's outputs (no validation: internal callers such
    as the layer's cached prefill). Shapes as sisa_attention, with C_rot, B_rot
    (b, t, h, n) and g (b, t, h); q and C_rot may hold only the last s <= t positions
    (queries of a sequence shard). cu_seqlens (triton only) as there.
    Returns (b, s, h, d) in q's dtype."""
    backend = backends.resolve(backend, q.device, "attention", q.dtype)
    b, s, h, d = q.shape                                          # s queries: the last s of t positions
    if s == 0:
        return q.new_empty(b, 0, h, d)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    if backend == "naive":
        return naive_attention(q, k, v, C_rot, B_rot, g, lam, scale)
    if backend == "triton":
        try:
            return _first_order(backends.kernel("attention_op").sisa_attn(q, k, v, C_rot, B_rot, g, lam.float(), scale,
                                                                          cu_seqlens=cu_seqlens), backend)
        except backends.KernelLaunchError as exc:     # no config launches on this GPU
            exc.warn_once("the exact sdpa path")
        if cu_seqlens is not None:
            parts = zip(*(split_sequences(x, check_cu_seqlens(cu_seqlens, q.shape[1], 1))
                          for x in (q, k, v, C_rot, B_rot, g)))
            return _first_order(torch.cat([exact_sdpa(*p, lam, scale) for p in parts], dim=1), "sdpa")
    return _first_order(exact_sdpa(q, k, v, C_rot, B_rot, g, lam, scale), "sdpa")


def exact_sdpa(q, k, v, C_rot, B_rot, g, lam, scale):
    """sdpa_attention, without its fused Triton epilogue when that cannot launch."""
    try:
        return sdpa_attention(q, k, v, C_rot, B_rot, g, lam, scale)
    except backends.KernelLaunchError as exc:
        exc.warn_once("the PyTorch Qhat/Khat build")
        return sdpa_attention(q, k, v, C_rot, B_rot, g, lam, scale, fused_augment=False)


def sisa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor, B: torch.Tensor, log_alpha: torch.Tensor, theta: torch.Tensor, lam: torch.Tensor, *,
                   softmax_scale: float | None = None, backend: str = "auto", cu_seqlens: torch.Tensor | None = None,
                   check_inputs: bool = True) -> torch.Tensor:
    """Causal SISA attention.

        score[i, j] = scale q_i.k_j + lam exp(g_i - g_j) (R(Phi_i) C_i).(R(Phi_j) B_j),  j <= i
        g = cumsum(log_alpha), Phi = cumsum(theta)

    Args:
        q: (b, t, h, d), positional RoPE already applied.
        k, v: (b, t, hk, d), hk divides h (GQA / MQA when hk < h).
        C, B: (b, t, h, n); log_alpha: (b, t, h), <= 0; theta: (b, t, h, n/2);
        lam: (h,), > 0 and finite.
        softmax_scale: a finite number > 0; defaults to 1/sqrt(d) (the content head dim).
        backend: "naive" (explicit t x t scores), "sdpa" (stock SDPA, exact at any
            decay), "triton" (fused kernels) or "auto" (triton on CUDA, else sdpa).
        cu_seqlens: optional int32 (n_seqs + 1,) for packed inputs (b = 1): no token
            attends across a sequence boundary and g, Phi restart at each start.
        check_inputs: also check values (log_alpha <= 0 and its total along t above
            -1e9, lam > 0 and finite; one host sync). NaN in any input is not an
            error: it gives NaN exactly where the maths does, on every backend.
    q, k, v, C and B share one dtype (float16, bfloat16, float32 or float64);
    log_alpha, theta and lam may have any of these (they are used in float32,
    float64 for float64 inputs).
    Returns:
        (b, t, h, d) in q's dtype. Differentiable in all eight inputs.
    """
    check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, check_values=False, softmax_scale=softmax_scale)
    softmax_scale = check_softmax_scale(softmax_scale)              # a float (or None) from here on
    backend = backends.resolve(backend, q.device, "attention", q.dtype)
    if check_inputs and cu_seqlens is None and torch.compiler.is_compiling():
        from ._compile import checked_lam          # the value checks as an op of the graph (no v probe)
        lam = checked_lam(log_alpha, lam, theta, softmax_scale or 1.0 / math.sqrt(q.shape[-1]))
        check_inputs = False
    # Values, in one sync; the kernel's route also needs to know whether v is finite.
    v_finite = (check_attention_values(log_alpha, lam, probe_v=v if backend == "triton" else None, theta=theta,
                                       scale=softmax_scale or 1.0 / math.sqrt(q.shape[-1]))
                if check_inputs else None)
    if backend == "triton" and v_finite is False:
        # An inf in v: the kernel's diagonal tiles would multiply it by the 0 weight of
        # masked rows (NaN); sdpa's exact row-wise path keeps those rows as the maths has them.
        backends.logger.info("sisa: v holds an inf; this call runs the sdpa path instead of triton")
        backend = "sdpa"
    if cu_seqlens is not None:
        segments = check_cu_seqlens(cu_seqlens, q.shape[1], q.shape[0], values=check_inputs, device=q.device)
        if backend == "triton":            # inside the kernels: launches independent of n_seqs
            C_rot, B_rot, g, _ = ssm_importance_scan(C, B, log_alpha, theta, backend="triton",
                                                     cu_seqlens=cu_seqlens, check_inputs=False)
            return attention_from_scan(q, k, v, C_rot, B_rot, g, lam, softmax_scale=softmax_scale,
                                       backend="triton", cu_seqlens=cu_seqlens)
        if q.device.type == "meta":                # no values to split by: the shapes are one sequence's
            return sisa_attention(q, k, v, C, B, log_alpha, theta, lam, softmax_scale=softmax_scale,
                                  backend=backend, check_inputs=False)
        segments = segments or check_cu_seqlens(cu_seqlens, q.shape[1], 1)
        parts = zip(*(split_sequences(x, segments) for x in (q, k, v, C, B, log_alpha, theta)))
        outs = [sisa_attention(*p, lam, softmax_scale=softmax_scale, backend=backend, check_inputs=False)
                for p in parts]
        return torch.cat(outs, dim=1) if outs else q.new_empty(q.shape)
    if q.shape[1] == 0:
        return q.new_empty(q.shape)
    if backend == "sdpa" and not fused_augment_available(q):   # the rotation folds into the Qhat/Khat build
        g, phi = scan_state(log_alpha, theta, state_dtype(q.dtype))
        return _first_order(sdpa_attention(q, k, v, C, B, g, lam, softmax_scale, phi=phi), backend)
    scan_backend = backend if backend in ("naive", "triton") else "auto"   # sdpa: the fused scan on CUDA
    C_rot, B_rot, g, _ = ssm_importance_scan(C, B, log_alpha, theta, backend=scan_backend, check_inputs=False)
    return attention_from_scan(q, k, v, C_rot, B_rot, g, lam, softmax_scale=softmax_scale, backend=backend)
