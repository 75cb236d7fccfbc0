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
