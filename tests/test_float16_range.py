"""float16's narrow range on the stock-SDPA paths (issue 20, item 1).

The widened operands Qhat = [q, s exp(g_i - c) C_rot] and Khat = [k, s exp(c - g_j) B_rot]
are built in float32 and copied into float16 buffers: with |C| in the thousands and
|B| small, or a small softmax_scale (s = sqrt(lam / scale) big), one side exceeded
65504 and SDPA returned NaN rows, although the score itself is ordinary. Judged
against the float64 naive path under FlashAttention's rule.
"""
import pytest
import torch

import sisa
from sisa.cache import LayerCache, cached_attention
from sisa.naive import naive_attention, naive_scan, naive_sisa_attention
from sisa.testing import NAMES

from test_no_silent_wrong_answer import agree

# (|C| factor, |B| factor, softmax_scale, decay per token): each overflowed one side.
CASES = [(3000.0, 1e-3, None, 0.15), (1e4, 1e-4, None, 0.0), (1.0, 1.0, 1e-9, 0.15), (30.0, 30.0, 1e-7, 0.05)]


def inputs(c_mul, b_mul, decay, b=2, t=40, h=2, hk=1, d=8, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(b, t, h, d, generator=gen), "k": torch.randn(b, t, hk, d, generator=gen),
         "v": torch.randn(b, t, hk, d, generator=gen), "C": c_mul * torch.randn(b, t, h, n, generator=gen),
         "B": b_mul * torch.randn(b, t, h, n, generator=gen),
         "log_alpha": -2 * decay * torch.rand(b, t, h, generator=gen),
         "theta": 0.3 * torch.randn(b, t, h, n // 2, generator=gen), "lam": 0.2 + torch.rand(h, generator=gen)}
    return {k: v if k in ("log_alpha", "lam") else v.half() for k, v in x.items()}


@pytest.mark.parametrize("c_mul,b_mul,scale,decay", CASES)
def test_sdpa_float16_large_ssm_operands(c_mul, b_mul, scale, decay):
    x = inputs(c_mul, b_mul, decay)
    args = [x[k] for k in NAMES]
    ref = naive_sisa_attention(*(a.double() for a in args), softmax_scale=scale)
    assert torch.isfinite(ref).all()
    lows = [naive_sisa_attention(*args, softmax_scale=scale, upcast=up) for up in (False, True)]
    out = sisa.sisa_attention(*args, backend="sdpa", softmax_scale=scale)
    agree(out, ref, lows, torch.float16, f"sdpa {c_mul, b_mul, scale, decay}")


@pytest.mark.parametrize("c_mul,b_mul,scale,decay", CASES)
def test_cached_decode_float16_large_ssm_operands(c_mul, b_mul, scale, decay):
    """The CPU decode path (_widened_attention): a prompt, then one token at a time."""
    x = inputs(c_mul, b_mul, decay)
    C_rot, B_rot, g, _ = naive_scan(x["C"], x["B"], x["log_alpha"], x["theta"])
    q, k, v, lam = x["q"], x["k"], x["v"], x["lam"]
    ref = naive_attention(*(a.double() for a in (q, k, v, C_rot, B_rot, g, lam)), softmax_scale=scale)
    lows = [naive_attention(q, k, v, C_rot, B_rot, g, lam, softmax_scale=scale, upcast=up) for up in (False, True)]
    cache, t0 = LayerCache(), 30
    cache.append(k=k[:, :t0], v=v[:, :t0], B_rot=B_rot[:, :t0], g=g[:, :t0])
    for i in range(t0, q.shape[1]):
        past = cache.append(k=k[:, i:i + 1], v=v[:, i:i + 1], B_rot=B_rot[:, i:i + 1], g=g[:, i:i + 1])
        out = cached_attention(q[:, i:i + 1], past["k"], past["v"], C_rot[:, i:i + 1], past["B_rot"], past["g"],
                               lam, softmax_scale=scale, cache=cache)
        agree(out, ref[:, i:i + 1], [low[:, i:i + 1] for low in lows], torch.float16, f"step {i}")
