"""Compiling one task for its target and reading the compiled kernel.

What is read: registers per thread, spill stores + loads (bytes) and stack frame from
Triton's own ptxas ``-v`` log (ptxas is rerun with the same flags when the kernel
came from Triton's cache); shared memory per block, num_warps, num_stages from the
metadata; tensor-core and async-copy instruction counts from the PTX and from the
SASS (Triton's bundled ``cuobjdump``): wgmma / HGMMA, mma.sync / HMMA, cp.async /
LDGSTS, TMA (cp.async.bulk.tensor / UTMALDG), local stores / loads (STL / LDL).

Blocks per SM (a simple model, documented rather than exact): ``min(regs_per_sm //
(regs * 32 * num_warps), smem_per_sm // smem, max_warps // num_warps, max_blocks)``,
with the target's figures; it ignores the register allocation granularity and the
1 KiB the driver reserves per block, so it can be one block optimistic at a boundary.

A row that spills while ptxas used fewer than 255 registers is compiled once more with
``.maxnreg 255`` in its PTX (``uncapped_regs``, ``uncapped_spilled_bytes``): ptxas
trades registers for occupancy on its own (a 4-warp float32 tile at 128 registers
spilling 16 B needs 246 and spills nothing uncapped), and ``-maxrregcount`` does not
lift that choice, the directive does. Which of the two runs faster needs a GPU.

Budgets (``violations`` of a row): ``spill`` (spilled bytes > 0), ``smem`` (above the
target's opt-in shared memory per block: the kernel cannot launch), ``occupancy``
(registers hold it to one block per SM where shared memory and warps allow two).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import subprocess
import tempfile
import time
from pathlib import Path

import triton

from .lifeline import die_with_parent
from .plan import launches_of
from .standin import StandInDriver
from .targets import DTYPE_NAMES, TARGETS

TARGET_BLOCKS = 2
_WORKER = {}


def worker_init(sh, on_device=False):
    """sh: the report's Shape (its dtype replaced per task). on_device: compile for this
    machine's GPU with the real driver (``--device``); else each task makes its target's
    stand-in driver active."""
    die_with_parent()
    import warnings
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    from triton import knobs
    knobs.nvidia.dump_ptxas_log = True            # Triton prints its own ptxas -v log: captured
    _WORKER.update(shape=sh, on_device=on_device, capability=None)


class _PerTarget(StandInDriver):
    """The stand-in with the capability as the device number: Triton keeps compiled
    kernels per device, and a worker that compiles for two targets must not get the
    first target's kernels back for the second."""

    def get_current_device(self):
        return self.target.arch


def _use_target(target):
    from triton.runtime import driver
    if not _WORKER["on_device"] and _WORKER["capability"] != target.capability:
        driver.set_active(_PerTarget(target.capability))
        _WORKER["capability"] = target.capability


def _tool(name):
    from triton import knobs
    tool = getattr(knobs.nvidia, name.replace("-", "_"), None)
    if tool is not None and getattr(tool, "path", None):
        return tool.path
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _uncapped(ptx, capability):
    """(registers, spilled bytes) of the PTX compiled with ``.maxnreg 255``, or None."""
    ptx = re.sub(r"^\s*\.maxnreg\s+\d+\s*$", "", ptx, flags=re.M)    # a launch's own cap (maxnreg) goes
    capped, found = re.subn(r"(\.(?:reqntid|maxntid)[^\n]*)", r"\1\n.maxnreg 255", ptx, count=1)
    if not found:
        return None
    regs, _, spill_st, spill_ld = _ptxas_figures(_ptxas_log(capped, capability))
    return None if regs is None or spill_st is None else (regs, spill_st + spill_ld)


def _ptxas_figures(log):
    """(registers, stack frame, spill stores, spill loads) from a ptxas -v log (None where absent)."""
    m = re.search(r"Used (\d+) registers", log)
    regs = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (regs, *(map(int, m.groups()) if m else (None, None, None)))


