"""Split-K decode kernel (sisa_kernels.decode) and its PyTorch twin (decode_ref)
against the float64 naive judge.

The s queries are the last s of T cached positions (naive_attention's semantics
for s < t). Parity rule (FlashAttention's): the kernel's max error against the
float64 reference is within 2x of PyTorch's own error in the low dtype
(``naive_attention(..., upcast=False)``) plus a small floor scaled to the dtype.
"""

import pytest
import torch

from sisa.naive import naive_attention
from sisa.testing import KERNEL_FLOOR, make_scanned
from conftest import DEVICE, kernels_or_skip

kernels_or_skip()
from sisa_kernels.decode import sisa_decode  # noqa: E402
from sisa_kernels.decode_ref import sisa_decode_splits  # noqa: E402


FLOOR = KERNEL_FLOOR
WEAK, STRONG = -0.005, -1.0


def make_inputs(b, T, s, h, hk, d, n, dtype, log_alpha, seed=0):
    """Decode inputs: q, C_rot for the last s positions; k, v, B_rot, g for all T.
    Returns [q, k, v, C_rot, B_rot, g, lam]."""
    q, k, v, C_rot, B_rot, g, lam = make_scanned(b, T, h, hk, d, n, dtype, log_alpha, DEVICE, seed)
    return [q[:, T - s:], k, v, C_rot[:, T - s:], B_rot, g, lam]


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_parity(inputs, scale=None, **kw):
    dtype = inputs[0].dtype
    ref = naive_attention(*[x.double() for x in inputs], scale)
    low = naive_attention(*inputs, scale, upcast=False)
    out = sisa_decode(*inputs, scale, **kw)
    assert out.dtype == dtype and out.shape == inputs[0].shape
    assert torch.isfinite(out).all()
    tol = 2 * err(low, ref) + FLOOR[dtype] * (1 + ref.abs().max().item())
    assert err(out, ref) <= tol, f"{err(out, ref):.3g} > {tol:.3g}"
    return out, ref


CASES = [
    # b, T, s, h, hk, d, n, dtype, log_alpha
    (1, 1, 1, 2, 2, 16, 2, torch.float32, WEAK),
    (2, 7, 3, 2, 1, 16, 16, torch.float32, STRONG),
    (1, 64, 1, 4, 1, 40, 2, torch.float32, WEAK),
    (1, 300, 3, 4, 2, 64, 16, torch.float32, STRONG),
    (1, 1, 1, 4, 2, 40, 16, torch.float16, STRONG),
    (1, 7, 3, 2, 2, 40, 16, torch.float16, WEAK),
    (1, 64, 3, 4, 1, 16, 2, torch.float16, STRONG),
    (1, 300, 1, 2, 2, 40, 16, torch.float16, WEAK),
    (1, 7, 1, 4, 2, 64, 16, torch.bfloat16, STRONG),
    (2, 64, 3, 2, 2, 64, 16, torch.bfloat16, WEAK),
    (1, 300, 3, 2, 1, 40, 2, torch.bfloat16, STRONG),
    (1, 300, 1, 4, 4, 16, 16, torch.bfloat16, WEAK),
]


@pytest.mark.parametrize("b,T,s,h,hk,d,n,dtype,log_alpha", CASES,
                         ids=[f"T{c[1]}-s{c[2]}-h{c[3]}/{c[4]}-d{c[5]}-n{c[6]}-{str(c[7])[6:]}-"
                              f"{'strong' if c[8] == STRONG else 'weak'}" for c in CASES])
def test_decode_parity(b, T, s, h, hk, d, n, dtype, log_alpha):
    check_parity(make_inputs(b, T, s, h, hk, d, n, dtype, log_alpha))


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
def test_split_reference(num_splits):
    """The readable split + merge maths equals the explicit score matrix, including
    chunks that hold no key visible to the earlier queries."""
    x64 = [x.double() for x in make_inputs(2, 23, 4, 4, 2, 24, 8, torch.float32, STRONG, seed=2)]
    ref = naive_attention(*x64, 0.3)
    assert err(sisa_decode_splits(*x64, 0.3, num_splits=num_splits), ref) < 1e-12


@pytest.mark.parametrize("T,s,num_splits,block_n", [(33, 3, 3, 16), (40, 16, 2, 16), (90, 2, 2, 16)])
def test_split_shapes(T, s, num_splits, block_n):
    """Several tiles per split; a last split beyond some queries' causal limit
    (T=33, s=3: keys 32.. are invisible to queries 0 and 1); s = 16 queries."""
    inputs = make_inputs(1, T, s, 2, 1, 16, 4, torch.float32, STRONG, seed=4)
    check_parity(inputs, num_splits=num_splits, block_n=block_n)


def test_wide_heads_and_scale():
    """Head dim 256 and d_state 128 (the largest tiles), a non-default scale."""
    check_parity(make_inputs(1, 20, 2, 2, 1, 256, 128, torch.float16, WEAK, seed=6), scale=0.05)


def test_total_decay_beyond_exponent_range():
    """Cumulative decay far below -88 nats, and g offset by -1e4: the in-tile
    differences stay exact and nothing overflows."""
    inputs = make_inputs(1, 90, 2, 2, 2, 16, 16, torch.float32, -4.0, seed=3)
    assert inputs[5].min() < -200
    inputs[5] = inputs[5] - 1e4
    check_parity(inputs)


def test_strided_cache():
    """The cache as views buf[:, :T] of bigger buffers (and a transposed q): the
    same bits as contiguous copies of the same values."""
    b, T, s, h, hk, d, n = 2, 37, 2, 4, 2, 40, 16
    inputs = make_inputs(b, T, s, h, hk, d, n, torch.float16, STRONG, seed=5)
    q, k, v, C_rot, B_rot, g, lam = inputs

    def in_buffer(x, extra=29):
        buf = torch.full((x.shape[0], x.shape[1] + extra, *x.shape[2:]), float("nan"),
                         dtype=x.dtype, device=x.device)
        buf[:, : x.shape[1]] = x
        return buf[:, : x.shape[1]]

    strided = [q.transpose(1, 2).contiguous().transpose(1, 2), in_buffer(k), in_buffer(v), C_rot,
               in_buffer(B_rot), in_buffer(g), lam]
    assert not any(x.is_contiguous() for x in strided[:3] + strided[4:6])
    out, _ = check_parity(strided)
    assert torch.equal(out, sisa_decode(*[x.contiguous() for x in inputs]))


def test_agrees_with_full_attention_rows():
    """Decoding the last s rows equals the last s rows of full causal attention."""
    b, T, s, h, hk, d, n = 1, 19, 3, 2, 1, 16, 8
    full = make_inputs(b, T, T, h, hk, d, n, torch.float32, STRONG, seed=7)
    q, k, v, C_rot, B_rot, g, lam = full
    rows = naive_attention(*[x.double() for x in full])[:, T - s:]
    out = sisa_decode(q[:, T - s:], k, v, C_rot[:, T - s:], B_rot, g, lam)
    assert err(out, rows) < 1e-5
