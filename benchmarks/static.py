"""Static sm_90 (Hopper) resource report of every Triton kernel config the launchers may pick.

    python -m benchmarks.static [--quick] [--out DIR] [--jobs N]

No GPU is needed. Every kernel is compiled for sm_90 (``GPUTarget("cuda", 90, 32)``)
through Triton's real argument specialisation, as a launch on an H100 would see it:
a stand-in Triton driver whose target is Hopper is made active, the project's own
launchers are called on CPU tensors of realistic shapes (b=1, t=4096, h=8, contiguous,
bf16) with the kernel launch intercepted, and the intercepted call is compiled with
``kernel.warmup(*args, grid=(1,), **kwargs)``. So the pointers are 16-byte aligned, unit
strides and ints equal to 1 become constants and ints divisible by 16 are marked so,
exactly as ``kernel[grid](...)`` on a GPU would specialise them.

Which configs: for each kernel, the launch the launcher makes by default (the table's
pick, marked ``*``), plus, where the launcher can route through ``triton.autotune``
(``SISA_AUTOTUNE=1``), every config of that autotuner left by its own pruner, applied
exactly as ``Autotuner.run`` does (``prune_configs`` on the call's keyword arguments,
``nargs`` bound from the positional ones). Nothing is listed here: when the kernel
modules change their config lists the report follows. Launch heuristics that ask the
device (helpers of the kernel modules with a ``device`` parameter, e.g. the scan's
block sizes and the decode split count) see a CUDA device with ``--sms`` SMs (132, an
H100 SXM). The yardstick is a compact FlashAttention-2 causal forward written here
(``_fa2_causal_fwd``; BLOCK_M=128, BLOCK_N=64, 8 warps, 2 and 3 stages, d=64 and 128).

What is read from each compiled kernel:
- registers per thread, spill stores + loads (bytes), stack frame: Triton's own ptxas
  invocation with ``-v`` (its log captured; ptxas is rerun with the same flags if the
  kernel came from Triton's cache);
- shared memory (bytes per block), num_warps, num_stages: the kernel's metadata;
- wgmma (``wgmma.mma_async`` in the PTX, HGMMA in the SASS), cp.async
  (``cp.async.{ca,cg}.shared`` in the PTX, LDGSTS in the SASS) and TMA
  (``cp.async.bulk.tensor`` in the PTX, UTMALDG in the SASS), SASS by Triton's bundled
  ``cuobjdump``.

Blocks per SM (simple model, documented rather than exact):
``min(65536 // (regs * 32 * num_warps), 227 KiB // smem, 64 // num_warps, 32)``; it ignores
the register allocation granularity (256 per warp) and the 1 KiB the driver reserves
per block, so it can be one block optimistic at a boundary.

Budgets (``violations`` of a row): ``spill`` (spilled bytes > 0), ``smem`` (shared memory
above 227 KiB: the kernel cannot launch), ``occupancy`` (registers hold the kernel to one
block per SM although shared memory and the warp limit would allow two or more; two
resident blocks is the attention tables' goal, see sisa_kernels/configs.py).

Compiles run in a process pool (``--jobs``, default the CPU count), one progress line per
compile on stderr; Triton's cache goes to a temporary folder (removed at the end) unless
TRITON_CACHE_DIR is set, so nothing is cached in the repository. TRITON_INTERPRET is
removed from the environment before Triton is imported (the compile needs the compiler).
Outputs: the table on stdout, ``sm90_bf16[_quick].json`` and ``.md`` in ``--out``
(default benchmarks/results/static).

``--device`` (on a Hopper GPU; ``benchmarks/gpu_check.sh`` runs it): the same compiles
through the real driver, each row also holding the registers and local (spill) bytes
the driver reports once the cubin is loaded, and a printed list of the rows where they
disagree with ptxas's figures: the check that the static numbers are the measured ones.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "static"
CAPABILITY = 90
H100_SMS = 132
REGS_PER_SM = 65536
MAX_REGS_PER_THREAD = 255
SMEM_PER_BLOCK = 227 * 1024
MAX_BLOCKS_PER_SM = 32
MAX_WARPS_PER_SM = 64
TARGET_BLOCKS = 2
DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
DIMS, STATES = (64, 96, 128, 256), (16, 64, 128)
QUICK_DIMS, QUICK_STATES = (64, 128), (16, 64)
YARDSTICK_DIMS, YARDSTICK_STAGES = (64, 128), (2, 3)

if __name__ in ("__main__", "__mp_main__"):      # the command and its pool's processes: compile, never
    os.environ.pop("TRITON_INTERPRET", None)    # interpret (read when @triton.jit decorates, so before imports)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


# ----------------------------------------------------------------------------
# The yardstick: a compact FlashAttention-2 causal forward (plain pointer arithmetic)
# ----------------------------------------------------------------------------

@triton.jit
def _fa2_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, n0, s_kt, offs_m, offs_n, qk_scale, MASK: tl.constexpr):
    """One key block of the online softmax (base 2), causal mask on the diagonal only."""
    k = tl.load(k_ptrs + n0 * s_kt)                       # (D, BLOCK_N): k^T
    s = tl.dot(q, k) * qk_scale
    if MASK:
        s = tl.where(offs_m[:, None] >= (n0 + offs_n)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    v = tl.load(v_ptrs + n0 * s_kt)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _fa2_causal_fwd(Q, K, V, OUT, LSE, s_b, s_t, s_h, T, H, sm_scale,
                    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """q, k, v, out (b, t, h, D) with one stride set, t a multiple of BLOCK_M; lse (b, h, t)."""
    hi = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    m0 = tl.program_id(0) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    base = bi * s_b + hi * s_h
    q = tl.load(Q + base + offs_m[:, None] * s_t + offs_d[None, :])
    k_ptrs = K + base + offs_n[None, :] * s_t + offs_d[:, None]
    v_ptrs = V + base + offs_n[:, None] * s_t + offs_d[None, :]
    qk_scale = sm_scale * 1.4426950408889634
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, m0, BLOCK_N):                     # below the diagonal: no mask
        acc, m_i, l_i = _fa2_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, n0, s_t, offs_m, offs_n, qk_scale, False)
    for n0 in range(m0, m0 + BLOCK_M, BLOCK_N):          # the diagonal block
        acc, m_i, l_i = _fa2_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, n0, s_t, offs_m, offs_n, qk_scale, True)
    tl.store(OUT + base + offs_m[:, None] * s_t + offs_d[None, :], (acc / l_i[:, None]).to(OUT.dtype.element_ty))
    tl.store(LSE + (bi * H + hi) * T + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453)


def fa2_causal_fwd(q, k, v, sm_scale, num_stages=3, block_m=128, block_n=64, num_warps=8):
    """Launch the yardstick (q, k, v contiguous (b, t, h, d), t a multiple of block_m)."""
    b, t, h, d = q.shape
    assert q.is_contiguous() and k.stride() == v.stride() == q.stride() and t % block_m == 0
    out = torch.empty_like(q)
    lse = torch.empty((b, h, t), dtype=torch.float32, device=q.device)
    _fa2_causal_fwd[(t // block_m, h, b)](q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), t, h,
                                          float(sm_scale), D=d, BLOCK_M=block_m, BLOCK_N=block_n,
                                          num_warps=num_warps, num_stages=num_stages)
    return out, lse


# ----------------------------------------------------------------------------
# Compiling for Hopper without a GPU
# ----------------------------------------------------------------------------

class HopperStandIn:
    """A Triton driver for compiling only: target sm_90, device 0, stream 0, torch on the CPU."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget
        import triton.backends.nvidia.compiler  # noqa: F401  (the NVIDIA backend must be there)
        self.target = GPUTarget("cuda", CAPABILITY, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def map_python_to_cpp_type(self, ty):
        return ty


def _jit_fn(fn):
    from triton.runtime.jit import JITFunction
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


@dataclass
class Launch:
    kernel: object          # the JITFunction
    tuner: object           # the Autotuner it went through, or None
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def captured_launches():
    """Record ``kernel[grid](...)`` and ``autotuned[grid](...)`` calls instead of running them."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    launches = []
    jit_run, tuner_run = JITFunction.run, Autotuner.run

    def record_jit(self, *args, grid, warmup, **kwargs):
        if warmup:
            return jit_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        launches.append(Launch(self, None, args, kwargs))

    def record_tuner(self, *args, **kwargs):
        launches.append(Launch(_jit_fn(self.fn), self, args, kwargs))

    JITFunction.run, Autotuner.run = record_jit, record_tuner
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = jit_run, tuner_run


def _on_cuda(fn):
    sig = inspect.signature(fn)

    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.arguments["device"] = torch.device("cuda", 0)
        return fn(*bound.args, **bound.kwargs)
    return wrapper


@contextlib.contextmanager
def pretend_cuda(modules, sms):
    """Launch heuristics of ``modules`` (their functions with a ``device`` parameter) see a
    CUDA device whose properties report ``sms`` SMs; the tensors stay on the CPU."""
    props = types.SimpleNamespace(multi_processor_count=sms, name="H100 (static stand-in)", major=9, minor=0,
                                  total_memory=80 * 2**30)
    saved = [(torch.cuda, "get_device_properties", torch.cuda.get_device_properties)]
    torch.cuda.get_device_properties = lambda device=None: props
    for mod in modules:
        for name, fn in list(vars(mod).items()):
            if (inspect.isfunction(fn) and fn.__module__ == mod.__name__
                    and "device" in inspect.signature(fn).parameters):
                saved.append((mod, name, fn))
                setattr(mod, name, _on_cuda(fn))
    try:
        yield
    finally:
        for obj, name, fn in reversed(saved):
            setattr(obj, name, fn)


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------
# The launchers, on CPU tensors of realistic shapes
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    batch: int = 1
    seqlen: int = 4096
    heads: int = 8
    kv_heads: int = 8
    sms: int = H100_SMS
    dtype: str = "bfloat16"


def _attention_inputs(d, n, sh):
    dt = getattr(torch, sh.dtype)
    b, t, h, hk = sh.batch, sh.seqlen, sh.heads, sh.kv_heads
    e = torch.empty
    return (e(b, t, h, d, dtype=dt), e(b, t, hk, d, dtype=dt), e(b, t, hk, d, dtype=dt),
            e(b, t, h, n, dtype=dt), e(b, t, h, n, dtype=dt), e(b, t, h, dtype=torch.float64),
            torch.ones(h, dtype=torch.float32))


def _attention_fwd(d, n, sh):
    from sisa_kernels import attention
    attention.sisa_attn_fwd(*_attention_inputs(d, n, sh), d ** -0.5)


def _attention_bwd(d, n, sh):
    from sisa_kernels import attention_bwd
    q, k, v, cr, br, g, lam = _attention_inputs(d, n, sh)
    out, dout = torch.empty_like(q), torch.empty_like(q)
    lse = torch.empty(sh.batch, sh.heads, sh.seqlen, dtype=torch.float32)
    attention_bwd.sisa_attn_bwd(dout, q, k, v, cr, br, g, lam, out, lse, d ** -0.5)


def _scan(d, n, sh):
    """The report's batch, then a batch of 64 (more (batch, head) programs: the launcher
    widens the block of angle pairs each one carries)."""
    from sisa_kernels import scan
    dt, t, h = getattr(torch, sh.dtype), sh.seqlen, sh.heads
    for b in (sh.batch, 64):
        c, bb = torch.empty(b, t, h, n, dtype=dt), torch.empty(b, t, h, n, dtype=dt)
        la, th = torch.empty(b, t, h, dtype=dt), torch.empty(b, t, h, n // 2, dtype=dt)
        with pretend_cuda([scan], sh.sms):
            _, _, _, _, phi_last = scan._scan_fwd(c, bb, la, th, None, None)
            scan._scan_bwd(c, bb, th, phi_last, torch.empty_like(c), torch.empty_like(bb),
                           torch.empty(b, t, h, dtype=torch.float64), None, None)


def _decode(d, n, sh):
    """One new query per head (also with a key mask, as left-padded batches decode),
    then 8 (speculative decoding) with 4 and 8 query heads per kv head: 16 and 32 rows
    per tile."""
    from sisa_kernels import decode
    dt, b, t, h = getattr(torch, sh.dtype), sh.batch, sh.seqlen, sh.heads
    e = torch.empty
    with pretend_cuda([decode], sh.sms):
        for s, hk, mask in ((1, sh.kv_heads, None), (1, sh.kv_heads, torch.ones(b, t, dtype=torch.bool)),
                            (8, max(1, h // 4), None), (8, max(1, h // 8), None)):
            decode.sisa_decode(e(b, s, h, d, dtype=dt), e(b, t, hk, d, dtype=dt), e(b, t, hk, d, dtype=dt),
                               e(b, s, h, n, dtype=dt), e(b, t, h, n, dtype=dt), e(b, t, h, dtype=torch.float64),
                               torch.ones(h),
                               key_mask=mask)


def _augment(d, n, sh):
    from sisa_kernels import augment
    q, k, _, cr, br, g, lam = _attention_inputs(d, n, sh)
    s, c = d ** 0.25 * lam.sqrt(), torch.zeros(sh.batch, sh.heads, dtype=torch.float64)
    qh, kh = augment._augment_fwd(q, k, cr, br, g, s, c, d + n)
    augment._augment_bwd(torch.empty_like(qh), torch.empty_like(kh), cr, br, g, s, c, d, sh.kv_heads)


def _yardstick(d, n, sh):
    q, k, v, *_ = _attention_inputs(d, 16, Shape(sh.batch, sh.seqlen, sh.heads, sh.heads, sh.sms, sh.dtype))
    for stages in YARDSTICK_STAGES:
        fa2_causal_fwd(q, k, v, d ** -0.5, num_stages=stages)


# family -> (launcher calls, uses head dim, uses d_state)
FAMILIES = {
    "attention-fwd": (_attention_fwd, True, True),
    "attention-bwd": (_attention_bwd, True, True),
    "scan": (_scan, False, True),
    "decode": (_decode, True, True),
    "augment": (_augment, True, True),
    "yardstick-fa2": (_yardstick, True, False),
}


def launches_of(family, d, n, sh, autotune=False):
    """The kernel launches ``family``'s launchers make at (d, n), intercepted. autotune:
    with SISA_AUTOTUNE=1 (launches through triton.autotune are recorded as such)."""
    fn = FAMILIES[family][0]
    with _env(SISA_AUTOTUNE="1" if autotune else None), captured_launches() as launches:
        fn(d, n, sh)
    return launches


# ----------------------------------------------------------------------------
# What to compile
# ----------------------------------------------------------------------------

@dataclass
class Task:
    family: str
    kernel: str
    d: int                   # a (head dim, d_state) that makes this launch
    n: int
    kwargs: dict             # constexprs and launch options, as the kernel receives them
    pick: bool = False       # the launcher's default
    tuned: bool = False      # kept by the autotuner's pruner
    head_dims: list = field(default_factory=list)
    d_states: list = field(default_factory=list)
    order: int = 0


def _arg_key(x):
    if isinstance(x, torch.Tensor):
        return ("tensor", str(x.dtype), tuple(x.shape), tuple(x.stride()))
    if isinstance(x, float):
        return "float"
    return repr(x)


def _launch_defaults():
    """Triton's defaults for the launch options (num_warps, num_stages, num_ctas) on this backend."""
    import dataclasses
    from triton.backends.nvidia.compiler import CUDAOptions
    return {f.name: f.default for f in dataclasses.fields(CUDAOptions)
            if f.name in ("num_warps", "num_stages", "num_ctas")}


