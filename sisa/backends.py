"""Which backends run where, and lazy access to the Triton kernels.

``sisa`` never imports Triton at import time: the kernels are loaded on first use,
and a machine where Triton is missing or cannot initialise still runs the
reference paths.
"""
from __future__ import annotations

import logging
import os

import torch

from sisa_kernels.errors import KernelLaunchError  # noqa: F401  (no Triton import: the fused paths' fallback signal)

# The package's logger for fallbacks and notices (silent unless the application
# configures logging; sisa/__init__ gives it a NullHandler).
logger = logging.getLogger("sisa")
_NOTED: set = set()       # fallbacks already logged (once per process each)

BACKENDS = ("naive", "sdpa", "triton")


_LOADED: dict = {}   # module name -> (module or None, reason or None)


def _import(module: str):
    # Plain import statements: torch.compile traces these, but not importlib.
    if module == "scan":
        from sisa_kernels import scan as mod
    elif module == "attention_op":
        from sisa_kernels import attention_op as mod
    elif module == "decode":
        from sisa_kernels import decode as mod
    elif module == "augment":
        from sisa_kernels import augment as mod
    else:
        raise ValueError(f"no kernel module {module!r}")
    return mod


def _load(module: str):
    """Import a ``sisa_kernels`` module once: (module, None), or (None, the reason)."""
    if module not in _LOADED:
        try:
            _LOADED[module] = (_import(module), None)
        except Exception as exc:  # ImportError, or Triton failing to initialise
            _LOADED[module] = (None, f"{type(exc).__name__}: {exc}")
    return _LOADED[module]


def triton_unavailable_reason(device) -> str | None:
    """None when the Triton kernels can run on ``device``, else why not."""
    device = torch.device(device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on the CPU only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton kernels for device type {device.type!r}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available to this process"
    for module in ("scan", "attention_op", "decode", "augment"):
        mod, reason = _load(module)
        if mod is None:
            return f"sisa_kernels.{module} failed to import ({reason})"
    return None


def kernel(module: str):
    """The loaded ``sisa_kernels.<module>``; raises RuntimeError with the reason if unusable."""
    mod, reason = _load(module)
    if mod is None:
        raise RuntimeError(f"backend 'triton' is unavailable: {reason}")
    return mod


def available_backends(device="cpu") -> list[str]:
    """The backends usable on ``device``: always naive and sdpa; triton where it runs."""
    out = ["naive", "sdpa"]
    if triton_unavailable_reason(device) is None:
        out.append("triton")
    return out


def resolve(backend: str, device: torch.device, op: str, dtype: torch.dtype = torch.float32) -> str:
    """Map "auto" to the fastest correct backend and reject unknown or unusable names.
    The attention kernel takes 16/32-bit inputs; float64 attention runs the references."""
    if backend == "auto":
        fused_ok = op == "scan" or dtype != torch.float64
        if device.type == "cuda" and fused_ok:
            reason = triton_unavailable_reason(device)
            if reason is None:
                return "triton"
            if reason not in _NOTED:
                _NOTED.add(reason)
                logger.warning("sisa: the Triton kernels cannot run on %s (%s); backend 'auto' uses the "
                               "stock-PyTorch paths", device, reason)
        return "sdpa" if op == "attention" else "naive"
    allowed = BACKENDS if op == "attention" else ("naive", "triton")
    if backend not in allowed:
        raise ValueError(f"backend must be one of {('auto',) + allowed}, got {backend!r}")
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' is unavailable on {device}: {reason}")
        if op == "attention" and dtype == torch.float64:
            raise TypeError("backend 'triton' takes float16, bfloat16 or float32 inputs, got float64 "
                            "(use backend 'naive' or 'sdpa')")
    return backend
