"""Which tile configs the launchers run on a GPU, and how one is chosen.

One table per architecture family (``device.FAMILIES``; sm_86 and sm_89 share one),
in ``configs/sm80.py`` ... ``sm120.py``, chosen from the device's capability and its
opt-in shared memory per block (``device.family_of``: read once per device, cached).
Each table lists, per kernel and width class, the configs that compile for that
family's arch with 0 spilled bytes and shared memory within its limit, best first,
separately for 16-bit and float32 inputs (float32 products are exact IEEE FMA
products, ``fp32.py``, whose tiles differ): ``python -m benchmarks.static``
measures every entry without a GPU, per arch and dtype.

Attention configs are (block rows, block cols, num_warps, num_stages[, maxnreg]):
BLOCK_M x BLOCK_N for the forward, BLOCK_OUT x BLOCK_IN for the two backward kernels
(dq and dk/dv); the other kernels' entries are described in ``sm90.py``. The optional
fifth field is Triton's ``maxnreg`` launch option, a register cap per thread: where
ptxas, left to itself, holds a float32 tile to fewer registers than it needs and
spills (it trades registers for blocks per SM), the measured cap that compiles it
without spills (``fp32.py``). The choice is the
first entry, the same in every process; nothing is benchmarked at run time unless
``SISA_AUTOTUNE=1`` (Triton's autotuner over the family's entries, keyed on the
power-of-two bucket of the sequence length). A launch that still fails (out of
resources, a compile error) moves to the next entry, see ``launch.run``. Where a
family's masked head dim spills and the full one does not, its ``PAD_HEAD_DIM`` names
the class whose launches run on zero-padded copies (``pads_head_dim``: sm_120's 16-bit
dk/dv at d=96, n <= 16).

Head dim 256 on sm_90 needs two concessions: 16-row backward tiles (every wider one
spills) and d_state tiles at least 32 wide (``min_state_tile``), so it has no 16-wide
state class.
"""
from __future__ import annotations

import os

import torch

from . import device, sm80, sm86, sm90, sm100, sm120  # noqa: F401
from .device import family_of

TABLES = {"sm80": sm80, "sm86": sm86, "sm90": sm90, "sm100": sm100, "sm120": sm120}
D_CLASSES, N_CLASSES = (64, 128, 256), (16, 64, 128)
BLOCK_NAMES = {"fwd": ("BLOCK_M", "BLOCK_N"), "dq": ("BLOCK_OUT", "BLOCK_IN"), "dkv": ("BLOCK_OUT", "BLOCK_IN")}
ATTENTION_KINDS = tuple(BLOCK_NAMES)
OTHER_KINDS = ("delta", "decode", "scan", "augment")


def min_state_tile(d_pad: int) -> int:
    """The narrowest d_state tile the attention kernels use beside this head dim."""
    return 32 if d_pad >= 256 else 16


def width_class(d_pad: int, n_pad: int) -> tuple[int, int]:
    """The measured class covering these padded widths: the next one up (a config safe
    for wider tiles holds fewer values with narrower ones), or the widest."""
    d = next((c for c in D_CLASSES if c >= d_pad), D_CLASSES[-1])
    n = next((c for c in N_CLASSES if c >= max(n_pad, min_state_tile(d))), N_CLASSES[-1])
    return d, n


def dtype_class(dtype: torch.dtype) -> str:
    """"fp32" for float32 inputs (exact IEEE products), else "16bit"."""
    return "fp32" if dtype == torch.float32 else "16bit"


def table(family: str, dtype: torch.dtype):
    """(attention table, other kernels' table) of a family for inputs of ``dtype``."""
    mod = TABLES[family]
    if dtype_class(dtype) == "fp32":
        return mod.ATTENTION_FP32, mod.OTHERS_FP32
    return mod.ATTENTION, mod.OTHERS


def pads_head_dim(kind: str, d: int, d_pad: int, n_pad: int, family: str | None, dtype) -> bool:
    """Whether ``kind`` runs on copies of its inputs zero-padded from head dim ``d`` to
    ``d_pad``: where the family's ``PAD_HEAD_DIM`` lists the (dtype class, kind, width
    class), because the kernel's masked head dim spills where the full one does not."""
    return (family is not None and d < d_pad
            and (dtype_class(dtype), kind, *width_class(d_pad, n_pad)) in getattr(TABLES[family], "PAD_HEAD_DIM", ()))


def candidates(kind: str, d_pad: int, n_pad: int, family: str = "sm90", dtype=torch.bfloat16) -> list[tuple]:
    """The configs an attention launcher may run for ``kind`` ("fwd", "dq", "dkv"), best first."""
    return table(family, dtype)[0][(kind, *width_class(d_pad, n_pad))]


def others(kind: str, family: str = "sm90", dtype=torch.bfloat16, width: tuple | None = None) -> list:
    """The entries of a non-attention kernel ("delta", "decode", "scan", "augment"), best first.
    A table may give a kind's entries per width class, {(d, n): entries, "*": the rest};
    ``width`` (padded head dim, padded d_state) then picks them."""
    entries = table(family, dtype)[1][kind]
    if isinstance(entries, dict):
        return entries.get(width_class(*width), entries["*"]) if width else entries["*"]
    return entries


def full_entry(cfg: tuple) -> tuple:
    """An attention config with all five fields (maxnreg None: ptxas's own choice)."""
    return (*cfg, None) if len(cfg) == 4 else tuple(cfg)


def as_kwargs(kind: str, cfg: tuple) -> dict:
    """An attention config as launch keyword arguments (block sizes, warps, stages and,
    where the entry has one, the register cap)."""
    rows, cols, warps, stages, maxnreg = full_entry(cfg)
    names = BLOCK_NAMES[kind]
    kwargs = {names[0]: rows, names[1]: cols, "num_warps": warps, "num_stages": stages}
    return kwargs if maxnreg is None else {**kwargs, "maxnreg": maxnreg}


def pick(kind: str, d_pad: int, n_pad: int, family: str = "sm90", dtype=torch.bfloat16) -> dict:
    """The default attention config as launch keyword arguments."""
    return as_kwargs(kind, candidates(kind, d_pad, n_pad, family, dtype)[0])


def autotune_requested() -> bool:
    return os.environ.get("SISA_AUTOTUNE") == "1"


def length_bucket(t: int) -> int:
    """The autotuner's length key: the next power of two (at least 128)."""
    return max(128, 1 << max(0, t - 1).bit_length())


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def launch_family(dev) -> str | None:
    """The family whose tables a launch on ``dev`` uses: None under the interpreter
    (its own small square blocks)."""
    return None if interpreting() else family_of(dev)


from . import launch as launch_module  # noqa: E402,F401  (it uses the helpers above)
from .launch import autotuned, launch, run  # noqa: E402,F401
