"""Test setup shared by every test module.

Triton kernels run on a CPU only under its interpreter, and TRITON_INTERPRET is
read when ``@triton.jit`` decorates, so it is set here, before any kernel module
is imported, whenever no CUDA device is present.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def examples(n: int) -> int:
    """Hypothesis example count: n in the default ("ci") profile, 20n with
    SISA_HYPOTHESIS_PROFILE=long (the on-demand deep run)."""
    return 20 * n if os.environ.get("SISA_HYPOTHESIS_PROFILE") == "long" else n
