"""sm86 (sm_86 and sm_89: RTX 30xx / 40xx, A6000, L4, L40S: 99 KiB shared memory per
block, mma.sync) tile tables.

Entries as in ``sm90.py``. 16-bit: started from sm_90's measured entries without those
above 99 KiB (the forward's 64x64 tiles at d=256 need 112-192 KiB) and without those the
sm_86 report found spilling: dq 64x32 at d=128 (8-16 B), dk/dv 64x16 with 8 warps at
d=128, n=16 (1,036 B) and 128x32 at d=64, n=64 (64 B); then the full sm_86 and sm_89
reports' (16-96 B): dq 64x16 and 32x16 with 4 warps at d=64, n=128 and d=96, n=16/64
(8 warps instead), and the scans' 512-element tiles (16 B in float16 at n=16 on sm_86;
256, with the launcher's 4 warps for 128-row tiles, is clean on both). Written out in full, so editing
another family's table leaves this one's reports current; ``python -m benchmarks.static
--arch sm_86,sm_89`` measures them. Float32 inputs: ``fp32.py``.
"""
from .fp32 import ATTENTION_FP32_SM86 as ATTENTION_FP32, OTHERS_FP32_99KIB as OTHERS_FP32  # noqa: F401

ATTENTION = {
    ("fwd", 64, 16): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    ("fwd", 64, 64): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    ("fwd", 64, 128): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 16): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 64): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", 128, 128): [(64, 32, 4, 2), (32, 16, 4, 2)],
    ("dq", 64, 16): [(64, 32, 4, 2), (64, 16, 8, 2), (64, 16, 4, 2)],
    ("dq", 64, 64): [(64, 16, 4, 2), (128, 32, 8, 2), (32, 16, 4, 2)],
    ("dq", 64, 128): [(64, 16, 8, 2), (64, 32, 8, 2)],
    ("dq", 128, 16): [(64, 16, 8, 2), (32, 16, 8, 2), (16, 16, 4, 2)],
    ("dq", 128, 64): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("dq", 128, 128): [(64, 16, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 16): [(64, 32, 4, 2), (64, 16, 4, 2), (128, 32, 8, 2)],
    ("dkv", 64, 64): [(64, 16, 4, 2), (32, 16, 4, 2)],
    ("dkv", 64, 128): [(64, 32, 8, 2), (64, 16, 8, 2), (32, 16, 4, 2)],
    ("dkv", 128, 16): [(32, 16, 4, 2)],
    ("dkv", 128, 64): [(32, 16, 4, 2)],
    ("dkv", 128, 128): [(32, 16, 4, 2)],
    ("fwd", 256, 64): [(64, 16, 8, 2), (16, 16, 4, 2)],
    ("fwd", 256, 128): [(32, 16, 4, 2), (16, 16, 4, 2)],
    ("dq", 256, 64): [(16, 16, 4, 2)],
    ("dq", 256, 128): [(16, 16, 4, 2)],
    ("dkv", 256, 64): [(16, 16, 4, 2)],
    ("dkv", 256, 128): [(16, 16, 4, 2)],
}

OTHERS = {"delta": [64, 32], "decode": [(32, 12288, 4, 2)], "scan": [256, 128], "augment": [(16, 16)]}
