"""Float32 inputs, every family. Their products are exact float32 (``input_precision=
"ieee"``, FMA, as under the interpreter the tests run): three-pass TF32 spilled in
every attention config on sm_90, even the smallest 8-warp tiles (464 B to 29 KB per
thread), while IEEE products at the same tiles need 100-230 registers. Measured for
sm_90 (``python -m benchmarks.static --arch sm_90 --dtypes fp32``), at the widest
class of each row unless said:
- d <= 128: forward 32x16, 8 warps (101 registers at d=128, n=128; 4 warps: 244 there,
  but 1,560 B spilled at d=96);
  both backward kernels 32x16, 8 warps (dq 139, dk/dv 228; 4 warps spill 240 B and
  1,320 B); 16x16 tiles are the fallbacks;
- d = 256: forward 16x16, 4 warps (150, three blocks per SM) then 32x16, 8 warps
  (144); dq 16x16 with 4 warps (186; 8 warps spill 56 B at n=64); dk/dv 16x16, 8 warps (178; 4 warps
  spill 2 KB);
- decode: 16-row tiles, 3 stages (2 stages spill 24 B when one query shares a kv
  head); every entry's shared memory is under 99 KiB.
Entries as in ``sm90.py``; the families share these until their own reports say otherwise.
"""

ATTENTION_FP32 = {}
for _d in (64, 128):
    for _n in (16, 64, 128):
        ATTENTION_FP32[("fwd", _d, _n)] = [(32, 16, 8, 2), (16, 16, 4, 2)]
        ATTENTION_FP32[("dq", _d, _n)] = [(32, 16, 8, 2), (16, 16, 4, 2)]
        ATTENTION_FP32[("dkv", _d, _n)] = [(32, 16, 8, 2), (16, 16, 8, 2)]
for _n in (64, 128):
    ATTENTION_FP32[("fwd", 256, _n)] = [(16, 16, 4, 2), (32, 16, 8, 2)]
    ATTENTION_FP32[("dq", 256, _n)] = [(16, 16, 4, 2)]
    ATTENTION_FP32[("dkv", 256, _n)] = [(16, 16, 8, 2), (16, 16, 8, 1)]

OTHERS_FP32 = {"delta": [64, 32], "decode": [(16, 6144, 4, 3), (16, 6144, 4, 1)], "scan": [1024, 512],
               "augment": [(16, 16)]}
