"""Test setup shared by every test module.

Triton kernels run on a CPU only under its interpreter, and TRITON_INTERPRET is
read when ``@triton.jit`` decorates, so it is set here, before any kernel module
is imported, whenever no CUDA device is present.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if os.environ.get("SISA_BLOCK_TRITON") == "1":      # the suite as a machine without Triton sees it
    class _NoTriton:
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError(f"{name} blocked by SISA_BLOCK_TRITON=1")
            return None
    sys.meta_path.insert(0, _NoTriton())


def kernels_or_skip():
    """At the top of a kernel test module, before it imports sisa_kernels: skip the
    module, with the reason printed, where the Triton kernels cannot run."""
    import sisa
    reason = sisa.backends.triton_unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"Triton kernels unavailable on {DEVICE}: {reason}", allow_module_level=True)


def examples(n: int) -> int:
    """Hypothesis example count: n in the default ("ci") profile, 20n with
    SISA_HYPOTHESIS_PROFILE=long (the on-demand deep run)."""
    return 20 * n if os.environ.get("SISA_HYPOTHESIS_PROFILE") == "long" else n
