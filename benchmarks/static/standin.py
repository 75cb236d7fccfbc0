"""Compiling for a GPU target without one: a stand-in Triton driver, launches
intercepted instead of run, and device queries answered as that target would.

``target_standin(target)`` is everything a launcher needs to believe it runs on the
target: Triton's active driver reports its capability (so ``kernel.warmup`` compiles
for it), the launchers' own device query (``sisa_kernels.configs.device.query``)
reports its name, capability and shared memory (so the launchers pick that family's
tables), and helpers of the kernel modules that take a ``device`` see a CUDA device
with the target's SM count. The tensors stay on the CPU.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import types
from dataclasses import dataclass

import torch


class StandInDriver:
    """A Triton driver for compiling only: the target's capability, device 0, stream 0."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget
        import triton.backends.nvidia.compiler  # noqa: F401  (the NVIDIA backend must be there)
        self.target = GPUTarget("cuda", capability, 32)

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


def jit_fn(fn):
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
        launches.append(Launch(jit_fn(self.fn), self, args, kwargs))

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
def target_standin(target, modules=()):
    """The launchers see ``target`` (see the module docstring) while inside."""
    from sisa_kernels.configs import device as dev
    props = types.SimpleNamespace(multi_processor_count=target.sms, name=f"{target.gpu} (static stand-in)",
                                  major=target.major_minor[0], minor=target.major_minor[1],
                                  shared_memory_per_block_optin=target.smem_per_block, total_memory=80 * 2**30)
    info = dev.DeviceInfo(props.name, target.major_minor, target.smem_per_block)
    saved = [(torch.cuda, "get_device_properties", torch.cuda.get_device_properties), (dev, "query", dev.query)]
    torch.cuda.get_device_properties = lambda device=None: props
    dev.query = lambda device: info
    dev.clear_cache()
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
        dev.clear_cache()


@contextlib.contextmanager
def env(**values):
    """Environment variables set (None: removed) while inside."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
