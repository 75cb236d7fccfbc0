"""Launching through a family's table: the first entry that compiles and launches,
the autotuner when asked, and the error when none does.

``run`` is the safety net every launcher goes through: a launch that raises one of
``LAUNCH_ERRORS`` (Triton's OutOfResources, a compile or ptxas error: a Triton /
driver pair nobody measured) moves to the table's next entry; when none launches it
raises ``sisa_kernels.errors.KernelLaunchError``, which the ``sisa`` dispatch turns
into the exact path plus one warning. Any other exception propagates unchanged.
"""
from __future__ import annotations

import inspect

import triton

from ..errors import KernelLaunchError
from . import (BLOCK_NAMES, as_kwargs, autotune_requested, candidates, device, full_entry, interpreting,
               launch_family)


def _launch_errors() -> tuple:
    from triton.compiler.errors import CompilationError
    from triton.runtime import errors
    return tuple(e for e in (errors.OutOfResources, getattr(errors, "PTXASError", None), CompilationError) if e)


LAUNCH_ERRORS = _launch_errors()


def device_name(dev) -> str:
    try:
        return device.info_of(dev).name
    except Exception:  # noqa: BLE001  (a name for a message; the CPU interpreter has none)
        return str(dev)


EVERY_ENTRY = False     # the static report sets it while it records launches: every entry is one


def run(kernel_name: str, dev, family, width, entries: list, launch_one) -> None:
    """``launch_one(entry)`` for the first of ``entries`` that launches (see the module
    docstring); KernelLaunchError once all have failed."""
    if EVERY_ENTRY:
        for entry in entries:
            launch_one(entry)
        return
    last = None
    for entry in entries:
        try:
            launch_one(entry)
            return
        except LAUNCH_ERRORS as exc:
            last = exc
    raise KernelLaunchError(kernel_name, device_name(dev), family, width, list(entries), last)


def _prune(kind):
    """Autotune pruner: keep the entries of this call's family table (device and dtype
    of the kernel's first tensor argument), for its width class."""
    def prune(configs, named_args, **kwargs):
        get = lambda k: named_args.get(k, kwargs.get(k))  # noqa: E731
        first = next(v for v in named_args.values() if hasattr(v, "dtype") and hasattr(v, "device"))
        safe = {full_entry(c) for c in candidates(kind, get("D_PAD"), get("N_PAD"),
                                                  launch_family(first.device) or "sm90", first.dtype)}
        rows, cols = BLOCK_NAMES[kind]
        return [c for c in configs
                if (c.kwargs[rows], c.kwargs[cols], c.num_warps, c.num_stages, getattr(c, "maxnreg", None)) in safe]
    return prune


def autotuned(kernel, kind: str):
    """``kernel`` under Triton's autotuner (used only with SISA_AUTOTUNE=1): every
    entry of ``kind`` in any family's table, pruned to this call's family and width
    class, keyed on the length bucket (the kernel's T_BUCKET argument), results cached
    on disk where this Triton can."""
    from . import TABLES
    rows, cols = BLOCK_NAMES[kind]
    space = sorted({full_entry(c) for mod in TABLES.values() for tab in (mod.ATTENTION, mod.ATTENTION_FP32)
                    for (k, *_), cs in tab.items() if k == kind for c in cs}, key=lambda e: (*e[:4], e[4] or 0))
    configs = [triton.Config({rows: r, cols: c}, num_warps=w, num_stages=st, **({"maxnreg": cap} if cap else {}))
               for r, c, w, st, cap in space]
    extra = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    return triton.autotune(configs=configs, key=["T_BUCKET", "D", "N", "REP", "IS_VARLEN"],
                           prune_configs_by={"early_config_prune": _prune(kind)}, **extra)(kernel)


def launch(kernel, tuned, kind: str, grid, args, consts: dict, config: dict | None, t: int, dev, dtype):
    """Launch an attention kernel (args end with T_BUCKET) on ``dev`` for inputs of
    ``dtype``: with ``config`` if given (block sizes plus optional num_warps /
    num_stages, e.g. from tests; no fallback); else under the interpreter with square
    blocks (16 up to 128 tokens for fast tests, 64 beyond); else the family table's
    entries in order (``run``), after the autotuner with SISA_AUTOTUNE=1."""
    if config is not None:
        kernel[grid](*args, **consts, **config)
        return
    name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", f"{kind} kernel")
    width = (consts["D_PAD"], consts["N_PAD"])
    if interpreting():
        entries = [dict.fromkeys(BLOCK_NAMES[kind], 16 if t <= 128 else 64)]
        run(name, dev, None, width, entries, lambda cfg: kernel[grid](*args, **consts, **cfg))
        return
    family = launch_family(dev)
    if autotune_requested():
        try:
            tuned[grid](*args, **consts)
            return
        except LAUNCH_ERRORS:
            pass                      # every tuned config failed: the table's order, then the error
    entries = candidates(kind, *width, family, dtype)
    run(name, dev, family, width, entries, lambda cfg: kernel[grid](*args, **consts, **as_kwargs(kind, cfg)))
