"""Input validation shared by every public op: clear errors that name the argument."""
from __future__ import annotations

import math
import numbers

import torch

# The dtypes the ops compute in. q, k, v, C and B share one of them; log_alpha, theta
# and lam may be any of them (they are used in float32, float64 for float64 inputs).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# g = cumsum(log_alpha) is float64: its spacing at |g| = 1e9 is 1.2e-7 nats, so
# below that differences of nearby tokens keep about float32 accuracy (docs/design.md
# section 5). Any decay past ~1e4 nats already forgets everything in every dtype.
MAX_TOTAL_DECAY = 1e9
# Headroom for the other scalars the computation multiplies by (float32, whose
# largest value is 3.4e38, for 16/32-bit inputs): softmax_scale within [1/MAX_SCALAR,
# MAX_SCALAR], lam / softmax_scale (the SSM weight in softmax units: sdpa takes its
# square root) at most MAX_SCALAR, and theta's total along t at most MAX_SCALAR. A float64
# value past float32's range (lam 1e300, theta 1e39) would otherwise be inf there.
MAX_SCALAR = 1e30


def _tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor, got dtype {x.dtype}")
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


def _same_dtype(named):
    (first, x0), *rest = named
    for name, x in rest:
        if x.dtype != x0.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but {first} has {x0.dtype}; "
                            f"{', '.join(n for n, _ in named)} must share one dtype")


def check_softmax_scale(softmax_scale):
    """None (1/sqrt(head_dim)) or a finite positive real number; returns it as a float or None."""
    if softmax_scale is None:
        return None
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale must be a real number or None, got {type(softmax_scale).__name__}")
    if not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"softmax_scale must be finite and > 0 (a softmax temperature), got {softmax_scale}")
    if not 1 / MAX_SCALAR <= softmax_scale <= MAX_SCALAR:
        raise ValueError(f"softmax_scale must lie in [{1 / MAX_SCALAR:g}, {MAX_SCALAR:g}] (the scores are "
                         f"computed in float32, whose largest value is 3.4e38), got {softmax_scale}")
    return float(softmax_scale)


def _check_values(flags, probes=()):
    """Raise the first failing value check, with one host sync that also reads
    ``probes`` (0-d bool tensors the caller wants as Python bools; returned).
    flags: [(0-d bool tensor, message() -> str)], a message built only on failure."""
    flags, probes = list(flags), list(probes)
    if not flags and not probes:
        return []
    if any(f.device.type == "meta" for f in [f for f, _ in flags] + probes):
        raise ValueError("inputs on the 'meta' device have no values to check; "
                         "pass check_inputs=False to trace shapes only")
    values = torch.stack([f for f, _ in flags] + probes).tolist()
    for failed, (_, message) in zip(values, flags):
        if failed:
            raise ValueError(message())
    return values[len(flags):]


def _log_alpha_flags(log_alpha, g0=None, packed=False):
    """Value checks of the decays (see _check_values): log_alpha <= 0 and not -inf
    (NaN passes through: NaN in, NaN out); the total decay along t of every (batch,
    head), from g0 (b, h) unless packed (one g0 row per sequence), within
    MAX_TOTAL_DECAY so that the float64 g = g0 + cumsum(log_alpha) keeps nearby
    differences to float32 accuracy; g0 finite."""
    flags = []
    if log_alpha.numel():
        flags.append((((log_alpha > 0) | (log_alpha == float("-inf"))).any(), lambda: (
            "log_alpha must be <= 0 and finite (it is a per-token log-decay); "
            f"got max {log_alpha.max().item():.4g}, min {log_alpha.min().item():.4g}")))
        total = log_alpha.to(torch.float64).sum(dim=1)
        if g0 is not None and not packed:
            total = total + g0.to(torch.float64)
        flags.append(((total < -MAX_TOTAL_DECAY).any(), lambda: (
            f"log_alpha sums to {total.min().item():.4g} along the sequence for some (batch, head)"
            f"{' from initial_state[0] (g0)' if g0 is not None and not packed else ''}; the cumulative decay g is "
            f"float64 and must stay above -{MAX_TOTAL_DECAY:g} for its differences to keep float32 accuracy "
            "(a per-token log-decay below -1e4 already forgets everything in every dtype: clamp log_alpha there)")))
    if g0 is not None and g0.numel():
        flags.append((torch.isinf(g0).any(), lambda: "initial_state[0] (g0) must be finite"))
    return flags


def _lam_flags(lam, scale=None):
    """lam > 0, finite (NaN and inf fail) and at most MAX_SCALAR; with the softmax scale
    (a float), also lam / scale <= MAX_SCALAR."""
    if not lam.numel():
        return []
    flags = [((~(lam > 0) | torch.isinf(lam)).any(), lambda: (
        f"lam must be positive and finite (one scale per head), got {lam.tolist()}")),
             ((lam.to(torch.float64) > MAX_SCALAR).any(), lambda: (
        f"lam must be at most {MAX_SCALAR:g} (it multiplies the SSM products in float32, whose largest "
        f"value is 3.4e38), got {lam.tolist()}"))]
    if scale is not None:
        flags.append(((lam.to(torch.float64) / scale > MAX_SCALAR).any(), lambda: (
            f"lam / softmax_scale must be at most {MAX_SCALAR:g} (the SSM term's weight against the softmax "
            f"scale; it is used in float32, whose largest value is 3.4e38), got lam {lam.tolist()} with "
            f"softmax_scale {scale:g}")))
    return flags


