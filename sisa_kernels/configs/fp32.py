"""Float32 inputs, every family. Their products are exact float32 (``input_precision=
"ieee"``, FMA, as under the interpreter the tests run): three-pass TF32 spilled in
every attention config on sm_90, even the smallest 8-warp tiles (464 B to 29 KB per
thread), while IEEE products at the same tiles need 100-230 registers. Measured for
sm_90 (``python -m benchmarks.static --arch sm_90 --dtypes fp32``), at the widest
class of each row unless said:
- d <= 128: forward 32x16, 8 warps (101 registers at d=128, n=128; 4 warps: 244 there,
  but 1,560 B spilled at d=96), but 16x16 with 4 warps where ptxas held the 8-warp
  tile to 128 registers and spilled (24 B at d=64, n=128; 72 B at d=128, n=64);
  both backward kernels 32x16, 8 warps (dq 139, dk/dv 228; 4 warps spill 240 B and
  1,320 B); 16x16 tiles are the fallbacks, but for dk/dv at d=64, n=16 (8 warps spill
  24 B there);
- d = 256: forward 16x16, 4 warps (150, three blocks per SM) then 32x16, 8 warps
  (144); dq 16x16 with 4 warps (186; 8 warps spill 56 B at n=64); dk/dv 16x16, 8 warps (178; 4 warps
  spill 2 KB);
- decode: 16-row tiles with 4 warps; the key tile and stages per family, measured with
  every call the decode launcher makes (one query, with and without a key mask, and 8
  queries for 4 and 8 query heads per key head; ``--arch A --dtypes fp32 --families
  decode``). sm_90 and sm_100: 3,072 elements, 3 stages (with 6,144 the grouped-query
  tiles at d=64 spill 84-144 B even at 255 registers).
  sm_86/89 (``OTHERS_FP32_99KIB``): 3,072 elements, 2 stages (3 need 100 KiB at d=256,
  n=128; 2 warps spill 20 B to 24 KB). sm_120: the same, but 3 stages at d in (64, 128],
  n in (64, 128] (with 2, the one-query tile there is held to 80 registers and spills
  8 B). sm_80: 6,144 elements, 3 stages, but 2 at d=64, n > 64 (3 there: the
  grouped-query tiles spill 16-28 B at 128-168 registers; 2 elsewhere: the masked
  one-query tile at d=96/128 spills 8-56 B at 80). No fallback entry: 1 stage spills
  80-204 B at d=256, n=128, so a failed launch takes the exact decode path.
- scan: 1,024- then 512-element tiles, with a register cap of 255 on sm_80 and sm_120,
  where ptxas held the scan backward (sm_80: 128x2 and 16x32 tiles at 64 and 128
  registers, 16 B) and the forward (sm_120: 32x16 at 72, 8 B) below what they need; no
  other tile size tried (256 to 2,048 elements) avoids it, and a cap of 168 still spills
  16-168 B.
Register caps (the fifth field of an attention entry, Triton's ``maxnreg``), per family:
off sm_90, ptxas held some of these tiles to 80-168 registers and spilled 8-96 B (it
trades registers for blocks per SM; ``-maxrregcount`` does not lift that choice). Each
cap below is the smallest of the block-count thresholds (for 4 warps 168 = three blocks,
255 = two; for 8 warps 128 = two, 255 = one) at which the spilling compile has 0 B, with
ptxas given the same PTX (``.maxnreg`` in it), e.g. sm_80 dk/dv 16x16 with 8 warps at
d=64, n=128: 80 registers and 16 B, capped at 128: 128 and 0 B; dk/dv 32x16 with 8 warps
at d=128, n=64: 128 and 32 B, at 255: 255 and 0 B. A cap is not free (ptxas then fills
it: one block per SM for 8 warps at 255), and it is not harmless everywhere: capped at
255, the decode split kernel spilled 24-276 B at widths it compiles cleanly uncapped, so
decode has no cap and gets its tiles per width class instead.
Entries as in ``sm90.py``; the families share these until their own reports say otherwise.
"""

