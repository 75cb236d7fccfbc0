"""Packed variable-length batches: ``cu_seqlens`` (int32, (n_seqs + 1,)).

Sequence s of a packed (1, total, ...) input occupies rows
[cu_seqlens[s], cu_seqlens[s + 1]); g and Phi restart at each start and no token
attends across a boundary.
"""
from __future__ import annotations

import torch


def check_cu_seqlens(cu_seqlens, total: int, batch: int, values: bool = True,
                     device=None) -> list[tuple[int, int]] | None:
    """Validate ``cu_seqlens`` and return the (start, end) pairs (one host sync); with
    values=False only its type, dtype, shape, device (the inputs', when given) and the
    batch (no sync; returns None)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D with n_seqs + 1 entries, got shape {tuple(cu_seqlens.shape)}")
    if device is not None and cu_seqlens.device != torch.device(device):
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but the inputs are on {device}; "
                         "put it on the inputs' device")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the inputs must be packed into batch 1, got batch {batch}")
    if not values:
        return None
    cu = cu_seqlens.tolist()
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cu[0]}")
    if any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu}")
    if cu[-1] != total:
        raise ValueError(f"cu_seqlens must end at the packed length {total}, got {cu[-1]}")
    return list(zip(cu[:-1], cu[1:]))


def split_sequences(x: torch.Tensor, segments, dim: int = 1) -> tuple[torch.Tensor, ...]:
    """x's packed sequences along ``dim`` as views, by one split: its backward is one
    concatenation, not a zero-filled full-size gradient per slice."""
    return x.split([b - a for a, b in segments], dim=dim)


def positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of every packed token inside its own sequence: (total,) int64."""
    idx = torch.arange(total, device=cu_seqlens.device)
    starts = cu_seqlens.long()[torch.searchsorted(cu_seqlens.long(), idx, right=True) - 1]
    return idx - starts
