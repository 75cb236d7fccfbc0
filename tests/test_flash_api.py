"""The flash-attn-shaped faces (sisa.flash) against the float64 reference: the dense
function, varlen (total, h, d) tensors with int32/int64 cu_seqlens and queries
shorter than keys, and a kv cache with per-row lengths."""
import math

import pytest
import torch

import sisa
from sisa.naive import naive_sisa_attention
from sisa.testing import FLOOR, Case, compare

from conftest import DEVICE

H, HK, D, N = 2, 1, 8, 4


def tol(low, ref, dtype):
    """FlashAttention's rule: 2x PyTorch's own low-precision error, plus a floor."""
    return 2 * (low.double() - ref).abs().max().item() + FLOOR[dtype] * max(1.0, ref.abs().max().item())


def packed_inputs(lens, dtype, seed=0):
    """Every position of the packed sequences: q, k, v, C, B, log_alpha, theta (float64)
    and lam (h,)."""
    gen = torch.Generator().manual_seed(seed)
    t = sum(lens)
    r = lambda *s, std=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * std
    x = [r(t, H, D), r(t, HK, D), r(t, HK, D), r(t, H, N), r(t, H, N),
         -0.4 * torch.rand(t, H, generator=gen, dtype=torch.float64), r(t, H, N // 2, std=0.3)]
    lam = torch.tensor([0.3, 0.8], dtype=torch.float64)
    return [z.to(dtype) if i < 5 else z.to(torch.float32 if dtype != torch.float64 else dtype)
            for i, z in enumerate(x)], lam.to(x[5].dtype if dtype == torch.float64 else torch.float32)


def cumulative(lens, dtype):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=dtype)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_attn_func_is_sisa_attention(backend):
    report = compare(lambda *a: sisa.sisa_attn_func(*a, backend=backend), Case(2, 37, 4, 2, 16, 8, decay=0.2),
                     torch.float32)
    assert report.ok, report
    x, lam = packed_inputs([11], torch.float32)
    args = [z[None] for z in x] + [lam]
    assert torch.equal(sisa.sisa_attn_func(*args, 0.3, backend=backend),
                       sisa.sisa_attention(*args, softmax_scale=0.3, backend=backend))


def reference_lse(q, k, v, C, B, log_alpha, theta, lam, scale):
    """log sum_j exp(score[i, j]) in float64 from the explicit scores: (b, h, t)."""
    C_rot, B_rot, g, _ = sisa.naive.naive_scan(C.double(), B.double(), log_alpha.double(), theta.double())
    rep = q.shape[2] // k.shape[2]
    kk = k.double().repeat_interleave(rep, 2)
    score = scale * torch.einsum("bihd,bjhd->bhij", q.double(), kk)
    gh = g.transpose(1, 2)
    t = q.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    decay = torch.exp((gh[..., :, None] - gh[..., None, :]).clamp(max=0))
    score = score + lam.double()[None, :, None, None] * decay * torch.einsum("bihn,bjhn->bhij", C_rot, B_rot)
    return score.masked_fill(~causal, -math.inf).logsumexp(-1)


def test_return_lse():
    x, lam = packed_inputs([13], torch.float32)
    args = [z[None].to(DEVICE) for z in x] + [lam.to(DEVICE)]
    with pytest.raises(NotImplementedError, match="return_lse"):
        sisa.sisa_attn_func(*args, return_lse=True, backend="sdpa")
    if "triton" not in sisa.available_backends(DEVICE):
        pytest.skip(f"return_lse needs the Triton kernel: {sisa.backends.triton_unavailable_reason(DEVICE)}")
    out, lse = sisa.sisa_attn_func(*args, softmax_scale=0.5, return_lse=True, backend="triton")
    ref = reference_lse(*args, 0.5)
    assert lse.shape == (1, H, 13) and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double().cpu(), ref.cpu(), rtol=1e-5, atol=1e-5)
    ref_out = naive_sisa_attention(*(z.double() for z in args), softmax_scale=0.5)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_varlen_queries_shorter_than_keys(cu_dtype, backend):
    lens_k, lens_q = [7, 5, 12, 3], [3, 5, 1, 0]          # chunked prefill, whole, one query, none
    (q_all, k, v, C, B, la, th), lam = packed_inputs(lens_k, torch.float32, seed=1)
    cu_k = cumulative(lens_k, cu_dtype)
    cu_q = cumulative(lens_q, cu_dtype)
    qs, refs, lows = [], [], []
    for i, (s, t) in enumerate(zip(lens_q, lens_k)):
        a, b = cu_k[i].item(), cu_k[i + 1].item()
        seq = [z[None, a:b] for z in (q_all, k, v, C, B, la, th)]
        refs.append(naive_sisa_attention(*(z.double() for z in seq), lam.double())[0, t - s:])
        lows.append(naive_sisa_attention(*seq, lam, upcast=False)[0, t - s:])
        qs.append(q_all[b - s:b])
    q, ref, low = torch.cat(qs), torch.cat(refs), torch.cat(lows)
    leaves = [z.clone().requires_grad_() for z in (q, k, v, C, B, la, th)]
    out = sisa.sisa_attn_varlen_func(*leaves, lam, cu_q, cu_k, max(lens_q), max(lens_k), backend=backend)
    assert out.shape == q.shape
    assert (out.double() - ref).abs().max().item() <= tol(low, ref, torch.float32)
    out.sum().backward()                                       # differentiable through the per-sequence calls
    assert all(z.grad is not None and torch.isfinite(z.grad).all() for z in leaves)