ATTENTION_FP32 = {}
for _d in (64, 128):
    for _n in (16, 64, 128):
        ATTENTION_FP32[("fwd", _d, _n)] = [(32, 16, 8, 2), (16, 16, 4, 2)]
        ATTENTION_FP32[("dq", _d, _n)] = [(32, 16, 8, 2), (16, 16, 4, 2)]
        ATTENTION_FP32[("dkv", _d, _n)] = [(32, 16, 8, 2), (16, 16, 8, 2)]
for _cls in (("fwd", 64, 128), ("fwd", 128, 64)):
    ATTENTION_FP32[_cls] = [(16, 16, 4, 2)]
ATTENTION_FP32[("dkv", 64, 16)] = [(32, 16, 8, 2)]
for _n in (64, 128):
    ATTENTION_FP32[("fwd", 256, _n)] = [(16, 16, 4, 2), (32, 16, 8, 2)]
    ATTENTION_FP32[("dq", 256, _n)] = [(16, 16, 4, 2)]
    ATTENTION_FP32[("dkv", 256, _n)] = [(16, 16, 8, 2), (16, 16, 8, 1)]



def _capped(caps: dict) -> dict:
    """ATTENTION_FP32 with ``caps``: {(kind, d, n): {entry: maxnreg}}."""
    table = {cls: list(entries) for cls, entries in ATTENTION_FP32.items()}
    for cls, by_entry in caps.items():
        table[cls] = [(*e, by_entry[e]) if e in by_entry else e for e in table[cls]]
        assert set(by_entry) <= set(ATTENTION_FP32[cls]), cls
    return table


_W8, _W4, _SMALL8 = (32, 16, 8, 2), (16, 16, 4, 2), (16, 16, 8, 2)
ATTENTION_FP32_SM80 = _capped({
    ("fwd", 64, 128): {_W4: 168},
    ("dq", 128, 16): {_W8: 255}, ("dq", 128, 64): {_W8: 255}, ("dq", 128, 128): {_W8: 255},
    ("dkv", 64, 128): {_SMALL8: 128},
    ("dkv", 128, 16): {_W8: 255}, ("dkv", 128, 64): {_W8: 255}, ("dkv", 128, 128): {_W8: 255},
    ("dkv", 256, 64): {_SMALL8: 255},
})
ATTENTION_FP32_SM86 = _capped({          # sm_86 and sm_89 alike
    ("fwd", 128, 16): {_W8: 255}, ("fwd", 128, 64): {_W4: 255}, ("fwd", 128, 128): {_W4: 168},
    ("fwd", 256, 64): {_W8: 255},
    ("dkv", 64, 64): {_SMALL8: 128}, ("dkv", 128, 64): {_W8: 255},
})
ATTENTION_FP32_SM100 = _capped({("fwd", 256, 64): {_W8: 255}, ("dq", 128, 128): {_W4: 255}})
ATTENTION_FP32_SM120 = _capped({
    ("fwd", 256, 64): {_W8: 255}, ("fwd", 256, 128): {_W8: 255}, ("dq", 128, 128): {_W4: 255},
})

OTHERS_FP32 = {"delta": [64, 32], "decode": [(16, 3072, 4, 3)], "scan": [1024, 512], "augment": [(16, 16)]}
OTHERS_FP32_99KIB = {**OTHERS_FP32, "decode": [(16, 3072, 4, 2)]}
OTHERS_FP32_SM120 = {**OTHERS_FP32, "scan": [(1024, 255), (512, 255)],
                     "decode": {"*": [(16, 3072, 4, 2)], (128, 128): [(16, 3072, 4, 3)]}}
OTHERS_FP32_SM80 = {**OTHERS_FP32, "scan": [(1024, 255), (512, 255)],
                    "decode": {"*": [(16, 6144, 4, 3)], (64, 128): [(16, 6144, 4, 2)]}}
