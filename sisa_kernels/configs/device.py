"""Which tile-table family a GPU gets: read once per device, cached.

    query(device) -> DeviceInfo(name, capability (major, minor), smem_per_block)
    family_of(device) -> "sm80" | "sm86" | "sm90" | "sm100" | "sm120"

``query`` is the one place that asks the driver (tests and the static report stand in
for it); ``family_of`` caches its answer per device, so a launch makes no driver call
and no host sync after the first. A capability the tables do not list maps to the
nearest family by capability among those whose shared-memory limit (the one their
tables were compiled against) fits the device's opt-in limit; below every family's
limit, the smallest family (its later configs are the smallest tiles, and a launch
that still fails falls through them, see ``configs.launch``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KIB = 1024

# family -> (capabilities it was measured for, shared memory per block its tables fit)
FAMILIES = {
    "sm80": ((80,), 163 * KIB),              # A100, A800, A30
    "sm86": ((86, 89), 99 * KIB),            # RTX 30xx / 40xx, A6000, L4, L40S
    "sm90": ((90,), 227 * KIB),              # H100, H200
    "sm100": ((100, 103), 227 * KIB),        # B200, GB200, B300
    "sm120": ((120, 121), 99 * KIB),         # RTX 50xx, RTX PRO 6000
}


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    capability: tuple[int, int]
    smem_per_block: int          # the opt-in maximum per block, bytes


def query(device: torch.device) -> DeviceInfo:
    """What the driver says about ``device`` (a CUDA device)."""
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or getattr(props, "shared_memory_per_block", 0)
    return DeviceInfo(props.name, (props.major, props.minor), int(smem))


def family_for(capability: tuple[int, int], smem_per_block: int) -> str:
    """The family for a (major, minor) capability and opt-in shared memory per block."""
    cc = 10 * capability[0] + capability[1]
    for fam, (ccs, limit) in FAMILIES.items():
        if cc in ccs and limit <= smem_per_block:
            return fam
    fits = [fam for fam, (_, limit) in FAMILIES.items() if limit <= smem_per_block]
    if not fits:
        return min(FAMILIES, key=lambda f: (FAMILIES[f][1], -max(FAMILIES[f][0])))
    # nearest capability; on a tie the older family (its tiles ask for less)
    return min(fits, key=lambda f: min((abs(cc - c), c) for c in FAMILIES[f][0]))


_CACHE: dict = {}


def device_key(device) -> tuple:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device.type, device.index


def info_of(device) -> DeviceInfo:
    """``query(device)``, once per device."""
    key = device_key(device)
    if key not in _CACHE:
        _CACHE[key] = query(torch.device(*key) if key[1] is not None else torch.device(key[0]))
    return _CACHE[key]


def family_of(device) -> str:
    info = info_of(device)
    return family_for(info.capability, info.smem_per_block)


def clear_cache() -> None:
    """Forget every device's answer (tests that stand in for ``query``)."""
    _CACHE.clear()
