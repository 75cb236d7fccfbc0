"""The GPU targets the static report compiles for, and their per-block limits.

A target is what ``triton.compile`` needs (the capability) plus what decides whether
a compiled kernel launches and how many blocks fit on an SM: registers (255 per
thread, 64K per SM on every listed arch), shared memory per block (the opt-in
maximum a kernel may ask for) and per SM, warps and blocks per SM, and the SM count
the launchers' heuristics (scan pair blocks, decode splits) see. Figures from
NVIDIA's CUDA C Programming Guide, "Features and Technical Specifications", for one
representative GPU per arch.

``family`` is the tile table the launchers use on that arch
(``sisa_kernels.configs.family_for``): sm_86 and sm_89 share one (99 KiB, mma.sync).
"""
from __future__ import annotations

from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class Target:
    arch: str                  # "sm_90"
    capability: int            # 90
    gpu: str                   # a representative GPU
    smem_per_block: int        # opt-in maximum, bytes
    smem_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    sms: int                   # what the launch heuristics see
    family: str                # its tile tables (sisa_kernels.configs.device.family_for)
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255

    @property
    def stem(self) -> str:
        return self.arch.replace("_", "")

    @property
    def major_minor(self) -> tuple[int, int]:
        return self.capability // 10, self.capability % 10


TARGETS = {t.arch: t for t in (
    Target("sm_80", 80, "A100", 163 * KIB, 164 * KIB, 64, 32, 108, "sm80"),
    Target("sm_86", 86, "RTX A6000", 99 * KIB, 100 * KIB, 48, 16, 84, "sm86"),
    Target("sm_89", 89, "L40S", 99 * KIB, 100 * KIB, 48, 24, 142, "sm86"),
    Target("sm_90", 90, "H100 SXM", 227 * KIB, 228 * KIB, 64, 32, 132, "sm90"),
    Target("sm_100", 100, "B200", 227 * KIB, 228 * KIB, 64, 32, 148, "sm100"),
    Target("sm_120", 120, "RTX 5090", 99 * KIB, 100 * KIB, 48, 32, 170, "sm120"),
)}
ARCHES = tuple(TARGETS)

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
