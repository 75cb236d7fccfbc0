"""Every Triton kernel compiles ahead of time for sm_90 (Hopper) in bf16.

No GPU here, and the CPU interpreter accepts code that the compiler rejects, so each
kernel is compiled for a Hopper target in a subprocess without TRITON_INTERPRET, with
GPU-sized constants. The attention kernels must also take the wgmma tensor-core path.
"""
import os
import subprocess
import sys

import pytest
import torch

ATTENTION = r"""
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sisa_kernels import attention, attention_bwd

PTRS = {"G": "*fp64", "LAM": "*fp32", "LSE": "*fp32", "DELTA": "*fp32", "DK": "*fp32", "DV": "*fp32",
        "COLG": "*fp32", "ROWG": "*fp32", "SEQ_START": "*i32", "BOUNDS": "*i32"}
for (fn, blocks), varlen in itertools.product(
        ((attention._sisa_fwd_kernel, dict(BLOCK_M=128, BLOCK_N=64)),
         (attention_bwd._sisa_bwd_dkv_kernel, dict(BLOCK_OUT=128, BLOCK_IN=32)),
         (attention_bwd._sisa_bwd_dq_kernel, dict(BLOCK_OUT=128, BLOCK_IN=32))), (False, True)):
    consts = dict(D=64, N=16, D_PAD=64, N_PAD=16, UPCAST=False, IS_VARLEN=varlen, **blocks)
    ints = ("H", "T", "S", "REP", "T_BUCKET")
    sig = {a: "constexpr" if a in consts else "fp32" if a == "qk_scale" else
           "i32" if a in ints or a.islower() else PTRS.get(a, "*bf16") for a in fn.arg_names}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=2))
    assert "warp_group_dot" in k.asm["ttgir"], fn.__name__   # Hopper wgmma tensor-core path
"""

# The scan, the sdpa epilogue and decoding: pointers named per kernel (bf16 data,
# float64 g and its offsets, float32 other state), the remaining non-constexpr
# arguments are int32.
OTHERS = r"""
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sisa_kernels import augment, decode, scan

F32 = {"LA", "PHI0", "PHI_LAST", "DLA", "DG_LAST", "DPHI_LAST", "DG0", "DPHI0", "LAM", "S", "DS", "PART_O",
       "PART_L"}
F64 = {"G", "G0", "G_LAST", "OFF"}                      # g, its states and offsets (docs/design.md section 5)
DG64 = {scan._scan_bwd_kernel}                         # the scan backward reads g's gradient in g's dtype
I32 = {"CU", "SEQ", "LENS"}
PTRS = {
    scan._scan_fwd_kernel: "C B LA TH CR BR G G0 PHI0 G_LAST PHI_LAST CU SEQ",
    scan._scan_bwd_kernel: "C B TH PHI_LAST DCR DBR DG DC DB DLA DTH DG_LAST DPHI_LAST DG0 DPHI0 CU SEQ",
    augment._augment_fwd_kernel: "Q K CR BR G S OFF QH KH",
    augment._augment_bwd_kernel: "DQH DKH CR BR G S OFF DQ DK DCR DBR DG DS",
    decode._decode_split_kernel: "Q K V CR BR G LAM LENS KEYS PART_O PART_L",
    decode._decode_merge_kernel: "PART_O PART_L OUT",
}
CONSTS = dict(ACC=tl.float32, BLOCK_T=64, BLOCK_P=16, IS_VARLEN=True, HAS_DCR=True, HAS_DBR=True, HAS_DG=True,
              HAS_DQH=True,
              HAS_DKH=True, BLOCK_D=64, BLOCK_N=16, D_PAD=128, N_PAD=16, SPLITS_PAD=16, BLOCK_S=16, REP=4,
              BLOCK_M=32, UPCAST=False, HAS_KEY_MASK=True)
for fn, ptrs in PTRS.items():
    ptrs = set(ptrs.split())
    consts, sig = {}, {}
    for a, p in zip(fn.arg_names, fn.params):
        if p.is_constexpr:
            consts[a], sig[a] = CONSTS[a], "constexpr"
        else:
            f64 = a in F64 or (a == "DG" and fn in DG64)
            sig[a] = (("*fp64" if f64 else "*fp32" if a in F32 or a == "DG" else "*i32" if a in I32
                       else "*u8" if a == "KEYS" else "*bf16")
                      if a in ptrs
                      else "fp32" if a == "qk_scale" else "i32")
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=4))
"""


@pytest.mark.parametrize("which", ["attention", "scan-augment-decode"])
def test_compiles_for_hopper(which):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests compile and run every kernel for it")
    pytest.importorskip("triton.backends.nvidia", reason="Triton built without the NVIDIA backend")
    script = ATTENTION if which == "attention" else OTHERS
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
