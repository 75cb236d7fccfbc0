"""sm80 (A100, A800, A30: 163 KiB shared memory per block, mma.sync) tile tables.

Entries as in ``sm90.py``. 16-bit: sm_90's measured entries that fit 163 KiB, minus the
defaults that spill on mma.sync (dk/dv 64x32 at d=128, n=16 spills 17 KB on sm_80;
forward 64x64 at d=128 and at d=64, n=128; the 64-row backward tiles at d=64, n>=64 and
d=128, n=64), each class ending in a small tile. The full sm_80 report then dropped what
still spilled (8-112 B): the forward's 64x64 at d=64, n=64 and 128x64 at d=96, n=16;
dq 64x16 with 4 warps at d=64, n=128 and 128x32 at d=96/128, n=64; dk/dv 32x16 with 4
warps at d=128, n=16 (32x16 with 2 warps and 64x16 with 4 do not). ``python -m
benchmarks.static --arch sm_80`` measures them. Float32 inputs: ``fp32.py``.
"""
from .fp32 import ATTENTION_FP32_SM80 as ATTENTION_FP32, OTHERS_FP32_SM80 as OTHERS_FP32  # noqa: F401

ATTENTION = {
    ("fwd", 64, 16): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    ("fwd", 64, 64): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 64, 128): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 16): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 64): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 128): [(64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 8, 2)],
    ("dq", 64, 16): [(64, 32, 4, 2), (64, 16, 8, 2), (64, 16, 4, 2)],
    ("dq", 64, 64): [(64, 16, 4, 2), (128, 32, 8, 2), (32, 16, 4, 2)],
    ("dq", 64, 128): [(64, 16, 8, 2), (64, 32, 8, 2), (32, 16, 4, 2)],
    ("dq", 128, 16): [(64, 16, 4, 2), (32, 16, 4, 2)],
    ("dq", 128, 64): [(64, 16, 4, 2), (32, 16, 4, 2)],
    ("dq", 128, 128): [(64, 16, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 16): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2)],
    ("dkv", 64, 64): [(64, 16, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 128): [(64, 32, 8, 2), (64, 16, 8, 2), (32, 16, 4, 2)],
    ("dkv", 128, 16): [(32, 16, 2, 2), (64, 16, 4, 2)],
    ("dkv", 128, 64): [(32, 16, 4, 2)],
    ("dkv", 128, 128): [(32, 16, 4, 2)],
    ("fwd", 256, 64): [(64, 16, 8, 2), (16, 16, 4, 2)],
    ("fwd", 256, 128): [(64, 16, 8, 2), (32, 16, 4, 2), (16, 16, 4, 2)],
    ("dq", 256, 64): [(16, 16, 4, 2)],
    ("dq", 256, 128): [(16, 16, 4, 2)],
    ("dkv", 256, 64): [(16, 16, 4, 2)],
    ("dkv", 256, 128): [(16, 16, 4, 2)],
}

# The scan backward spills on sm_80 with 1K-element tiles (and 8-16 B with 256): 512, then
# 128. The augment backward spills 24 B with 64-row tiles at d=64, n=16 on sm_86: 16 rows.
OTHERS = {"delta": [64, 32], "decode": [(32, 12288, 4, 2)], "scan": [512, 128], "augment": [(16, 16)]}
