"""Input validation shared by every public op: clear errors that name the argument."""
from __future__ import annotations

import torch


def _tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _shape(name, x, expected, what):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, got {tuple(x.shape)}")


def _same_device(named):
    (first, x0), *rest = named
    for name, x in rest:
        if x.device != x0.device:
            raise ValueError(f"{name} is on {x.device} but {first} is on {x0.device}; "
                             "all inputs must be on one device")


def check_log_alpha_values(log_alpha):
    """log_alpha is a log-decay: <= 0 and not -inf (NaN passes through: NaN in, NaN out).
    Needs a host sync; the public ops let callers switch it off."""
    if log_alpha.numel() and bool(((log_alpha > 0) | (log_alpha == float("-inf"))).any()):
        raise ValueError("log_alpha must be <= 0 and finite (it is a per-token log-decay); "
                         f"got max {log_alpha.max().item():.4g}, min {log_alpha.min().item():.4g}")


def check_scan_inputs(C, B, log_alpha, theta, initial_state=None, check_values=True):
    """C, B (b, t, h, n); log_alpha (b, t, h); theta (b, t, h, n/2);
    initial_state (g0 (b, h), phi0 (b, h, n/2)) or None."""
    for name, x in (("C", C), ("B", B), ("log_alpha", log_alpha), ("theta", theta)):
        _tensor(name, x)
    if C.dim() != 4:
        raise ValueError(f"C must be 4-D (batch, seqlen, heads, d_state), got shape {tuple(C.shape)}")
    b, t, h, n = C.shape
    if n % 2:
        raise ValueError(f"d_state (last dim of C) must be even, got {n}")
    _shape("B", B, C.shape, "C's shape (b, t, h, n)")
    _shape("log_alpha", log_alpha, (b, t, h), "(b, t, h)")
    _shape("theta", theta, (b, t, h, n // 2), "(b, t, h, n/2)")
    named = [("C", C), ("B", B), ("log_alpha", log_alpha), ("theta", theta)]
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise TypeError("initial_state must be a pair (g0 (b, h), phi0 (b, h, n/2))")
        g0, phi0 = initial_state
        _tensor("initial_state[0] (g0)", g0)
        _tensor("initial_state[1] (phi0)", phi0)
        _shape("initial_state[0] (g0)", g0, (b, h), "(b, h)")
        _shape("initial_state[1] (phi0)", phi0, (b, h, n // 2), "(b, h, n/2)")
        named += [("initial_state[0] (g0)", g0), ("initial_state[1] (phi0)", phi0)]
    _same_device(named)
    if check_values:
        check_log_alpha_values(log_alpha)


def check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, check_values=True):
    """Shapes as in SPEC.md section 1 (see sisa.sisa_attention)."""
    for name, x in (("q", q), ("k", k), ("v", v), ("C", C), ("B", B), ("log_alpha", log_alpha),
                    ("theta", theta), ("lam", lam)):
        _tensor(name, x)
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D (batch, seqlen, heads, head_dim), got shape {tuple(q.shape)}")
    b, t, h, d = q.shape
    if k.dim() != 4:
        raise ValueError(f"k must be 4-D (batch, seqlen, kv_heads, head_dim), got shape {tuple(k.shape)}")
    if k.shape[0] != b:
        raise ValueError(f"k has batch size {k.shape[0]} but q has {b}")
    if k.shape[1] != t:
        raise ValueError(f"k has sequence length {k.shape[1]} but q has {t}")
    hk = k.shape[2]
    if hk == 0 or h % hk:
        raise ValueError(f"q's heads ({h}) must be a multiple of k's heads ({hk})")
    _shape("k", k, (b, t, hk, d), "(b, t, hk, d) with q's head_dim")
    _shape("v", v, k.shape, "k's shape")
    if C.dim() == 4 and tuple(C.shape[:3]) != (b, t, h):
        raise ValueError(f"C must have shape (b, t, h, n) = ({b}, {t}, {h}, n), got {tuple(C.shape)}")
    check_scan_inputs(C, B, log_alpha, theta, check_values=check_values)
    _shape("lam", lam, (h,), "(heads,)")
    _same_device([("q", q), ("k", k), ("v", v), ("C", C), ("lam", lam)])
    if check_values and h and bool((lam <= 0).any()):
        raise ValueError(f"lam must be positive (one scale per head), got min {lam.min().item():.4g}")
