"""What the report compiles: the project's launchers called on CPU tensors of
realistic shapes, their kernel launches intercepted, one task per distinct compile.

Which configs: for each kernel, the launch the launcher makes by default (the table's
pick, marked ``pick``), plus, where the launcher can route through ``triton.autotune``
(``SISA_AUTOTUNE=1``), every config its pruner keeps, applied exactly as
``Autotuner.run`` does. Nothing is listed here: when the tables change the report
follows. The launchers see the target through ``standin.target_standin``.

``INPUT_DTYPES`` is the one place that says what dtype each non-data tensor the
launchers receive has (the data tensors q, k, v, C, B take the report's dtype).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import torch

from .standin import captured_launches, env, target_standin
from .yardstick import fa2_causal_fwd

# Tensors besides the data: g (cumulative log-decay, float64 at every path) and lam as
# the scan / layer hand them to the attention, decode and augment launchers; the
# scan's dg gradient; the augment epilogue's per-(batch, head) decay offset.
INPUT_DTYPES = dict(g=torch.float64, lam=torch.float32, scan_dg=torch.float64, augment_offset=torch.float64)
DIMS, STATES = (64, 96, 128, 256), (16, 64, 128)
QUICK_DIMS, QUICK_STATES = (64, 128), (16, 64)
YARDSTICK_DIMS, YARDSTICK_STAGES = (64, 128), (2, 3)


@dataclass(frozen=True)
class Shape:
    batch: int = 1
    seqlen: int = 4096
    heads: int = 8
    kv_heads: int = 8
    dtype: str = "bfloat16"


def _attention_inputs(d, n, sh):
    dt = getattr(torch, sh.dtype)
    b, t, h, hk = sh.batch, sh.seqlen, sh.heads, sh.kv_heads
    e = torch.empty
    return (e(b, t, h, d, dtype=dt), e(b, t, hk, d, dtype=dt), e(b, t, hk, d, dtype=dt),
            e(b, t, h, n, dtype=dt), e(b, t, h, n, dtype=dt), e(b, t, h, dtype=INPUT_DTYPES["g"]),
            torch.ones(h, dtype=INPUT_DTYPES["lam"]))


def _attention_fwd(d, n, sh, target):
    from sisa_kernels import attention
    with target_standin(target):
        attention.sisa_attn_fwd(*_attention_inputs(d, n, sh), d ** -0.5)


def _attention_bwd(d, n, sh, target):
    from sisa_kernels import attention_bwd
    q, k, v, cr, br, g, lam = _attention_inputs(d, n, sh)
    out, dout = torch.empty_like(q), torch.empty_like(q)
    lse = torch.empty(sh.batch, sh.heads, sh.seqlen, dtype=torch.float32)
    with target_standin(target):
        attention_bwd.sisa_attn_bwd(dout, q, k, v, cr, br, g, lam, out, lse, d ** -0.5)


def _scan(d, n, sh, target):
    """The report's batch, then a batch of 64 (more (batch, head) programs: the launcher
    widens the block of angle pairs each one carries)."""
    from sisa_kernels import scan
    dt, t, h = getattr(torch, sh.dtype), sh.seqlen, sh.heads
    for b in (sh.batch, 64):
        c, bb = torch.empty(b, t, h, n, dtype=dt), torch.empty(b, t, h, n, dtype=dt)
        la, th = torch.empty(b, t, h, dtype=dt), torch.empty(b, t, h, n // 2, dtype=dt)
        with target_standin(target, [scan]):
            _, _, _, _, phi_last = scan._scan_fwd(c, bb, la, th, None, None)
            scan._scan_bwd(c, bb, th, phi_last, torch.empty_like(c), torch.empty_like(bb),
                           torch.empty(b, t, h, dtype=INPUT_DTYPES["scan_dg"]), None, None)


def _decode(d, n, sh, target):
    """One new query per head (also with a key mask, as left-padded batches decode),
    then 8 (speculative decoding) with 4 and 8 query heads per kv head: 16 and 32 rows
    per tile."""
    from sisa_kernels import decode
    dt, b, t, h = getattr(torch, sh.dtype), sh.batch, sh.seqlen, sh.heads
    e = torch.empty
    with target_standin(target, [decode]):
        for s, hk, mask in ((1, sh.kv_heads, None), (1, sh.kv_heads, torch.ones(b, t, dtype=torch.bool)),
                            (8, max(1, h // 4), None), (8, max(1, h // 8), None)):
            decode.sisa_decode(e(b, s, h, d, dtype=dt), e(b, t, hk, d, dtype=dt), e(b, t, hk, d, dtype=dt),
                               e(b, s, h, n, dtype=dt), e(b, t, h, n, dtype=dt), e(b, t, h, dtype=INPUT_DTYPES["g"]),
                               torch.ones(h, dtype=INPUT_DTYPES["lam"]), key_mask=mask)


def _augment(d, n, sh, target):
    from sisa_kernels import augment
    q, k, _, cr, br, g, lam = _attention_inputs(d, n, sh)
    s, c = d ** 0.25 * lam.sqrt(), torch.zeros(sh.batch, sh.heads, dtype=INPUT_DTYPES["augment_offset"])
    with target_standin(target):
        qh, kh = augment._augment_fwd(q, k, cr, br, g, s, c, d + n)
        augment._augment_bwd(torch.empty_like(qh), torch.empty_like(kh), cr, br, g, s, c, d, sh.kv_heads)


def _yardstick(d, n, sh, target):
    q, k, v, *_ = _attention_inputs(d, 16, dataclasses.replace(sh, kv_heads=sh.heads))
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


def launches_of(family, d, n, sh, target, mode="pick"):
    """The kernel launches ``family``'s launchers make at (d, n) on ``target``,
    intercepted. mode "pick": the launch each makes; "entries": one per entry of the
    family table the launcher's safety net may fall back to; "autotune": with
    SISA_AUTOTUNE=1 (launches through triton.autotune are recorded as such)."""
    from sisa_kernels.configs import launch_module as configs_launch
    fn = FAMILIES[family][0]
    with env(SISA_AUTOTUNE="1" if mode == "autotune" else None, TRITON_INTERPRET=None), \
            captured_launches() as launches:
        configs_launch.EVERY_ENTRY = mode == "entries"
        try:
            fn(d, n, sh, target)
        finally:
            configs_launch.EVERY_ENTRY = False
    return launches


@dataclass
class Task:
    family: str
    kernel: str
    d: int                   # a (head dim, d_state) that makes this launch
    n: int
    kwargs: dict             # constexprs and launch options, as the kernel receives them
    pick: bool = False       # the launcher's default
    tuned: bool = False      # an entry of the table (the safety net's and the autotuner's choices)
    head_dims: list = field(default_factory=list)
    d_states: list = field(default_factory=list)
    order: int = 0
    launch: tuple = ("pick", 0)   # (mode, index) in launches_of(family, d, n, ...): the call it compiles

    def as_row(self) -> dict:
        return asdict(self)


def _arg_key(x):
    if isinstance(x, torch.Tensor):
        return ("tensor", str(x.dtype), tuple(x.shape), tuple(x.stride()))
    if isinstance(x, float):
        return "float"
    return repr(x)


def _launch_defaults():
    """Triton's defaults for the launch options (num_warps, num_stages, num_ctas) on this backend."""
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


