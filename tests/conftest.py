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


def interpreter_unsupported_reason():
    """Why Triton's CPU interpreter cannot run the kernels with the installed Triton and
    NumPy, or None. Known: Triton 3.2 and 3.3 do not run them at all; 3.4-3.6 fail with
    NumPy >= 2.4 ("only 0-dimensional arrays can be converted to Python scalars" inside
    the interpreter; NumPy 2.3.5 passes). Triton 3.9 with NumPy 2.4 passes."""
    if DEVICE != "cpu":
        return None
    try:
        import numpy
        import triton
    except ImportError:
        return None                                  # triton_unavailable_reason says why
    tv = tuple(int(x) for x in triton.__version__.split(".")[:2])
    nv = tuple(int(x) for x in numpy.__version__.split(".")[:2])
    if tv < (3, 4):
        return f"Triton {triton.__version__}'s interpreter cannot run these kernels (NumPy {numpy.__version__})"
    if tv < (3, 7) and nv >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter fails with NumPy {numpy.__version__} (only "
                "0-dimensional arrays can be converted to Python scalars); NumPy < 2.4 runs it")
    return None


def kernels_or_skip():
    """At the top of a kernel test module, before it imports sisa_kernels: skip the
    module, with the reason printed, where the Triton kernels cannot run."""
    import sisa
    reason = sisa.backends.triton_unavailable_reason(DEVICE) or interpreter_unsupported_reason()
    if reason is not None:
        print(f"skipping: Triton kernels unavailable on {DEVICE}: {reason}")
        pytest.skip(f"Triton kernels unavailable on {DEVICE}: {reason}", allow_module_level=True)


try:                 # CI draws the same examples every run (no flaky CI, no stored database);
    import hypothesis  # the long profile searches afresh each time, and its findings go to issues
    hypothesis.settings.register_profile("ci", derandomize=True, database=None)
    hypothesis.settings.register_profile("long", derandomize=False)
    hypothesis.settings.load_profile("long" if os.environ.get("SISA_HYPOTHESIS_PROFILE") == "long" else "ci")
except ImportError:  # the property tests skip without it
    pass


def examples(n: int) -> int:
    """Hypothesis example count: n in the default ("ci") profile, 20n with
    SISA_HYPOTHESIS_PROFILE=long (the on-demand deep run)."""
    return 20 * n if os.environ.get("SISA_HYPOTHESIS_PROFILE") == "long" else n


def pytest_collection_modifyitems(config, items):
    """Where the interpreter cannot run the kernels (``interpreter_unsupported_reason``),
    the cases parametrized on the triton backend skip with that reason too."""
    reason = interpreter_unsupported_reason()
    if reason is None:
        return
    print(f"\nskipping the triton-backend cases: {reason}")
    mark = pytest.mark.skip(reason=f"Triton interpreter: {reason}")
    for item in items:
        if "triton" in item.nodeid.split("::")[-1]:
            item.add_marker(mark)
