"""sm120 (RTX 50xx, RTX PRO 6000: 99 KiB shared memory per block, mma.sync) tile
tables: the sm86 family's (the same limit, the same mma.sync path), written out in full,
without the entries that spill for sm_120 (``python -m benchmarks.static --arch
sm_120``, bf16):
- forward: 64x64 tiles at d=64 (84-204 B), 64x32 with 4 warps at d=96 (16-64 B);
- dq: 64-row tiles with 4 warps at d=64, n=128 and d=96/128, n=64 (16-436 B), 128x32
  at d=64, n=64 (148 B), 64x32 with 8 warps at d=64, n=128 (32 B);
- dk/dv at d=128, n=16: every tile tried with 4 or 8 warps spills (56-2,568 B; 16x16
  to 64x32, 1-3 stages), so 32x16 with 2 warps (255 registers, none spilled) is the
  only entry; at d=96 the same tile, its head dim masked, spills 24 B at 255 registers
  (as did every tile and warp count tried there), so that class runs on copies
  zero-padded to 128 (``PAD_HEAD_DIM``): the d=128 compile;
- the scan backward's 256-element tiles at n=16 (16 B).
Entries as in ``sm90.py``; float32 inputs: ``fp32.py``.
"""
from .fp32 import ATTENTION_FP32_SM120 as ATTENTION_FP32, OTHERS_FP32_SM120 as OTHERS_FP32  # noqa: F401

ATTENTION = {
    ("fwd", 64, 16): [(64, 64, 4, 3), (64, 32, 4, 2)],
    ("fwd", 64, 64): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 64, 128): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 16): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 64): [(64, 32, 8, 2), (32, 16, 4, 2)],
    ("fwd", 128, 128): [(64, 32, 8, 2), (32, 16, 4, 2)],
    ("dq", 64, 16): [(64, 32, 4, 2), (64, 16, 8, 2), (64, 16, 4, 2)],
    ("dq", 64, 64): [(64, 16, 4, 2), (32, 16, 4, 2)],
    ("dq", 64, 128): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("dq", 128, 16): [(64, 16, 4, 2), (32, 16, 4, 2)],
    ("dq", 128, 64): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("dq", 128, 128): [(64, 16, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 16): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2)],
    ("dkv", 64, 64): [(64, 16, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 128): [(64, 32, 8, 2), (64, 16, 8, 2), (32, 16, 4, 2)],
    ("dkv", 128, 16): [(32, 16, 2, 2)],
    ("dkv", 128, 64): [(32, 16, 4, 2)],
    ("dkv", 128, 128): [(32, 16, 4, 2)],
    ("fwd", 256, 64): [(64, 16, 8, 2), (16, 16, 4, 2)],
    ("fwd", 256, 128): [(32, 16, 4, 2), (16, 16, 4, 2)],
    ("dq", 256, 64): [(16, 16, 4, 2)],
    ("dq", 256, 128): [(16, 16, 4, 2)],
    ("dkv", 256, 64): [(16, 16, 4, 2)],
    ("dkv", 256, 128): [(16, 16, 4, 2)],
}

# (dtype class, kind, width class) whose launches run on inputs zero-padded to the class's
# head dim (``configs.pads_head_dim``): dk/dv 32x16 with 2 warps at d=96, n=16 spills 24 B at
# 255 registers (every tile and warp count tried spills there), at d=128 none.
PAD_HEAD_DIM = {("16bit", "dkv", 128, 16)}

OTHERS = {"delta": [64, 32], "decode": [(32, 12288, 4, 2)], "scan": [512, 128], "augment": [(16, 16)]}
