"""Context parallelism: ranks that disagree on a scalar that changes the result
(softmax_scale, lam's values, the backend, cu_seqlens) mixed silently; now every
rank raises the same ValueError from one small all-gather (issue 20 item 13).
Two spawned processes over gloo on the CPU."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_distributed import NAMES, expect_error, full_inputs


def worker(rank, world, path):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        from sisa.distributed import context_parallel_attention as cp, shard_sequence
        x = {k: (v if k == "lam" else shard_sequence(v)) for k, v in full_inputs(16, decay=0.5).items()}
        args = [x[k] for k in NAMES]
        expect_error(lambda: cp(*args, softmax_scale=0.3 + 0.1 * rank), "ranks disagree on softmax_scale")
        expect_error(lambda: cp(*args, softmax_scale=None if rank else 8 ** -0.5 * (1 + 1e-15)),
                     "ranks disagree on softmax_scale")
        lam = x["lam"].clone()
        lam[1] += 1e-12 * rank
        expect_error(lambda: cp(*args[:-1], lam), r"ranks disagree on lam")
        expect_error(lambda: cp(*args[:-1], x["lam"].flip(0) if rank else x["lam"]), r"ranks disagree on lam")
        expect_error(lambda: cp(*args, backend="naive" if rank else "sdpa"), "ranks disagree on backend")
        ones = {k: (v[:1] if k != "lam" else v) for k, v in x.items()}
        cu = torch.tensor([0, 5, 16] if rank else [0, 6, 16], dtype=torch.int32)
        expect_error(lambda: cp(*(ones[k] for k in NAMES), cu_seqlens=cu), "ranks disagree on cu_seqlens")
        expect_error(lambda: cp(*(ones[k] for k in NAMES), cu_seqlens=cu.to("meta")), "cu_seqlens is on meta")
        same = cp(*args, softmax_scale=0.3)                         # agreeing ranks still run
        assert same.shape == x["q"].shape and torch.isfinite(same).all()
    finally:
        dist.destroy_process_group()


def test_ranks_must_agree_on_result_changing_scalars():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "rendezvous")), nprocs=2, join=True)
