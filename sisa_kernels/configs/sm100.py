"""sm100 (B200, GB200, B300: 227 KiB shared memory per block) tile tables: sm_90's
attention entries as they were when measured for sm_100, written out in full (so a fix
to sm_90's leaves this family's reports current), but for what spilled there with
sm_90's tiles (``python -m benchmarks.static --arch sm_100``): the forward's 64x32
4-warp tile at d=128, n=128 (16 B), the backward's delta kernel at 32 and 64 rows
(152-168 B at d=256: 16 and 8 rows), the decode's 32-row tiles (8-16 B at d=256 with
4 or 8 warps: 16 rows with 4 warps are clean at every width, with 8 warps they are
not) and the augment backward's 16-row tiles of wide rows (24 B at d=64, n=128: 8
rows). Measured again once the report compiled each decode call with its own
arguments (the 8-query, grouped-query calls had been compiled as the one-query call):
with 12,288-element key tiles the 8-query-heads tile spilled 8-16 B at 168 registers at
d=96/128, n=128 (3 stages) and d=256, n=128 (2 stages), so those two width classes take
6,144 elements and 3 stages only. Float32: ``fp32.py``.
"""
from .fp32 import ATTENTION_FP32_SM100 as ATTENTION_FP32, OTHERS_FP32  # noqa: F401

ATTENTION = {
    ("fwd", 64, 16): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    ("fwd", 64, 64): [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    ("fwd", 64, 128): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3)],
    ("fwd", 128, 16): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3)],
    ("fwd", 128, 64): [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3)],
    ("fwd", 128, 128): [(128, 32, 8, 2), (64, 64, 8, 2)],
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
    ("fwd", 256, 64): [(64, 64, 8, 2), (64, 16, 8, 2)],
    ("fwd", 256, 128): [(64, 16, 8, 2), (32, 16, 4, 2)],
    ("dq", 256, 64): [(16, 16, 4, 2)],
    ("dq", 256, 128): [(16, 16, 4, 2)],
    ("dkv", 256, 64): [(16, 16, 4, 2)],
    ("dkv", 256, 128): [(16, 16, 4, 2)],
}

OTHERS = {"delta": [16, 8],
          "decode": {"*": [(16, 12288, 4, 3), (16, 12288, 4, 2)],
                     (128, 128): [(16, 6144, 4, 3), (16, 6144, 4, 2)], (256, 128): [(16, 12288, 4, 3)]},
          "scan": [1024, 512], "augment": [(16, 8), (8, 8)]}
