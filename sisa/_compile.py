"""torch.compile without graph breaks on the stock-PyTorch path.

``sdpa_attention`` reads values on the host: how many query chunks the decay needs
(``plan_chunks``) and whether every input is finite (``all_finite``). Under
torch.compile those reads would break the graph (and, with fullgraph=True, fail),
so while compiling it calls the custom ops below instead: to the compiler one
opaque node with a fake (shape-only) implementation, at run time the very same
eager function, host syncs included. Eager calls never come here.

    sdpa_attention_op(q, k, v, C, B, g, lam, scale, phi) -> out (b, s, h, d)

Shapes as ``sisa.sdpa.sdpa_attention`` (phi None: C, B are the scan's C_rot, B_rot).
The backward (a second op) recomputes the forward under autograd and returns the
gradients of all tensor inputs: one more forward per backward, no saved
activations besides the inputs. Double backward is not supported.

    checked_lam(log_alpha, lam, theta, scale) -> lam (a copy)

runs ``check_attention_values`` (log_alpha, lam, theta, as eagerly) at run time;
its output feeds the attention, so the compiler cannot drop the check.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import sdpa
from ._checks import check_attention_values

Tensor = torch.Tensor


@torch.library.custom_op("sisa::sdpa_attention", mutates_args=())
def sdpa_attention_op(q: Tensor, k: Tensor, v: Tensor, C: Tensor, B: Tensor, g: Tensor, lam: Tensor,
                      scale: float, phi: Optional[Tensor] = None) -> Tensor:
    """The eager ``sdpa.sdpa_attention``, as one node of a compiled graph (contiguous output)."""
    return sdpa.sdpa_attention(q, k, v, C, B, g, lam, scale, phi=phi).contiguous()


@sdpa_attention_op.register_fake
def _(q, k, v, C, B, g, lam, scale, phi=None):
    return q.new_empty(q.shape)


def _autograd_on():
    """Re-enable autograd inside a custom op's implementation (which runs below the
    autograd dispatch keys) so the backward can differentiate the eager forward."""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradFunctionality)
    for extra in (torch._C.DispatchKey.AutogradOther, torch._C.DispatchKey.AutogradNestedTensor):
        keys = keys | torch._C.DispatchKeySet(extra)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(),
                                           torch._C._dispatch_tls_local_exclude_set() - keys)


@torch.library.custom_op("sisa::sdpa_attention_backward", mutates_args=())
def _sdpa_attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, C: Tensor, B: Tensor, g: Tensor,
                             lam: Tensor, scale: float, phi: Optional[Tensor] = None) -> list[Tensor]:
    """Gradients of (q, k, v, C, B, g, lam, phi) by recomputing the forward under
    autograd; phi's is an empty tensor when phi is None."""
    inputs = [x for x in (q, k, v, C, B, g, lam, phi) if x is not None]
    with _autograd_on(), torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x in inputs]
        out = sdpa.sdpa_attention(*leaves[:7], scale, phi=leaves[7] if phi is not None else None)
        grads = torch.autograd.grad(out, leaves, dout, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr.contiguous() for x, gr in zip(inputs, grads)]
    return grads if phi is not None else grads + [q.new_empty(0)]


@_sdpa_attention_backward.register_fake
def _(dout, q, k, v, C, B, g, lam, scale, phi=None):
    return [x.new_empty(x.shape) for x in (q, k, v, C, B, g, lam)] + [
        q.new_empty(0) if phi is None else phi.new_empty(phi.shape)]


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7], inputs[8])
    ctx.scale = inputs[7]


def _backward(ctx, dout):
    *tensors, phi = ctx.saved_tensors
    grads = _sdpa_attention_backward(dout, *tensors, ctx.scale, phi)
    return (*grads[:7], None, grads[7] if phi is not None else None)


sdpa_attention_op.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("sisa::checked_lam", mutates_args=())
def checked_lam(log_alpha: Tensor, lam: Tensor, theta: Tensor, scale: float) -> Tensor:
    """lam (h,), copied, after ``check_attention_values`` (one host sync)."""
    check_attention_values(log_alpha, lam, theta=theta, scale=scale)
    return lam.clone()


@checked_lam.register_fake
def _(log_alpha, lam, theta, scale):
    return lam.new_empty(lam.shape)


def _checked_backward(ctx, dlam):
    return None, dlam, None, None


checked_lam.register_autograd(_checked_backward, setup_context=lambda ctx, inputs, output: None)
