"""Which backends run where, and lazy access to the Triton kernels.

``sisa`` never imports Triton at import time: the kernels are loaded on first use,
and a machine where Triton is missing or cannot initialise still runs the
reference paths.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

BACKENDS = ("naive", "sdpa", "triton")


@functools.lru_cache(maxsize=None)
def _load(module: str):
    """Import a ``sisa_kernels`` module, or return the reason it cannot be used."""
    try:
        return importlib.import_module(f"sisa_kernels.{module}"), None
    except Exception as exc:  # ImportError, or Triton failing to initialise
        return None, f"{type(exc).__name__}: {exc}"


def triton_unavailable_reason(device) -> str | None:
    """None when the Triton kernels can run on ``device``, else why not."""
    device = torch.device(device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on the CPU only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton kernels for device type {device.type!r}"
    for module in ("scan", "attention_op", "decode"):
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


def resolve(backend: str, device: torch.device, op: str) -> str:
    """Map "auto" to the fastest correct backend and reject unknown or unusable names."""
    if backend == "auto":
        if device.type == "cuda" and triton_unavailable_reason(device) is None:
            return "triton"
        return "sdpa" if op == "attention" else "naive"
    allowed = BACKENDS if op == "attention" else ("naive", "triton")
    if backend not in allowed:
        raise ValueError(f"backend must be one of {('auto',) + allowed}, got {backend!r}")
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' is unavailable on {device}: {reason}")
    return backend