def plan(dims, states, sh, target, families=None):
    """Tasks, one per distinct compile: every launch of every family at every (d, n)."""
    tasks, order = {}, 0
    for family, (_, uses_d, uses_n) in FAMILIES.items():
        if families and family not in families:
            continue
        fam_dims = list(YARDSTICK_DIMS) if family == "yardstick-fa2" else list(dims)
        for d in (fam_dims if uses_d else fam_dims[:1]):
            for n in (states if uses_n else states[:1]):
                found = [(launch, _strip(launch.kwargs), True, False, ("pick", i))
                         for i, launch in enumerate(launches_of(family, d, n, sh, target))]
                found += [(launch, _strip(launch.kwargs), False, True, ("entries", i))
                          for i, launch in enumerate(launches_of(family, d, n, sh, target, "entries"))]
                for i, launch in enumerate(launches_of(family, d, n, sh, target, "autotune")):
                    if launch.tuner is not None:
                        with target_standin(target):
                            cfgs = _tuner_configs(launch)
                        found += [(launch, {**_strip(launch.kwargs), **_strip(c.all_kwargs())}, False, True,
                                   ("autotune", i)) for c in cfgs]
                for launch, kwargs, pick, tuned, source in found:
                    name = launch.kernel.fn.__name__
                    key = (name, tuple(map(_arg_key, launch.args)),
                           tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
                    if key not in tasks:
                        order += 1
                        tasks[key] = Task(family, name, d, n, kwargs, order=order, launch=source)
                    task = tasks[key]
                    task.pick |= pick
                    task.tuned |= tuned
                    if d not in task.head_dims and uses_d:
                        task.head_dims.append(d)
                    if n not in task.d_states and uses_n:
                        task.d_states.append(n)
    return list(tasks.values())
