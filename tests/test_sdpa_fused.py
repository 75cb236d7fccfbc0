"""The sdpa backend with the fused Triton epilogue building Qhat/Khat (its CUDA
default) matches the float64 naive path; it runs here under the interpreter."""
import pytest
import torch

import sisa
from sisa.naive import naive_scan
from sisa.sdpa import sdpa_attention
from sisa.testing import Case, compare

from conftest import DEVICE

reason = sisa.backends.triton_unavailable_reason(DEVICE)


def sdpa_fused(q, k, v, C, B, log_alpha, theta, lam):
    C_rot, B_rot, g, _ = naive_scan(C, B, log_alpha, theta)
    return sdpa_attention(q, k, v, C_rot, B_rot, g, lam, fused_augment=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", [Case(1, 33, 4, 2, 40, 16), Case(2, 20, 2, 1, 16, 8, decay=0.05),
                                  Case(1, 150, 2, 1, 16, 8, decay=0.7)])   # the last is multi-chunk
def test_sdpa_with_fused_epilogue_matches_naive(dtype, case):
    if reason is not None:
        pytest.skip(f"Triton unavailable: {reason}")
    report = compare(sdpa_fused, case, dtype, DEVICE)
    assert report.ok, report
