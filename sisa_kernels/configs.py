"""Which tile configs the attention launchers run on a GPU, and how one is chosen.

A config is (block rows, block cols, num_warps, num_stages): BLOCK_M x BLOCK_N for
the forward, BLOCK_OUT x BLOCK_IN for the two backward kernels (dq and dk/dv).

By default the choice is a fixed table, as fla does: the same inputs pick the same
config in every process, nothing is benchmarked at run time (no host sync, no
multi-second tuning per new length, nothing that breaks CUDA-graph capture). The
table holds, per kernel and width class (padded head dim, padded d_state), the
configs that compile for sm_90 in bf16 with 0 spilled bytes and shared memory within
227 KiB, best first: two resident blocks per SM where possible (one block's softmax
overlaps the other's tensor-core work), then the largest tile, then the deeper
pipeline. ``python -m benchmarks.static`` measures every entry (registers, spills,
shared memory, blocks per SM) without a GPU and its test asserts the budgets.

Every class has a spill-free config. Head dim 256 needs two concessions: 16-row
backward tiles (mma.sync; every wider one spills), and d_state tiles at least 32 wide
(``min_state_tile``: 16-wide ones make ptxas fall back to 32 registers and spill
kilobytes), so it has no 16-wide state class.

``SISA_AUTOTUNE=1`` opts into Triton's autotuner over a width class's safe list,
keyed on the power-of-two bucket of the sequence length (not the exact length), with
results cached across processes where Triton allows.
"""
from __future__ import annotations

import inspect
import os

import triton

# (kernel, padded head dim class, padded d_state class) -> safe configs, best first.
SAFE = {
    ("fwd", 64, 16): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2),
                      (128, 32, 8, 2), (64, 64, 8, 2)],
    ("fwd", 64, 64): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2),
                      (128, 32, 8, 2), (64, 64, 8, 2)],
    ("fwd", 64, 128): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3),
                       (128, 32, 8, 2), (64, 64, 8, 2)],
    ("fwd", 128, 16): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3),
                       (128, 32, 8, 2), (64, 64, 8, 2)],
    ("fwd", 128, 64): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 2),
                       (64, 64, 8, 2)],
    ("fwd", 128, 128): [(64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2)],
    ("dq", 64, 16): [(64, 32, 4, 2), (64, 16, 8, 2), (64, 16, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2),
                     (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dq", 64, 64): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2),
                     (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dq", 64, 128): [(64, 16, 4, 2), (64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dq", 128, 16): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2),
                      (32, 16, 4, 2)],
    ("dq", 128, 64): [(64, 16, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 4, 2)],
    ("dq", 128, 128): [(64, 16, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 16): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2),
                      (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 64): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2),
                      (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 128): [(64, 16, 4, 2), (64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 128, 16): [(64, 32, 8, 2), (64, 16, 8, 2)],
    ("dkv", 128, 64): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("dkv", 128, 128): [(32, 16, 4, 2)],
    ("fwd", 256, 64): [(64, 64, 8, 2), (64, 16, 8, 2)],
    ("fwd", 256, 128): [(64, 16, 8, 2), (32, 16, 4, 2)],
    # Head dim 256: 16-row tiles (mma.sync) are the only spill-free backward configs.
    ("dq", 256, 64): [(16, 16, 4, 2)],
    ("dq", 256, 128): [(16, 16, 4, 2)],
    ("dkv", 256, 64): [(16, 16, 4, 2)],
    ("dkv", 256, 128): [(16, 16, 4, 2)],
}
D_CLASSES, N_CLASSES = (64, 128, 256), (16, 64, 128)
BLOCK_NAMES = {"fwd": ("BLOCK_M", "BLOCK_N"), "dq": ("BLOCK_OUT", "BLOCK_IN"), "dkv": ("BLOCK_OUT", "BLOCK_IN")}


def min_state_tile(d_pad: int) -> int:
    """The narrowest d_state tile the attention kernels use beside this head dim."""
    return 32 if d_pad >= 256 else 16


def width_class(d_pad: int, n_pad: int) -> tuple[int, int]:
    """The measured class covering these padded widths: the next one up (a config safe
    for wider tiles holds fewer values with narrower ones), or the widest."""
    d = next((c for c in D_CLASSES if c >= d_pad), D_CLASSES[-1])
    n = next((c for c in N_CLASSES if c >= max(n_pad, min_state_tile(d))), N_CLASSES[-1])
    return d, n


def candidates(kind: str, d_pad: int, n_pad: int) -> list[tuple[int, int, int, int]]:
    """The configs the launcher may run for ``kind`` ("fwd", "dq", "dkv"), best first."""
    return SAFE[(kind, *width_class(d_pad, n_pad))]


def pick(kind: str, d_pad: int, n_pad: int) -> dict:
    """The default config as launch keyword arguments (block sizes, warps, stages)."""
    rows, cols, warps, stages = candidates(kind, d_pad, n_pad)[0]
    names = BLOCK_NAMES[kind]
    return {names[0]: rows, names[1]: cols, "num_warps": warps, "num_stages": stages}


def autotune_requested() -> bool:
    return os.environ.get("SISA_AUTOTUNE") == "1"


def length_bucket(t: int) -> int:
    """The autotuner's length key: the next power of two (at least 128)."""
    return max(128, 1 << max(0, t - 1).bit_length())


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _prune(kind):
    """Autotune pruner: keep the width class's safe configs."""
    def prune(configs, named_args, **kwargs):
        d_pad, n_pad = (named_args.get(k, kwargs.get(k)) for k in ("D_PAD", "N_PAD"))
        safe = set(candidates(kind, d_pad, n_pad))
        rows, cols = BLOCK_NAMES[kind]
        return [c for c in configs if (c.kwargs[rows], c.kwargs[cols], c.num_warps, c.num_stages) in safe]
    return prune


def autotuned(kernel, kind: str):
    """``kernel`` under Triton's autotuner (used only with SISA_AUTOTUNE=1): every
    listed config of ``kind``, pruned to the width class's safe list, keyed on the
    length bucket (the kernel's T_BUCKET argument), results cached on disk where
    this Triton can."""
    rows, cols = BLOCK_NAMES[kind]
    space = sorted({c for (k, *_), cs in SAFE.items() if k == kind for c in cs})
    configs = [triton.Config({rows: r, cols: c}, num_warps=w, num_stages=st) for r, c, w, st in space]
    extra = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    return triton.autotune(configs=configs, key=["T_BUCKET", "D", "N", "REP", "IS_VARLEN"],
                           prune_configs_by={"early_config_prune": _prune(kind)}, **extra)(kernel)


def launch(kernel, tuned, kind: str, grid, args, consts: dict, config: dict | None, t: int):
    """Launch ``kernel`` (args end with T_BUCKET) with ``config`` if given (block sizes
    plus optional num_warps / num_stages, e.g. from tests); else under the interpreter
    with square blocks (16 up to 128 tokens for fast tests, 64 beyond); else the
    table's pick, or the autotuner with SISA_AUTOTUNE=1."""
    if config is None and interpreting():
        config = dict.fromkeys(BLOCK_NAMES[kind], 16 if t <= 128 else 64)
    if config is None and autotune_requested():
        tuned[grid](*args, **consts)
        return
    if config is None:
        config = pick(kind, consts["D_PAD"], consts["N_PAD"])
    kernel[grid](*args, **consts, **config)
