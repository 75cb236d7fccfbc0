"""What the benchmarks measure: providers, shapes and inputs.

A provider is one implementation of one operation, with the inputs it reads:

    kind "sisa"  (q, k, v, C, B, log_alpha, theta, lam) -> (out (b, t, h, d),)
    kind "plain" (q, k, v) -> (out (b, t, h, d),), causal attention without the SSM term
    kind "scan"  (C, B, log_alpha, theta) -> (C_rot, B_rot, g, g_last, phi_last)

``run(inputs, check)`` returns a tuple of tensors whose first ``n_diff`` entries are
the differentiable outputs the backward pass is driven from. ``check`` is True in
the correctness gate (the public ops validate values, one host sync) and False
when timing. The judge for each kind lives in ``benchmarks.gate``.

Adding a provider (as with ``triton.testing.perf_report``'s line_vals, the list is
data): write ``run(inputs, check) -> tuple`` for one of the kinds above, and add
``Provider(name, kind, run, impl, unsupported)`` to ``PROVIDERS`` at the bottom of
this file. ``impl(device, dtype)`` says in words what runs; ``unsupported(shape,
device, naive_max_t)`` returns None or the reason it cannot run here (a missing
package, no GPU), which the sweep reports instead of timing it. Every command
(``benchmarks.run``, ``benchmarks.ratio``'s --provider, the pytest suite) picks it up
by name, and the gate judges it by its kind: a "plain" provider must compute plain
causal softmax attention (scale 1/sqrt(d)), a "sisa" one SISA attention.

Plain-causal baselines beside PyTorch SDPA and flash-attn: ``flex`` (PyTorch
FlexAttention with a causal block mask, compiled) and ``fla-forgetting`` (fla's
``parallel_forgetting_attn``, softmax attention with a data-dependent decay bias,
the nearest published relative of SISA). Both are GPU providers: on a CPU, or when
the package does not import, they are reported as unsupported with the reason. The
forgetting attention runs with a zero log forget gate, so that it computes plain
causal attention and the plain judge applies; its kernel's work does not depend on
the gate's values.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

import sisa
from sisa.naive import naive_sisa_attention

INPUTS = {
    "sisa": ("q", "k", "v", "C", "B", "log_alpha", "theta", "lam"),
    "plain": ("q", "k", "v"),
    "scan": ("C", "B", "log_alpha", "theta"),
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """One problem size. d_head is None for the scan, d_state None for plain attention."""
    batch: int
    seqlen: int
    heads: int
    kv_heads: int
    d_head: int | None
    d_state: int | None
    dtype: torch.dtype


def make_inputs(kind: str, shape: Shape, device, seed: int = 0, decay_bias: float = -5.0):
    """Random leaf tensors (requires_grad) for ``kind`` at ``shape``, on ``device``.

    q, k, v, C, B ~ N(0, 1) in ``shape.dtype`` (unit scale, so the SSM term moves the
    logits by O(1) and the correctness gate sees it); theta ~ N(0, 0.1^2);
    log_alpha = -softplus(decay_bias + 0.5 N(0, 1)) in float32 (the default -5 is
    the paper's init: ~0.0076 nats per token on average, so the paper's clamp,
    22 nats in all, holds up to ~2900 tokens); lam = softplus(-1 + 0.5 N(0, 1)) in
    float32, one per head.
    """
    b, t, h, hk, d, n, dt = (shape.batch, shape.seqlen, shape.heads, shape.kv_heads,
                             shape.d_head, shape.d_state, shape.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*size, dtype=dt):
        return torch.randn(*size, generator=gen, device=device, dtype=torch.float32).to(dtype)

    make = {
        "q": lambda: randn(b, t, h, d),
        "k": lambda: randn(b, t, hk, d),
        "v": lambda: randn(b, t, hk, d),
        "C": lambda: randn(b, t, h, n),
        "B": lambda: randn(b, t, h, n),
        "log_alpha": lambda: -F.softplus(decay_bias + 0.5 * randn(b, t, h, dtype=torch.float32)),
        "theta": lambda: 0.1 * randn(b, t, h, n // 2),
        "lam": lambda: F.softplus(-1.0 + 0.5 * randn(h, dtype=torch.float32)),
    }
    return {name: make[name]().requires_grad_() for name in INPUTS[kind]}


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    kind: str                                      # "sisa", "plain" or "scan"
    run: Callable[[dict, bool], tuple]
    impl: Callable[[torch.device, torch.dtype], str]
    unsupported: Callable[[Shape, torch.device, int], str | None] = lambda shape, device, naive_max_t: None

    @property
    def n_diff(self) -> int:
        return 3 if self.kind == "scan" else 1


# --- SISA attention -------------------------------------------------------------------

def _sisa_args(x):
    return (x["q"], x["k"], x["v"], x["C"], x["B"], x["log_alpha"], x["theta"], x["lam"])


def _public(backend):
    def run(x, check):
        return (sisa.sisa_attention(*_sisa_args(x), backend=backend, check_inputs=check),)
    return run


def _paper(x, check):
    return (sisa.paper_sdpa_attention(*_sisa_args(x)),)


def _naive(x, check):
    return (naive_sisa_attention(*_sisa_args(x)),)


def _naive_limit(shape, device, naive_max_t):
    if shape.seqlen > naive_max_t:
        return f"naive materialises t x t scores; t={shape.seqlen} > --naive-max-t {naive_max_t}"
    return None


def _triton_unsupported(shape, device, naive_max_t):
    if device.type != "cuda":
        return "Triton kernels need a CUDA GPU (the CPU interpreter is not a benchmark)"
    if "triton" not in sisa.available_backends(device):
        return f"triton not in sisa.available_backends({device})"
    return None


def _paper_impl(device, dtype):
    return "SDPA memory-efficient (forced), midpoint offset, clamp 11" if device.type == "cuda" \
        else "SDPA math (CPU), midpoint offset, clamp 11"


# --- plain causal attention -------------------------------------------------------------

def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except Exception:  # not installed, or built for another torch/CUDA
        return None
    return flash_attn_func


def _plain_backend(device, dtype):
    """(how plain attention runs here, SDPBackend to force or None)."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if _flash_attn_func() is not None:
            import flash_attn
            return f"flash_attn {flash_attn.__version__}", None
        return "SDPA flash (forced)", torch.nn.attention.SDPBackend.FLASH_ATTENTION
    return ("SDPA default" + (" (CPU)" if device.type == "cpu" else "")), None