def _ptxas_log(ptx, capability):
    """ptxas -v on the PTX with the flags Triton uses (when the cubin came from a cache)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as td:
        src = Path(td, "k.ptx")
        src.write_text(ptx)
        res = subprocess.run([get_ptxas(capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(capability)}", str(src), "-o",
                              str(Path(td, "k.o"))], capture_output=True, text=True)
    return res.stderr + res.stdout


def _sass(cubin):
    with tempfile.TemporaryDirectory() as td:
        path = Path(td, "k.cubin")
        path.write_bytes(cubin)
        return subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True).stdout


def blocks_per_sm(regs, num_warps, smem, target):
    """(blocks, limiting resource, every limit) under the model in the module docstring."""
    limits = {"regs": target.regs_per_sm // max(1, regs * 32 * num_warps),
              "smem": target.smem_per_sm // smem if smem else target.max_blocks_per_sm,
              "warps": target.max_warps_per_sm // num_warps, "blocks": target.max_blocks_per_sm}
    if smem > target.smem_per_block:
        limits["smem"] = 0
    limit = min(limits, key=lambda k: limits[k])
    return limits[limit], limit, limits


def analyse(compiled, log, target):
    md = compiled.metadata
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    regs, stack, spill_st, spill_ld = _ptxas_figures(log)
    if regs is None:                               # Triton printed no ptxas -v log: run ptxas ourselves
        regs, stack, spill_st, spill_ld = _ptxas_figures(_ptxas_log(ptx, target.capability))
    sass = _sass(cubin)
    count = lambda pat, text: len(re.findall(pat, text))  # noqa: E731
    row = dict(regs=regs, spill_stores=spill_st, spill_loads=spill_ld,
               spilled_bytes=None if spill_st is None else spill_st + spill_ld, stack=stack,
               smem=md.shared, num_warps=md.num_warps, num_stages=md.num_stages,
               wgmma=count(r"wgmma\.mma_async", ptx), hgmma=count(r"\bHGMMA\.", sass),
               mma_sync=count(r"\bmma\.sync", ptx), hmma=count(r"\bHMMA\.", sass),
               tcgen05=count(r"tcgen05\.mma", ptx),
               cp_async=count(r"cp\.async\.(?:ca|cg)\.shared", ptx), ldgsts=count(r"\bLDGSTS", sass),
               tma=count(r"cp\.async\.bulk\.tensor", ptx), utmaldg=count(r"\bUTMALDG", sass),
               stl=count(r"\bSTL\b", sass), ldl=count(r"\bLDL\b", sass))
    if regs is not None:
        row["blocks_per_sm"], row["limit"], limits = blocks_per_sm(regs, md.num_warps, md.shared, target)
        row["blocks_by"] = limits
    if row["spilled_bytes"] and regs is not None and regs < target.max_regs_per_thread:
        row["uncapped_regs"], row["uncapped_spilled_bytes"] = _uncapped(ptx, target.capability) or (None, None)
    return row


def violations(row, target):
    if row.get("error"):
        return ["error"]
    v = []
    if row["spilled_bytes"]:
        v.append("spill")
    if row["smem"] > target.smem_per_block:
        v.append("smem")
    by = row["blocks_by"]
    if by["regs"] < TARGET_BLOCKS <= min(by["smem"], by["warps"], by["blocks"]):
        v.append("occupancy")
    return v


def compile_task(task, arch, dtype):
    """One report row: ``task`` compiled for ``arch`` with ``dtype`` data (errors are rows too)."""
    target = TARGETS[arch]
    sh = dataclasses.replace(_WORKER["shape"], dtype=dtype)
    _use_target(target)
    t0 = time.perf_counter()
    row = dict(task.as_row(), arch=target.arch, dtype=DTYPE_NAMES.get(sh.dtype, sh.dtype))
    try:
        mode, index = task.launch           # the very call that made the task: its arguments' specialisation
        launch = launches_of(task.family, task.d, task.n, sh, target, mode)[index]
        assert launch.kernel.fn.__name__ == task.kernel, (task.kernel, launch.kernel.fn.__name__)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            compiled = launch.kernel.warmup(*launch.args, grid=(1,), **task.kwargs)
        row.update(analyse(compiled, buf.getvalue(), target))
        if _WORKER["on_device"]:                   # what the driver reports once the cubin is loaded
            compiled._init_handles()
            row.update(driver_regs=compiled.n_regs, driver_spills=compiled.n_spills)
        row["error"] = None
    except Exception as e:  # noqa: BLE001  (a failed compile is a row of the report)
        text = str(e).strip()
        row["error"] = f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row["violations"] = violations(row, target)
    return row