def test_varlen_all_queries_equals_packed_op():
    lens = [6, 1, 9]
    (q, k, v, C, B, la, th), lam = packed_inputs(lens, torch.float32, seed=2)
    cu = cumulative(lens, torch.int64)
    out = sisa.sisa_attn_varlen_func(q, k, v, C, B, la, th, lam, cu, cu, 9, 9)
    ref = sisa.sisa_attention(*(z[None] for z in (q, k, v, C, B, la, th)), lam, cu_seqlens=cu.int())[0]
    assert out.shape == (16, H, D)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_varlen_bad_arguments():
    lens = [4, 4]
    (q, k, v, C, B, la, th), lam = packed_inputs(lens, torch.float32)
    cu = cumulative(lens, torch.int32)
    call = lambda **kw: sisa.sisa_attn_varlen_func(
        *(kw.get(n, z) for n, z in zip("q k v C B log_alpha theta".split(), (q, k, v, C, B, la, th))), lam,
        kw.get("cu_q", cu), kw.get("cu_k", cu), kw.get("mq", 4), kw.get("mk", 4))
    with pytest.raises(ValueError, match="cu_seqlens_q must be int32 or int64"):
        call(cu_q=cu.float())
    with pytest.raises(ValueError, match="max_seqlen_k"):
        call(mk=3)
    with pytest.raises(ValueError, match="sequence 1 has 5 queries but 4 keys"):
        call(cu_q=torch.tensor([0, 3, 8], dtype=torch.int32), q=torch.randn(8, H, D), mq=5)
    with pytest.raises(ValueError, match="q must be a 3-D"):
        call(q=q[None])
    with pytest.raises(ValueError, match="log_alpha must be <= 0"):
        call(log_alpha=la.abs())


def fill_cache(prefix_lens, T, dtype):
    """Caches of capacity T whose row b holds prefix_lens[b] tokens, each row's keys,
    B_rot and g from the float64 scan of its own prefix (g float64, phi float32,
    float64 for a float64 cache); returns (caches, the float64 prefixes)."""
    b, sd = len(prefix_lens), torch.float64 if dtype == torch.float64 else torch.float32
    caches = [torch.zeros(b, T, HK, D, dtype=dtype), torch.zeros(b, T, HK, D, dtype=dtype),
              torch.zeros(b, T, H, N, dtype=dtype), torch.zeros(b, T, H, dtype=torch.float64), torch.zeros(b, H, N // 2, dtype=sd)]
    prefixes = []
    for i, L in enumerate(prefix_lens):
        x, _ = packed_inputs([L], torch.float64, seed=10 + i)
        _, B_rot, g, (_, phi) = sisa.naive.naive_scan(*(z[None] for z in x[3:]))
        caches[0][i, :L], caches[1][i, :L] = x[1].to(dtype), x[2].to(dtype)
        caches[2][i, :L], caches[3][i, :L], caches[4][i] = B_rot[0].to(dtype), g[0], phi[0].to(sd)
        prefixes.append(x)
    return caches, prefixes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kvcache_per_row_lengths(dtype):
    prefix_lens, s, T = [0, 5, 11], 3, 16
    caches, prefixes = fill_cache(prefix_lens, T, dtype)
    new, lam = packed_inputs([s] * 3, torch.float64, seed=99)
    new = [z.unflatten(0, (3, s)) for z in new]                  # (b, s, ...)
    low_dtype = torch.float32 if dtype != torch.float64 else dtype
    args = [z.to(dtype) if i < 5 else z.to(low_dtype) for i, z in enumerate(new)]
    lengths = torch.tensor(prefix_lens, dtype=torch.int64)
    out = sisa.sisa_attn_with_kvcache(args[0], *caches, *args[1:], lam.to(low_dtype), lengths)
    assert out.shape == (3, s, H, D) and out.dtype == dtype
    for i, L in enumerate(prefix_lens):
        whole = [torch.cat((p, z[i])) for p, z in zip(prefixes[i], new)]   # the row's whole sequence
        ref = naive_sisa_attention(*(z[None] for z in whole), lam)[0, L:]
        low = naive_sisa_attention(*(z[None].to(dtype) if j < 5 else z[None].float() for j, z in
                                     enumerate(whole)), lam.float(), upcast=False)[0, L:]
        err = (out[i].double() - ref).abs().max().item()
        assert err <= tol(low, ref, dtype), (i, err)
        # the cache now holds the new rows, and phi_state the rotation after them
        torch.testing.assert_close(caches[0][i, L:L + s], args[1][i])
    _, _, _, (g_last, phi_last) = sisa.naive.naive_scan(*(torch.cat((prefixes[2][j], new[j][2]))[None]
                                                          for j in (3, 4, 5, 6)))
    torch.testing.assert_close(caches[4][2].double(), phi_last[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[3][2, 13].double(), g_last[0], rtol=1e-5, atol=1e-5)


def test_kvcache_bad_lengths():
    caches, _ = fill_cache([2, 2], 4, torch.float32)
    new, lam = packed_inputs([3, 3], torch.float32)
    new = [z.unflatten(0, (2, 3)) for z in new]
    with pytest.raises(ValueError, match="cache_seqlens must lie in"):
        sisa.sisa_attn_with_kvcache(new[0], *caches, *new[1:], lam, torch.tensor([2, 1]))
    with pytest.raises(TypeError, match="cache_seqlens must be an int32 or int64"):
        sisa.sisa_attn_with_kvcache(new[0], *caches, *new[1:], lam, torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="b_cache must have shape"):
        sisa.sisa_attn_with_kvcache(new[0], caches[0], caches[1], caches[2][:, :, :1], *caches[3:], *new[1:],
                                    lam, torch.tensor([1, 1]))
