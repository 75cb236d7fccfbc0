"""The public functional ops: validation, then dispatch to a backend.

Layout is flash-attn's (batch, seqlen, heads, dim); see SPEC.md section 1.
"""
from __future__ import annotations

import math

import torch

from . import backends
from ._checks import check_attention_inputs, check_scan_inputs
from .naive import naive_attention, naive_scan, state_dtype
from .sdpa import sdpa_attention


def ssm_importance_scan(C, B, log_alpha, theta, *, initial_state=None, backend="auto",
                        check_inputs=True):
    """The SSM importance scan: cumulative log-decay and rotated C, B.

    Args:
        C, B: (b, t, h, n) SSM projections, n = d_state even.
        log_alpha: (b, t, h) per-token log-decays, <= 0.
        theta: (b, t, h, n/2) per-token phase increments.
        initial_state: optional (g0 (b, h), phi0 (b, h, n/2)) to continue a scan.
        backend: "naive" (PyTorch ops), "triton" (fused kernel) or "auto".
        check_inputs: validate values too (log_alpha <= 0; one host sync).
    Returns:
        (C_rot (b, t, h, n) in C's dtype, B_rot (b, t, h, n), g (b, t, h) float32
        (float64 for float64 inputs), final_state (g_last (b, h), phi_last (b, h, n/2))).
    """
    check_scan_inputs(C, B, log_alpha, theta, initial_state, check_values=check_inputs)
    backend = backends.resolve(backend, C.device, "scan")
    if backend == "triton" and C.dtype != torch.float64:
        g0, phi0 = initial_state if initial_state is not None else (None, None)
        C_rot, B_rot, g, g_last, phi_last = backends.kernel("scan").ssm_scan(C, B, log_alpha, theta, g0, phi0)
        return C_rot, B_rot, g, (g_last, phi_last)
    return naive_scan(C, B, log_alpha, theta, initial_state)


def sisa_attention(q, k, v, C, B, log_alpha, theta, lam, *, softmax_scale=None, backend="auto",
                   check_inputs=True):
    """Causal SISA attention.

        score[i, j] = scale q_i.k_j + lam exp(g_i - g_j) (R(Phi_i) C_i).(R(Phi_j) B_j),  j <= i
        g = cumsum(log_alpha), Phi = cumsum(theta)

    Args:
        q: (b, t, h, d), positional RoPE already applied.
        k, v: (b, t, hk, d), hk divides h (GQA / MQA when hk < h).
        C, B: (b, t, h, n); log_alpha: (b, t, h), <= 0; theta: (b, t, h, n/2);
        lam: (h,), > 0.
        softmax_scale: defaults to 1/sqrt(d) (the content head dim).
        backend: "naive" (explicit t x t scores), "sdpa" (stock SDPA, exact at any
            decay), "triton" (fused kernels) or "auto" (triton on CUDA, else sdpa).
        check_inputs: also check values (log_alpha <= 0, lam > 0; one host sync).
    Returns:
        (b, t, h, d) in q's dtype. Differentiable in all eight inputs.
    """
    check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, check_values=check_inputs)
    backend = backends.resolve(backend, q.device, "attention")
    b, t, h, d = q.shape
    if t == 0:
        return q.new_empty(b, 0, h, d)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    if backend == "naive":
        C_rot, B_rot, g, _ = naive_scan(C, B, log_alpha, theta)
        return naive_attention(q, k, v, C_rot, B_rot, g, lam, scale)
    fused_scan = backend == "triton" or (q.is_cuda and backends.triton_unavailable_reason(q.device) is None)
    scan_backend = "triton" if fused_scan else "naive"
    C_rot, B_rot, g, _ = ssm_importance_scan(C, B, log_alpha, theta, backend=scan_backend, check_inputs=False)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, C_rot, B_rot, g, lam, scale)
    attn = backends.kernel("attention_op").sisa_attn
    return attn(q, k, v, C_rot, B_rot, g.float(), lam.to(state_dtype(q.dtype)), scale)