def _strip(kwargs):
    """Keyword arguments as the kernel receives them, launch options spelled out."""
    return {**_launch_defaults(), **{k: v for k, v in kwargs.items() if k not in ("grid", "warmup") and v is not None}}


def _tuner_configs(launch):
    """The configs ``launch.tuner`` may pick for this call, pruned as Autotuner.run does."""
    tuner = launch.tuner
    if len(tuner.configs) <= 1:
        return list(tuner.configs[:1])
    tuner.nargs = dict(zip(tuner.arg_names, launch.args))
    try:
        return list(tuner.prune_configs(launch.kwargs))
    finally:
        tuner.nargs = None


def plan(dims, states, sh, families=None):
    """Tasks, one per distinct compile: every launch of every family at every (d, n)."""
    tasks, order = {}, 0
    for family, (_, uses_d, uses_n) in FAMILIES.items():
        if families and family not in families:
            continue
        fam_dims = list(YARDSTICK_DIMS) if family == "yardstick-fa2" else list(dims)
        for d in (fam_dims if uses_d else fam_dims[:1]):
            for n in (states if uses_n else states[:1]):
                found = []
                for launch in launches_of(family, d, n, sh):
                    found.append((launch, _strip(launch.kwargs), True, False))
                for launch in launches_of(family, d, n, sh, autotune=True):
                    if launch.tuner is not None:
                        for cfg in _tuner_configs(launch):
                            found.append((launch, {**_strip(launch.kwargs), **_strip(cfg.all_kwargs())}, False, True))
                for launch, kwargs, pick, tuned in found:
                    name = launch.kernel.fn.__name__
                    key = (name, tuple(map(_arg_key, launch.args)),
                           tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
                    if key not in tasks:
                        order += 1
                        tasks[key] = Task(family, name, d, n, kwargs, order=order)
                    task = tasks[key]
                    task.pick |= pick
                    task.tuned |= tuned
                    if d not in task.head_dims and uses_d:
                        task.head_dims.append(d)
                    if n not in task.d_states and uses_n:
                        task.d_states.append(n)
    return list(tasks.values())


# ----------------------------------------------------------------------------
# Compiling and reading one kernel
# ----------------------------------------------------------------------------

_WORKER_SHAPE = None
_ON_DEVICE = False


def _interpreting():
    from triton.runtime.jit import JITFunction
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or not isinstance(_fa2_causal_fwd, JITFunction)


def _worker_init(sh, on_device=False):
    """on_device: compile for this machine's GPU with the real driver (``--device``);
    else make the Hopper stand-in driver active."""
    global _WORKER_SHAPE, _ON_DEVICE
    import warnings
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    from triton import knobs
    from triton.runtime import driver
    if not on_device:
        driver.set_active(HopperStandIn())
    knobs.nvidia.dump_ptxas_log = True            # Triton prints its own ptxas -v log: captured
    _WORKER_SHAPE, _ON_DEVICE = sh, on_device


def _tool(name):
    from triton import knobs
    tool = getattr(knobs.nvidia, name.replace("-", "_"), None)
    if tool is not None and getattr(tool, "path", None):
        return tool.path
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _ptxas_log(ptx):
    """ptxas -v on the PTX with the flags Triton uses for sm_90 (when the cubin came from a cache)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as td:
        src = Path(td, "k.ptx")
        src.write_text(ptx)
        res = subprocess.run([get_ptxas(CAPABILITY).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(CAPABILITY)}", str(src), "-o",
                              str(Path(td, "k.o"))], capture_output=True, text=True)
    return res.stderr + res.stdout


def _sass(cubin):
    with tempfile.TemporaryDirectory() as td:
        path = Path(td, "k.cubin")
        path.write_bytes(cubin)
        return subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True).stdout


def blocks_per_sm(regs, num_warps, smem):
    """(blocks, limiting resource) under the simple model in the module docstring."""
    limits = {"regs": REGS_PER_SM // max(1, regs * 32 * num_warps),
              "smem": SMEM_PER_BLOCK // smem if smem else MAX_BLOCKS_PER_SM,
              "warps": MAX_WARPS_PER_SM // num_warps, "blocks": MAX_BLOCKS_PER_SM}
    if smem > SMEM_PER_BLOCK:
        limits["smem"] = 0
    limit = min(limits, key=lambda k: limits[k])
    return limits[limit], limit, limits


def analyze(compiled, log):
    md = compiled.metadata
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    if not re.search(r"Used \d+ registers", log):
        log = _ptxas_log(ptx)
    m = re.search(r"Used (\d+) registers", log)
    regs = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack, spill_st, spill_ld = map(int, m.groups()) if m else (None, None, None)
    sass = _sass(cubin)
    count = lambda pat, text: len(re.findall(pat, text))  # noqa: E731
    row = dict(regs=regs, spill_stores=spill_st, spill_loads=spill_ld,
               spilled_bytes=None if spill_st is None else spill_st + spill_ld, stack=stack,
               smem=md.shared, num_warps=md.num_warps, num_stages=md.num_stages,
               wgmma=count(r"wgmma\.mma_async", ptx), hgmma=count(r"\bHGMMA\.", sass),
               mma_sync=count(r"\bmma\.sync", ptx), hmma=count(r"\bHMMA\.", sass),
               cp_async=count(r"cp\.async\.(?:ca|cg)\.shared", ptx), ldgsts=count(r"\bLDGSTS", sass),
               tma=count(r"cp\.async\.bulk\.tensor", ptx), utmaldg=count(r"\bUTMALDG", sass),
               stl=count(r"\bSTL\b", sass), ldl=count(r"\bLDL\b", sass))
    if regs is not None:
        row["blocks_per_sm"], row["limit"], limits = blocks_per_sm(regs, md.num_warps, md.shared)
        row["blocks_by"] = limits
    return row


def violations(row):
    v = []
    if row.get("error"):
        return ["error"]
    if row["spilled_bytes"]:
        v.append("spill")
    if row["smem"] > SMEM_PER_BLOCK:
        v.append("smem")
    by = row["blocks_by"]
    others = min(by["smem"], by["warps"], by["blocks"])
    if by["regs"] < TARGET_BLOCKS <= others:
        v.append("occupancy")
    return v


def compile_task(task: Task):
    sh = _WORKER_SHAPE
    t0 = time.perf_counter()
    row = dict(asdict(task), dtype=DTYPE_NAMES.get(sh.dtype, sh.dtype))
    try:
        launch = next(x for x in launches_of(task.family, task.d, task.n, sh) if x.kernel.fn.__name__ == task.kernel)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            compiled = launch.kernel.warmup(*launch.args, grid=(1,), **task.kwargs)
        row.update(analyze(compiled, buf.getvalue()))
        if _ON_DEVICE:                   # what the driver reports once the cubin is loaded
            compiled._init_handles()
            row.update(driver_regs=compiled.n_regs, driver_spills=compiled.n_spills)
        row["error"] = None
    except Exception as e:  # noqa: BLE001  (a failed compile is a row of the report)
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row["violations"] = violations(row)
    return row


# ----------------------------------------------------------------------------
# Presenting
# ----------------------------------------------------------------------------

OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def config_str(row):
    kw = row["kwargs"]
    blocks = " ".join(f"{k[len('BLOCK_'):] or 'B'}{v}" for k, v in kw.items()
                      if k.startswith("BLOCK") and not isinstance(v, bool))
    warps = row.get("num_warps") or kw.get("num_warps", "?")
    stages = row.get("num_stages") or kw.get("num_stages", "?")
    return f"{blocks} w{warps} s{stages}".strip()


def _dims_str(values, every):
    if not values:
        return "-"
    if len(values) > 1 and sorted(values) == sorted(every):
        return "*"
    return ",".join(map(str, sorted(values)))


COLUMNS = ["kernel", "config", "dtype", "d", "n", "regs", "spill B", "smem B", "blk/SM", "wgmma", "cp.async", "TMA",
           "flags"]


def table_cells(row, dims, states):
    flags = ("*" if row["pick"] else "") + ("t" if row["tuned"] else "")
    if row.get("error"):
        return [row["kernel"], config_str(row), row["dtype"], _dims_str(row["head_dims"], dims),
                _dims_str(row["d_states"], states), "-", "-", "-", "-", "-", "-", "-", f"{flags} ERROR"]
    viol = ",".join(row["violations"])
    return [row["kernel"], config_str(row), row["dtype"], _dims_str(row["head_dims"], dims),
            _dims_str(row["d_states"], states), str(row["regs"]), str(row["spilled_bytes"]), str(row["smem"]),
            f"{row['blocks_per_sm']} ({row['limit']})", f"{row['wgmma']}/{row['hgmma']}",
            f"{row['cp_async']}/{row['ldgsts']}", f"{row['tma']}/{row['utmaldg']}",
            (flags + (" " + viol if viol else "")).strip()]


def text_table(rows, dims, states):
    cells = [COLUMNS] + [table_cells(r, dims, states) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


LEGEND = (
    "d / n: head dim / d_state (`*`: the same compile for every value, `-`: not an input of the kernel). "
    "config: block sizes (BLOCK_ prefix dropped), wN = num_warps, sN = num_stages. regs: per thread (ptxas). "
    "spill B: spill stores + loads in bytes. smem B: shared memory per block. blk/SM: "
    "min(65536 // (regs*32*warps), 227 KiB // smem, 64 // warps, 32) and the limiting resource. "
    "wgmma: wgmma.mma_async in PTX / HGMMA in SASS; cp.async: cp.async.{ca,cg}.shared in PTX / LDGSTS in SASS; "
    "TMA: cp.async.bulk.tensor in PTX / UTMALDG in SASS (instruction counts). flags: `*` the launcher's "
    "default pick, `t` kept by its autotuner's pruner (SISA_AUTOTUNE=1); violations: spill (spilled bytes > 0), "
    "smem (> 227 KiB, cannot launch), occupancy (registers allow 1 block/SM where shared memory and warps "
    "allow >= 2).")


def markdown(rows, meta, dims, states):
    modified = f" with {', '.join(meta['git']['modified'])} modified" if meta["git"]["modified"] else ""
    out = [f"# Static sm_90 report ({meta['dtype']})", "",
           f"`{meta['command']}`: {meta['date']}, Triton {meta['triton']}, {meta['ptxas']}, "
           f"target {meta['target']}, shapes b={meta['shape']['batch']} t={meta['shape']['seqlen']} "
           f"h={meta['shape']['heads']} hk={meta['shape']['kv_heads']}, {meta['compiles']} compiles in "
           f"{meta['elapsed_s']:.0f} s on {meta['jobs']} processes ({meta['cpu']}); work tree of commit "
           f"{meta['git']['commit']}" + modified + ".", "", LEGEND, "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(r, dims, states)) + " |")
    out += ["", "## Budget violations (project kernels; the yardstick's flags are in the table only)", ""]
    bad = over_budget(rows)
    if not bad:
        out.append("None.")
    for r in bad:
        out.append(f"- {violation_line(r, dims, states)}")
    return "\n".join(out) + "\n"


def over_budget(rows):
    """Rows of the project's kernels with a violation (the yardstick is a reference, not a budget)."""
    return [r for r in rows if r["violations"] and r["family"] != "yardstick-fa2"]


def violation_line(r, dims, states):
    where = f"{r['kernel']} {config_str(r)} d={_dims_str(r['head_dims'], dims)} n={_dims_str(r['d_states'], states)}"
    if r.get("error"):
        return f"{where}: {r['error']}"
    return (f"{where}: {','.join(r['violations'])} (regs {r['regs']}, spilled {r['spilled_bytes']} B, "
            f"smem {r['smem']} B, {r['blocks_per_sm']} blk/SM by {r['limit']})")


def _sort_key(row):
    fam = list(FAMILIES).index(row["family"])
    return (fam, row["kernel"], min(row["head_dims"] or [0]), min(row["d_states"] or [0]),
            not row["pick"], row["order"])


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def _ints(text):
    return tuple(int(x) for x in text.split(",") if x)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.static", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"head dims {QUICK_DIMS}, d_states {QUICK_STATES}")
    p.add_argument("--dims", type=_ints, default=None, help=f"head dims (default {DIMS})")
    p.add_argument("--states", type=_ints, default=None, help=f"d_states (default {STATES})")
    p.add_argument("--families", default=None, help=f"comma-separated subset of {','.join(FAMILIES)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and markdown")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    p.add_argument("--seqlen", type=int, default=Shape.seqlen)
    p.add_argument("--heads", type=int, default=Shape.heads)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    p.add_argument("--sms", type=int, default=H100_SMS, help="SM count the launch heuristics see")
    p.add_argument("--device", action="store_true",
                   help="on a Hopper GPU: compile with the real driver and also record the registers and "
                        "spills it reports after loading each kernel (the static-vs-measured check)")
    args = p.parse_args(argv)
    args.dims = args.dims or (QUICK_DIMS if args.quick else DIMS)
    args.states = args.states or (QUICK_STATES if args.quick else STATES)
    return args


def _git_state():
    """The commit and the kernel files that differ from it (the report compiles the work tree)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sisa_kernels"], cwd=root,
                               capture_output=True, text=True).stdout.split("\n")
        return dict(commit=head or None, modified=[ln[3:] for ln in dirty if ln.strip()])
    except OSError:
        return dict(commit=None, modified=[])


def main(argv=None):
    args = parse_args(argv)
    if _interpreting():
        print("benchmarks.static: TRITON_INTERPRET=1 in this process; run `python -m benchmarks.static` "
              "without it (the kernels must compile, not be interpreted)", file=sys.stderr)
        return 2
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError as e:
        print(f"benchmarks.static: Triton's NVIDIA backend is missing ({e})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    sh = Shape(seqlen=args.seqlen, heads=args.heads, kv_heads=args.kv_heads or args.heads, sms=args.sms)
    families = set(args.families.split(",")) if args.families else None
    tmp_cache = None
    if not os.environ.get("TRITON_CACHE_DIR"):
        tmp_cache = tempfile.mkdtemp(prefix="sisa-static-triton-")
        os.environ["TRITON_CACHE_DIR"] = tmp_cache
    try:
        tasks = plan(args.dims, args.states, sh, families)
        # Longest first (attention kernels, widest tiles) so the pool ends together.
        cost = lambda t: (t.family.startswith("attention"), max(t.head_dims or [0]) + max(t.d_states or [0]))  # noqa
        tasks.sort(key=cost, reverse=True)
        print(f"benchmarks.static: {len(tasks)} compiles for sm_{CAPABILITY} on {args.jobs} processes",
              file=sys.stderr, flush=True)
        rows = []
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx, initializer=_worker_init,
                                 initargs=(sh, args.device)) as pool:
            futures = [pool.submit(compile_task, t) for t in tasks]
            for i, fut in enumerate(as_completed(futures), 1):
                r = fut.result()
                rows.append(r)
                what = (f"{r['error']}" if r["error"] else
                        f"{r['regs']} regs, {r['spilled_bytes']} B spilled, {r['smem']} B smem, "
                        f"{r['blocks_per_sm']} blk/SM{' ' + ','.join(r['violations']) if r['violations'] else ''}")
                print(f"[{i}/{len(tasks)}] {r['compile_s']:6.1f}s {r['kernel']} {config_str(r)} "
                      f"d={r['head_dims'] or '-'} n={r['d_states'] or '-'}: {what}", file=sys.stderr, flush=True)
    finally:
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)
            os.environ.pop("TRITON_CACHE_DIR", None)
    rows.sort(key=_sort_key)
    elapsed = time.perf_counter() - start
    from triton.backends.nvidia.compiler import get_ptxas_version
    given = argv if argv is not None else sys.argv[1:]
    meta = dict(git=_git_state(), command=" ".join(["python -m benchmarks.static", *given]),
                date=datetime.datetime.now().isoformat(timespec="seconds"), triton=triton.__version__,
                torch=torch.__version__, ptxas=get_ptxas_version(CAPABILITY).strip().splitlines()[-1],
                target=f"cuda sm_{CAPABILITY}a, 32 threads/warp", dtype=DTYPE_NAMES.get(sh.dtype, sh.dtype),
                shape=asdict(sh),
                head_dims=list(args.dims), d_states=list(args.states), quick=args.quick, jobs=args.jobs,
                cpu=platform.processor() or platform.machine(), compiles=len(rows), elapsed_s=round(elapsed, 1),
                budgets=dict(regs_per_sm=REGS_PER_SM, max_regs_per_thread=MAX_REGS_PER_THREAD,
                             smem_per_block=SMEM_PER_BLOCK, max_blocks_per_sm=MAX_BLOCKS_PER_SM,
                             max_warps_per_sm=MAX_WARPS_PER_SM, target_blocks=TARGET_BLOCKS))
    print(text_table(rows, args.dims, args.states))
    bad = over_budget(rows)
    print(f"\n{len(rows)} compiles in {elapsed:.0f} s; {len(bad)} rows of the project's kernels over budget"
          + (":" if bad else "."))
    for r in bad:
        print("  " + violation_line(r, args.dims, args.states))
    if args.device:
        differ = [r for r in rows if not r["error"] and (r.get("driver_regs") != r["regs"]
                                                         or bool(r.get("driver_spills")) != bool(r["spilled_bytes"]))]
        meta["device"] = torch.cuda.get_device_name(0)
        print(f"driver vs ptxas on {meta['device']}: {len(rows) - len(differ)} rows agree, {len(differ)} differ"
              + (":" if differ else "."))
        for r in differ:
            print(f"  {r['kernel']} {config_str(r)}: ptxas {r['regs']} regs / {r['spilled_bytes']} B spilled, "
                  f"driver {r.get('driver_regs')} regs / {r.get('driver_spills')} B local")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sm90_bf16" + ("_quick" if args.quick else "") + ("_device" if args.device else "")
    (args.out / f"{stem}.json").write_text(       # one row per line: small diffs between runs
        '{"meta": ' + json.dumps(meta, default=str) + ',\n "rows": [\n'
        + ",\n".join(json.dumps(r, default=str) for r in rows) + "\n]}\n")
    (args.out / f"{stem}.md").write_text(markdown(rows, meta, args.dims, args.states))
    print(f"wrote {args.out / stem}.json and .md", file=sys.stderr)
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
