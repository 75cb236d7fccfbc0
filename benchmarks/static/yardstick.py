"""The yardstick: a compact FlashAttention-2 causal forward (plain pointer arithmetic),
compiled beside the project's kernels so each target's report has a reference point
(BLOCK_M=128, BLOCK_N=64, 8 warps, 2 and 3 stages, d=64 and 128)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

@triton.jit
def _fa2_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, n0, s_kt, offs_m, offs_n, qk_scale, MASK: tl.constexpr):
    """One key block of the online softmax (base 2), causal mask on the diagonal only."""
    k = tl.load(k_ptrs + n0 * s_kt)                       # (D, BLOCK_N): k^T
    s = tl.dot(q, k) * qk_scale
    if MASK:
        s = tl.where(offs_m[:, None] >= (n0 + offs_n)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    v = tl.load(v_ptrs + n0 * s_kt)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _fa2_causal_fwd(Q, K, V, OUT, LSE, s_b, s_t, s_h, T, H, sm_scale,
                    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """q, k, v, out (b, t, h, D) with one stride set, t a multiple of BLOCK_M; lse (b, h, t)."""
    hi = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    m0 = tl.program_id(0) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    base = bi * s_b + hi * s_h
    q = tl.load(Q + base + offs_m[:, None] * s_t + offs_d[None, :])
    k_ptrs = K + base + offs_n[None, :] * s_t + offs_d[:, None]
    v_ptrs = V + base + offs_n[:, None] * s_t + offs_d[None, :]
    qk_scale = sm_scale * 1.4426950408889634
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, m0, BLOCK_N):                     # below the diagonal: no mask
        acc, m_i, l_i = _fa2_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, n0, s_t, offs_m, offs_n, qk_scale, False)
    for n0 in range(m0, m0 + BLOCK_M, BLOCK_N):          # the diagonal block
        acc, m_i, l_i = _fa2_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, n0, s_t, offs_m, offs_n, qk_scale, True)
    tl.store(OUT + base + offs_m[:, None] * s_t + offs_d[None, :], (acc / l_i[:, None]).to(OUT.dtype.element_ty))
    tl.store(LSE + (bi * H + hi) * T + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453)


def fa2_causal_fwd(q, k, v, sm_scale, num_stages=3, block_m=128, block_n=64, num_warps=8):
    """Launch the yardstick (q, k, v contiguous (b, t, h, d), t a multiple of block_m)."""
    b, t, h, d = q.shape
    assert q.is_contiguous() and k.stride() == v.stride() == q.stride() and t % block_m == 0
    out = torch.empty_like(q)
    lse = torch.empty((b, h, t), dtype=torch.float32, device=q.device)
    _fa2_causal_fwd[(t // block_m, h, b)](q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), t, h,
                                          float(sm_scale), D=d, BLOCK_M=block_m, BLOCK_N=block_n,
                                          num_warps=num_warps, num_stages=num_stages)
    return out, lse
