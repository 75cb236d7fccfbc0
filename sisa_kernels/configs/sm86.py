"""sm86 (sm_86 and sm_89: RTX 30xx / 40xx, A6000, L4, L40S: 99 KiB shared memory per
block, mma.sync) tile tables.

Entries as in ``sm90.py``. 16-bit: the sm80 family's (sm_90's measured entries minus the
defaults that spill on mma.sync), without those above 99 KiB (the forward's 64x64 tiles
at d=256 need 112-192 KiB); ``python -m benchmarks.static --arch sm_86,sm_89`` measures
them. Float32 inputs: ``fp32.py``.
"""
from . import sm80
from .fp32 import ATTENTION_FP32, OTHERS_FP32  # noqa: F401

# sm_80's entries without those above 99 KiB (their shared memory on sm_90); the sm_86
# report dropped from both: dq 64x32 at d=128 (8-16 B spilled), dk/dv 64x16 8 warps at
# d=128, n=16 (1,036 B) and 128x32 at d=64, n=64 (64 B).
ATTENTION = {**sm80.ATTENTION,
             ("fwd", 128, 16): [(64, 32, 4, 2), (32, 16, 4, 2)],
             ("fwd", 128, 128): [(64, 32, 4, 2), (32, 16, 4, 2)],
             ("dq", 128, 64): [(64, 16, 4, 2), (32, 16, 4, 2)],
             ("fwd", 256, 128): [(32, 16, 4, 2), (16, 16, 4, 2)]}

OTHERS = sm80.OTHERS
