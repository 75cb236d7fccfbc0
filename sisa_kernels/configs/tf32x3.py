"""Float32 inputs, every family: tf32x3 products (three TF32 passes per tl.dot, for
float32 accuracy) hold operands split in two, so registers and shared memory run at
about twice the 16-bit tiles'. Measured for sm_90 at the widest classes (``python -m
benchmarks.static --arch sm_90 --dtypes fp32``): even the smallest tiles use all 255
registers and still spill, least with 8 warps (d=128, n=128: forward 32x16 464 B, dq
1,856 B, dk/dv 1,936 B; d=256: forward 16x16 884 B, dq 16x16 one stage 4,248 B, dk/dv
16x16 29,040 B); 4-warp tiles spill about twice that and are the fallbacks. The families
share these until their own reports say otherwise. Entries as in ``sm90.py``.
"""

ATTENTION_FP32 = {}
for _d, _n in ((64, 16), (64, 64), (64, 128), (128, 16), (128, 64), (128, 128)):
    for _kind in ("fwd", "dq", "dkv"):
        ATTENTION_FP32[(_kind, _d, _n)] = [(32, 16, 8, 2), (32, 16, 4, 2)]
for _n in (64, 128):
    ATTENTION_FP32[("fwd", 256, _n)] = [(16, 16, 8, 2), (16, 16, 4, 2)]
    ATTENTION_FP32[("dq", 256, _n)] = [(16, 16, 4, 1)]
    ATTENTION_FP32[("dkv", 256, _n)] = [(16, 16, 8, 2), (16, 16, 4, 1)]

# Decode: 16-row tiles and half the key tile (the 32-row grouped-query tiles spill).
OTHERS_FP32 = {"delta": [64, 32], "decode": [(16, 6144, 4, 2)], "scan": [1024, 512], "augment": [(16, 16)]}
