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


@pytest.mark.parametrize("h,hk,s", [(8, 1, 1), (8, 2, 3), (8, 1, 9), (6, 3, 16)],
                         ids=["rep8-s1", "rep4-s3", "rep8-s9-two-row-blocks", "rep2-s16"])
def test_grouped_heads_share_one_tile(h, hk, s):
    """A kv head's query heads x new queries form the M rows of one tile (several
    row blocks past 64 rows): each row keeps its own head's SSM term and decay."""
    inputs = make_inputs(1, 45, s, h, hk, 16, 16, torch.float32, STRONG, seed=8)
    inputs[5] = inputs[5] * torch.linspace(0.2, 3.0, h)          # heads decay differently
    check_parity(inputs, num_splits=2, block_n=16)


def test_huge_scale_is_not_mistaken_for_an_empty_split():
    """Logits near -1e30 and below: the running max starts at -inf, so a split whose
    logits are all far below -1e30 still counts (a -1e30 start would zero it)."""
    inputs = make_inputs(1, 20, 2, 2, 1, 16, 16, torch.float32, WEAK, seed=9)
    inputs[0], inputs[1] = inputs[0].abs(), -inputs[1].abs() - 0.1      # every q.k < 0
    out, ref = check_parity(inputs, scale=1e30, num_splits=3, block_n=16)
    assert ref.abs().max() > 0.1


def _ragged(lengths, s, capacity, dtype=torch.float32, seed=10):
    """Capacity-T buffers whose rows past each live length hold NaN, and the live inputs
    of each batch row: (inputs over the buffers, [per-row inputs truncated to L_b])."""
    b = len(lengths)
    full = make_inputs(b, capacity, capacity, 4, 2, 16, 16, dtype, STRONG, seed=seed)
    rows = []
    for i, L in enumerate(lengths):
        q, k, v, C_rot, B_rot, g, lam = (x[i:i + 1] if x.dim() > 1 else x for x in full)
        rows.append([q[:, L - s:L], k[:, :L], v[:, :L], C_rot[:, L - s:L], B_rot[:, :L], g[:, :L], lam])
    q, k, v, C_rot, B_rot, g, lam = full
    bufs = [x.clone() for x in (k, v, B_rot, g)]
    for i, L in enumerate(lengths):
        for x in bufs:
            x[i, L:] = float("nan")
    qs = torch.cat([r[0] for r in rows]), torch.cat([r[3] for r in rows])
    return [qs[0], bufs[0], bufs[1], qs[1], bufs[2], bufs[3], lam], rows


def test_live_lengths_per_batch_row():
    """lengths (b,) on the device: each batch row attends over its own live prefix of
    capacity-T buffers (NaN beyond it never leaks in) and equals that row alone."""
    lengths = [5, 40, 17]
    inputs, rows = _ragged(lengths, 2, 48)
    out = sisa_decode(*inputs, lengths=torch.tensor(lengths, dtype=torch.int32), num_splits=3, block_n=16)
    for i, row in enumerate(rows):
        ref = naive_attention(*[x.double() for x in row])
        assert err(out[i:i + 1], ref) <= 1e-5 * (1 + ref.abs().max().item()), i


def test_lengths_are_read_at_run_time():
    """The property a captured CUDA graph needs: the same launch arguments with the
    lengths tensor changed in place give the new lengths' answers."""
    inputs, _ = _ragged([48, 48], 1, 48)
    lengths = torch.tensor([7, 30], dtype=torch.int32)
    outs = []
    for new in ([7, 30], [8, 31]):
        lengths.copy_(torch.tensor(new, dtype=torch.int32))
        q = inputs[0]
        outs.append(sisa_decode(*inputs, lengths=lengths, num_splits=2, block_n=16).clone())
        for i, L in enumerate(new):
            row = [x[i:i + 1] if x.dim() > 1 else x for x in inputs]
            row = [q[i:i + 1], row[1][:, :L], row[2][:, :L], row[3], row[4][:, :L], row[5][:, :L], row[6]]
            ref = naive_attention(*[x.double() for x in row])
            assert err(outs[-1][i:i + 1], ref) <= 1e-5 * (1 + ref.abs().max().item()), (new, i)
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("bad", [[0, 48], [2, 49]], ids=["shorter-than-s", "past-capacity"])
def test_lengths_out_of_range_are_refused(bad):
    inputs, _ = _ragged([48, 48], 2, 48)
    with pytest.raises(ValueError, match="lengths"):
        sisa_decode(*inputs, lengths=torch.tensor(bad, dtype=torch.int32))


def test_merge_walks_more_splits_than_one_block():
    """Head dim 256 merges 8 splits' outputs at a time: 12 splits take two blocks."""
    check_parity(make_inputs(1, 200, 2, 2, 1, 256, 16, torch.float32, STRONG, seed=11), num_splits=12, block_n=16)


def test_float64_is_refused():
    """float64 decoding belongs to the exact reference paths (sisa.cache routes it there):
    the kernel's products are float32."""
    with pytest.raises(TypeError, match="float64"):
        sisa_decode(*make_inputs(1, 9, 1, 2, 1, 16, 16, torch.float64, WEAK))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_key_mask_excludes_pads(dtype):
    """key_mask (b, T): pads (left, inner, a whole split's worth) are never keys, a query
    still sees its own position; equal to naive_attention(key_mask=...) in float64."""
    b, T, s = 3, 40, 2
    inputs = make_inputs(b, T, s, 4, 2, 16, 16, dtype, STRONG, seed=12)
    keys = torch.ones(b, T, dtype=torch.bool)
    keys[0, :17] = False                           # left padding past the first split
    keys[1, 5:9] = keys[1, 30:33] = False          # inner pads
    keys[2, T - 1] = False                         # the newest query's own position is a pad
    ref = naive_attention(*[x.double() for x in inputs], key_mask=keys)
    low = naive_attention(*inputs, key_mask=keys, upcast=False)
    out = sisa_decode(*inputs, key_mask=keys, num_splits=3, block_n=16)
    assert torch.isfinite(out).all()
    tol = 2 * err(low, ref) + FLOOR[dtype] * (1 + ref.abs().max().item())
    assert err(out, ref) <= tol, (err(out, ref), tol)
    assert err(out, naive_attention(*[x.double() for x in inputs])) > 10 * tol      # the mask matters