def _plain(x, check):
    q, k, v = x["q"], x["k"], x["v"]
    impl, backend = _plain_backend(q.device, q.dtype)
    if impl.startswith("flash_attn"):
        return (_flash_attn_func()(q, k, v, causal=True),)
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    gqa = k.shape[2] != q.shape[2]
    if backend is None:
        o = F.scaled_dot_product_attention(*args, is_causal=True, enable_gqa=gqa)
    else:
        with torch.nn.attention.sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(*args, is_causal=True, enable_gqa=gqa)
    return (o.transpose(1, 2),)


def _flex_unsupported(shape, device, naive_max_t):
    if device.type != "cuda":
        return "FlexAttention is a GPU provider here (on a CPU it runs unfused unless inductor compiles it)"
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception as exc:
        return f"torch.nn.attention.flex_attention not importable ({type(exc).__name__}: {exc})"
    return None


_FLEX: dict = {}   # "fn": the compiled flex_attention; (t, device): its causal block mask


def _flex(x, check):
    """FlexAttention with a causal block mask: compiled on CUDA, eager elsewhere (tests)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    q, k, v = (y.transpose(1, 2) for y in (x["q"], x["k"], x["v"]))
    t, dev = q.shape[2], q.device
    if (t, dev) not in _FLEX:
        _FLEX[(t, dev)] = create_block_mask(lambda b, h, i, j: i >= j, None, None, t, t, device=dev)
    fn = flex_attention
    if dev.type == "cuda":
        fn = _FLEX.setdefault("fn", torch.compile(flex_attention, dynamic=False))
    o = fn(q, k, v, block_mask=_FLEX[(t, dev)], enable_gqa=k.shape[1] != q.shape[1])
    return (o.transpose(1, 2),)


def _fla_forgetting_attn():
    """(fla.ops.forgetting_attn.parallel_forgetting_attn or None, why not)."""
    try:
        from fla.ops.forgetting_attn import parallel_forgetting_attn
    except Exception as exc:   # not installed, or built for another torch/Triton
        return None, f"fla not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return parallel_forgetting_attn, None


def _fla_unsupported(shape, device, naive_max_t):
    if device.type != "cuda":
        return "fla's forgetting attention is Triton-only: a GPU provider"
    return _fla_forgetting_attn()[1]


def _fla_forgetting(x, check):
    """fla's forgetting attention with log forget gate 0 (= plain causal attention)."""
    q = x["q"]
    g = q.new_zeros(q.shape[:3], dtype=torch.float32)          # (b, t, h)
    return (_fla_forgetting_attn()[0](q, x["k"], x["v"], g),)


