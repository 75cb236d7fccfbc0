"""Float32 inputs, every family: tf32x3 products (three TF32 passes per tl.dot, for
float32 accuracy) hold operands split in two, so registers and shared memory run at
about twice the 16-bit tiles'. Measured for sm_90 (``python -m benchmarks.static --arch
sm_90 --dtypes fp32``): the smallest tiles, and even they still spill (hundreds of bytes
at head dim 128, kilobytes at 256); the families share them until their own reports say
otherwise. Entries as in ``sm90.py``.
"""

ATTENTION_FP32 = {}
for _d, _n in ((64, 16), (64, 64), (64, 128), (128, 16), (128, 64), (128, 128)):
    ATTENTION_FP32[("fwd", _d, _n)] = [(32, 16, 4, 2)]
    ATTENTION_FP32[("dq", _d, _n)] = [(32, 16, 4, 2)]
    ATTENTION_FP32[("dkv", _d, _n)] = [(32, 16, 4, 2)]
for _n in (64, 128):
    ATTENTION_FP32[("fwd", 256, _n)] = [(16, 16, 4, 2)]
    ATTENTION_FP32[("dq", 256, _n)] = [(16, 16, 4, 1)]
    ATTENTION_FP32[("dkv", 256, _n)] = [(16, 16, 4, 1)]

# Decode: 16-row tiles and half the key tile (the 32-row grouped-query tiles spill).
OTHERS_FP32 = {"delta": [64, 32], "decode": [(16, 6144, 4, 2)], "scan": [1024, 512], "augment": [(32, 16), (16, 16)]}
