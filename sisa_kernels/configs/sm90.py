"""sm_90 (H100, H200: 227 KiB shared memory per block, wgmma) tile tables.

ATTENTION / ATTENTION_FP32: (kernel, padded head dim class, padded d_state class) ->
attention configs (block rows, block cols, num_warps, num_stages), best first, for
16-bit and float32 inputs. Best is two resident blocks per SM where possible (one
block's softmax overlaps the other's tensor-core work), then the largest tile, then
the deeper pipeline. OTHERS / OTHERS_FP32: the other kernels' entries, best first:
- "delta": BLOCK, rows of the backward's o.do kernel;
- "decode": (most rows per tile, elements of the k, v, B_rot key tiles together,
  num_warps, num_stages) of the split kernel;
- "scan": elements per (BLOCK_T x BLOCK_P) tile of both scan kernels, or (elements,
  maxnreg) with a register cap (``fp32.py``);
- "augment": (BLOCK_T for rows of d + n <= 128, BLOCK_T for wider rows).
A kind's entries may also be given per width class, {(d, n): entries, "*": the rest}
(``configs.others``; decode on sm_80, sm_100 and sm_120).
Every entry compiles for its arch with 0 spilled bytes and shared memory within the
limit (``python -m benchmarks.static --arch sm_90``).
"""
from .fp32 import ATTENTION_FP32, OTHERS_FP32  # noqa: F401

ATTENTION = {
    ("fwd", 64, 16): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    ("fwd", 64, 64): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    ("fwd", 64, 128): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3)],
    ("fwd", 128, 16): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3)],
    ("fwd", 128, 64): [(64, 32, 4, 2), (128, 64, 8, 3)],
    ("fwd", 128, 128): [(64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 8, 2)],
    ("dq", 64, 16): [(64, 32, 4, 2), (64, 16, 8, 2), (64, 16, 4, 2)],
    ("dq", 64, 64): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2)],
    ("dq", 64, 128): [(64, 16, 4, 2), (64, 32, 8, 2), (64, 16, 8, 2)],
    ("dq", 128, 16): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2)],
    ("dq", 128, 64): [(64, 16, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2)],
    ("dq", 128, 128): [(64, 16, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 16): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2)],
    ("dkv", 64, 64): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2)],
    ("dkv", 64, 128): [(64, 16, 4, 2), (64, 32, 8, 2), (64, 16, 8, 2)],
    ("dkv", 128, 16): [(64, 32, 8, 2), (64, 16, 8, 2)],
    ("dkv", 128, 64): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("dkv", 128, 128): [(32, 16, 4, 2)],
    ("fwd", 256, 64): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("fwd", 256, 128): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("dq", 256, 64): [(16, 16, 4, 3), (16, 16, 4, 1)],
    ("dq", 256, 128): [(16, 16, 4, 2)],
    ("dkv", 256, 64): [(16, 16, 4, 2)],
    ("dkv", 256, 128): [(16, 16, 4, 2)],
}
# The full bf16 report dropped the forward's 64x64 tiles at d=96, n=64 (8 B) and at
# d=256, n=16/64 (40-88 B), and dq 16x16 with 2 stages at d=256, n=16 (16 B; 3 stages: 134
# registers, none spilled).
# The augment backward spills 24 B with 32-row tiles at d=64, n=16 (64 and 16 rows do not).
OTHERS = {"delta": [64, 32], "decode": [(32, 12288, 4, 2)], "scan": [1024, 512], "augment": [(64, 16), (16, 16)]}