def _fla_impl(device, dtype):
    fn = _fla_forgetting_attn()[0]
    if fn is None:
        return "fla.ops.forgetting_attn.parallel_forgetting_attn (not importable)"
    import fla
    return f"fla {getattr(fla, '__version__', '?')} parallel_forgetting_attn, log forget gate 0"


# --- the scan alone ----------------------------------------------------------------------

def _scan(backend):
    def run(x, check):
        C_rot, B_rot, g, (g_last, phi_last) = sisa.ssm_importance_scan(
            x["C"], x["B"], x["log_alpha"], x["theta"], backend=backend, check_inputs=check)
        return C_rot, B_rot, g, g_last, phi_last
    return run


PROVIDERS = {p.name: p for p in (
    Provider("plain", "plain", _plain, lambda dev, dt: _plain_backend(dev, dt)[0]),
    Provider("flex", "plain", _flex, lambda dev, dt: "torch FlexAttention, causal block mask, torch.compile",
             _flex_unsupported),
    Provider("fla-forgetting", "plain", _fla_forgetting, _fla_impl, _fla_unsupported),
    Provider("naive", "sisa", _naive, lambda dev, dt: "sisa.naive (explicit t x t scores)", _naive_limit),
    Provider("sdpa-paper", "sisa", _paper, _paper_impl),
    Provider("sdpa", "sisa", _public("sdpa"), lambda dev, dt: "sisa_attention(backend='sdpa')"),
    Provider("triton", "sisa", _public("triton"), lambda dev, dt: "sisa_attention(backend='triton')",
             _triton_unsupported),
    Provider("scan-naive", "scan", _scan("naive"), lambda dev, dt: "ssm_importance_scan(backend='naive')"),
    Provider("scan-triton", "scan", _scan("triton"), lambda dev, dt: "ssm_importance_scan(backend='triton')",
             _triton_unsupported),
)}


def timed_callable(provider, inputs, mode):
    """fwd: an inference forward under no_grad. fwd+bwd: forward, then backward for
    every input from fixed random upstream gradients."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return provider.run(inputs, False)
        return fwd
    leaves = list(inputs.values())
    with torch.no_grad():
        outs = provider.run(inputs, False)[: provider.n_diff]
    douts = [torch.randn_like(o) for o in outs]
    del outs

    def fwd_bwd():
        for x in leaves:
            x.grad = None
        outs = provider.run(inputs, False)
        torch.autograd.backward(outs[: provider.n_diff], douts)
    return fwd_bwd


def attention_flops(shape: Shape, mode: str) -> float:
    """The standard count: 4 b h t^2 d, halved for causal; backward 2.5x forward.
    The SSM term is not counted, so SISA and plain rows are directly comparable."""
    fwd = 4 * shape.batch * shape.heads * shape.seqlen ** 2 * shape.d_head / 2
    return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


def _nbytes(*tensors) -> int:
    return sum(x.numel() * x.element_size() for x in tensors)


def scan_bytes(inputs: dict, outputs: tuple, mode: str) -> int:
    """Minimal HBM traffic of the scan. Forward: read C, B, log_alpha, theta; write
    C_rot, B_rot, g and the final state. Backward: read dC_rot, dB_rot, dg and
    C, B, theta (the rotation's adjoint); write dC, dB, dlog_alpha, dtheta."""
    ins = _nbytes(*(inputs[k] for k in INPUTS["scan"]))
    fwd = ins + _nbytes(*outputs)
    if mode == "fwd":
        return fwd
    bwd = _nbytes(*outputs[:3]) + _nbytes(inputs["C"], inputs["B"], inputs["theta"]) + ins
    return fwd + bwd
