"""sm100 (B200, GB200, B300: 227 KiB shared memory per block) tile tables: sm_90's
attention entries; the backward's delta kernel (152 B at 64 rows) and the augment
backward (24 B) spill there with sm_90's tiles, so they start smaller (augment:
16-row tiles only).
``python -m benchmarks.static --arch sm_100`` measures them. Float32: ``fp32.py``.
"""
from .sm90 import ATTENTION  # noqa: F401
from .fp32 import ATTENTION_FP32, OTHERS_FP32  # noqa: F401

OTHERS = {"delta": [32, 16], "decode": [(32, 12288, 4, 2)], "scan": [1024, 512], "augment": [(16, 16)]}