def _theta_flags(theta):
    """Phi = cumsum(theta) stays finite: the total |theta| along t of every (batch,
    head, pair) within MAX_SCALAR where it is finite (inf and NaN pass: NaN out)."""
    if not theta.numel():
        return []
    total = torch.linalg.vector_norm(theta, 1, dim=1, dtype=torch.float64)
    return [(((total > MAX_SCALAR) & torch.isfinite(total)).any(), lambda: (
        f"theta's total |theta| along the sequence reaches {total[torch.isfinite(total)].max().item():.4g}; the "
        f"cumulative phase Phi is float32 (for 16/32-bit inputs) and must stay within {MAX_SCALAR:g}"))]


def _check_state(initial_state, rows, h, half_n, rows_name):
    """initial_state = (g0 (rows, h), phi0 (rows, h, n/2)); returns it as a pair."""
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise TypeError(f"initial_state must be a pair (g0 ({rows_name}, h), phi0 ({rows_name}, h, n/2)), "
                        f"got {type(initial_state).__name__}")
    g0, phi0 = initial_state
    _tensor("initial_state[0] (g0)", g0)
    _tensor("initial_state[1] (phi0)", phi0)
    _shape("initial_state[0] (g0)", g0, (rows, h), f"({rows_name}, h)")
    _shape("initial_state[1] (phi0)", phi0, (rows, h, half_n), f"({rows_name}, h, n/2)")
    return g0, phi0


def check_scan_inputs(C, B, log_alpha, theta, initial_state=None, check_values=True, n_seqs=None):
    """C, B (b, t, h, n); log_alpha (b, t, h); theta (b, t, h, n/2); initial_state
    (g0 (b, h), phi0 (b, h, n/2)) or None; with cu_seqlens (n_seqs given) the state
    has one row per sequence instead: (n_seqs, h), (n_seqs, h, n/2)."""
    for name, x in (("C", C), ("B", B), ("log_alpha", log_alpha), ("theta", theta)):
        _tensor(name, x)
    if C.dim() != 4:
        raise ValueError(f"C must be 4-D (batch, seqlen, heads, d_state), got shape {tuple(C.shape)}")
    b, t, h, n = C.shape
    if n < 2 or n % 2:
        raise ValueError(f"d_state (last dim of C) must be even and >= 2, got {n}")
    _shape("B", B, C.shape, "C's shape (b, t, h, n)")
    _same_dtype([("C", C), ("B", B)])
    _shape("log_alpha", log_alpha, (b, t, h), "(b, t, h)")
    _shape("theta", theta, (b, t, h, n // 2), "(b, t, h, n/2)")
    named = [("C", C), ("B", B), ("log_alpha", log_alpha), ("theta", theta)]
    g0 = None
    if initial_state is not None:
        rows, rows_name = (b, "b") if n_seqs is None else (n_seqs, "n_seqs")
        g0, phi0 = _check_state(initial_state, rows, h, n // 2, rows_name)
        named += [("initial_state[0] (g0)", g0), ("initial_state[1] (phi0)", phi0)]
    _same_device(named)
    if check_values:
        _check_values(_log_alpha_flags(log_alpha, g0, packed=n_seqs is not None) + _theta_flags(theta))


def check_attention_inputs(q, k, v, C, B, log_alpha, theta, lam, check_values=True, softmax_scale=None):
    """Shapes as in docs/design.md section 1 (see sisa.sisa_attention); with
    check_values also check_attention_values (one host sync)."""
    for name, x in (("q", q), ("k", k), ("v", v), ("C", C), ("B", B), ("log_alpha", log_alpha),
                    ("theta", theta), ("lam", lam)):
        _tensor(name, x)
    check_softmax_scale(softmax_scale)
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D (batch, seqlen, heads, head_dim), got shape {tuple(q.shape)}")
    b, t, h, d = q.shape
    if d == 0:
        raise ValueError(f"q's head_dim (last dim) must be >= 1, got shape {tuple(q.shape)}")
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
    check_scan_inputs(C, B, log_alpha, theta, check_values=False)
    _same_dtype([("q", q), ("k", k), ("v", v), ("C", C), ("B", B)])
    _shape("lam", lam, (h,), "(heads,)")
    _same_device([("q", q), ("k", k), ("v", v), ("C", C), ("lam", lam)])
    if check_values:
        check_attention_values(log_alpha, lam, theta=theta, scale=softmax_scale or 1 / math.sqrt(d))


def check_attention_values(log_alpha, lam, probe_v=None, theta=None, scale=None):
    """The value checks of log_alpha, lam (against the softmax scale, a float, when
    given) and theta (when given), in one host sync that also reads whether ``probe_v``
    (a tensor, optional: an extra pass over it) is all finite. Returns that bool, or
    None without probe_v."""
    probes = [torch.isfinite(probe_v).all()] if probe_v is not None else []
    flags = _log_alpha_flags(log_alpha) + _lam_flags(lam, scale) + ([] if theta is None else _theta_flags(theta))
    read = _check_values(flags, probes)
    return read[0] if probes else None
