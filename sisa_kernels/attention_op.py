"""SISA attention as torch.library custom ops (traceable by torch.compile) and the
public differentiable function ``sisa_attn``.

    sisa_attn(q, k, v, C_rot, B_rot, g, lam, softmax_scale=None) -> out

q (b, t, h, d); k, v (b, t, hk, d) with hk dividing h (q head i uses kv head
i // (h // hk)); C_rot, B_rot (b, t, h, n); g (b, t, h), non-increasing along t,
used in float64 (a float32 g is converted: its own rounding stays, see docs/design.md
section 5); lam (h,) (any float dtype, used in float32); softmax_scale defaults to
1/sqrt(d). Returns out (b, t, h, d) in q's dtype:

    out_i = softmax_j(scale q_i.k_j + lam exp(g_i - g_j) Cr_i.Br_j, j <= i) @ v

Gradients flow to q, k, v, C_rot, B_rot, g and lam.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .attention import sequence_bounds, sisa_attn_fwd
from .attention_bwd import sisa_attn_bwd
from .attention_ref import dense_attention
from .errors import KernelLaunchError


@torch.library.custom_op("sisa_kernels::sisa_attn_fwd", mutates_args=())
def _attn_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C_rot: torch.Tensor,
                 B_rot: torch.Tensor, g: torch.Tensor, lam: torch.Tensor,
                 softmax_scale: float, bounds: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out (b, t, h, d) in q's dtype, lse (b, h, t) float32)."""
    return sisa_attn_fwd(q, k, v, C_rot, B_rot, g, lam, softmax_scale, bounds=bounds)


@_attn_fwd_op.register_fake
def _(q, k, v, C_rot, B_rot, g, lam, softmax_scale, bounds=None):
    b, s, h, d = q.shape
    return q.new_empty((b, s, h, d)), q.new_empty((b, h, s), dtype=torch.float32)


@torch.library.custom_op("sisa_kernels::sisa_attn_bwd", mutates_args=())
def _attn_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 C_rot: torch.Tensor, B_rot: torch.Tensor, g: torch.Tensor, lam: torch.Tensor,
                 out: torch.Tensor, lse: torch.Tensor, softmax_scale: float,
                 bounds: Optional[torch.Tensor] = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                            torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv, dC_rot, dB_rot, dg, dlam), each shaped and typed like its input."""
    dq, dk, dv, dcr, dbr, dg, dlam = sisa_attn_bwd(dout, q, k, v, C_rot, B_rot, g, lam, out, lse,
                                                   softmax_scale, bounds=bounds)
    return dq, dk, dv, dcr, dbr, dg, dlam.to(lam.dtype)


@_attn_bwd_op.register_fake
def _(dout, q, k, v, C_rot, B_rot, g, lam, out, lse, softmax_scale, bounds=None):
    # The kernels write contiguous gradients whatever the inputs' strides.
    return tuple(x.new_empty(x.shape) for x in (q, k, v, C_rot, B_rot, g, lam))


def _setup_context(ctx, inputs, output):
    q, k, v, C_rot, B_rot, g, lam, softmax_scale, bounds = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, C_rot, B_rot, g, lam, out, lse, bounds)
    ctx.softmax_scale = softmax_scale
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)       # no zero-filled (b, h, t) gradient for lse


def _backward(ctx, dout, dlse):
    q, k, v, C_rot, B_rot, g, lam, out, lse, bounds = ctx.saved_tensors
    try:
        grads = _attn_bwd_op(dout, q, k, v, C_rot, B_rot, g, lam, out, lse, ctx.softmax_scale, bounds)
    except KernelLaunchError as exc:       # no backward config launches on this GPU
        exc.warn_once("the dense PyTorch reference for the gradients")
        grads = _dense_grads(dout, (q, k, v, C_rot, B_rot, g, lam), ctx.softmax_scale, bounds)
    return (*grads, None, None)


def _dense_grads(dout, inputs, softmax_scale, bounds):
    """The seven gradients by autograd through ``attention_ref.dense_attention``."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() for x in inputs]
        out = dense_attention(*leaves, softmax_scale, bounds)
        return torch.autograd.grad(out, leaves, dout)


_attn_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def sisa_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C_rot: torch.Tensor,
              B_rot: torch.Tensor, g: torch.Tensor, lam: torch.Tensor,
              softmax_scale: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused causal SISA attention (shapes in the module docstring); differentiable.
    cu_seqlens: optional int32 (n_seqs + 1,) of a packed batch (b = 1, not checked):
    no token attends across a sequence boundary; one launch set whatever n_seqs."""
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    bounds = None if cu_seqlens is None else sequence_bounds(cu_seqlens, q.shape[1])
    g = g.to(torch.float64)                 # the kernels split it into float32 (hi, lo) pairs
    out, _ = _attn_fwd_op(q, k, v, C_rot, B_rot, g, lam.contiguous(), float(softmax_scale), bounds)
    return out
