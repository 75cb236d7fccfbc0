"""sm120 (RTX 50xx, RTX PRO 6000: 99 KiB shared memory per block, mma.sync) tile
tables: the sm86 family's (the same limit, the same mma.sync path);
``python -m benchmarks.static --arch sm_120`` measures them.
"""
from .sm86 import ATTENTION, ATTENTION_FP32, OTHERS, OTHERS_FP32  # noqa: F401
