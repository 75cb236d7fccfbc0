"""SISAModel under DDP and FSDP2 (torch.distributed.fsdp.fully_shard), two gloo
processes on the CPU: the loss and every gradient equal one process training on the
whole batch (float32: to rounding; bf16 mixed precision: to bf16's error), and
lambda_raw stays a float32 parameter."""
import gc
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def tiny_model():
    import sisa
    torch.manual_seed(0)
    cfg = sisa.SISAConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=48,
                          n_kv_heads=2, backend="sdpa")
    return sisa.SISAModel(cfg)


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (4, 24), generator=gen)


def loss_of(model, ids):
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())


def single_process_grads():
    model = tiny_model()
    loss = loss_of(model, batch())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def worker(rank, world, path, mode):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        check(rank, world, mode)
        gc.collect()                   # DDP / FSDP state goes before its process group does
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check(rank, world, mode):
    """This rank's loss and gradients under ``mode`` against one process's."""
    ref_loss, ref_grads = single_process_grads()
    model = tiny_model()
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp_policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                     if mode == "fsdp-bf16" else MixedPrecisionPolicy())
        for block in model.layers:
            fully_shard(block, mp_policy=mp_policy)
        fully_shard(model, mp_policy=mp_policy)
    ids = batch().chunk(world)[rank]                    # each rank its share of the batch
    loss = loss_of(model, ids)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach().float())
    inner = model.module if mode == "ddp" else model
    tol = 2e-2 if mode == "fsdp-bf16" else 1e-5
    assert abs(float(torch.stack(losses).mean()) - float(ref_loss)) <= tol * float(ref_loss), mode
    for name, p in inner.named_parameters():
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        ref = ref_grads[name.replace("module.", "")]
        err = float((grad.float() - ref).abs().max())
        scale = float(ref.abs().max()) + 1e-12
        assert err <= tol * scale + 1e-7, (mode, name, err, scale)
        if name.endswith("lambda_raw"):
            assert p.dtype == torch.float32, (mode, p.dtype)


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp-bf16"])
def test_sharded_training_equals_one_process(mode):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "rendezvous"), mode), nprocs=2, join=True)


def grid_worker(rank, world, path):
    """FSDP2 over the 'dp' dimension of a 2 x 2 DeviceMesh, context parallelism over 'cp':
    each dp rank trains one batch row, sharded over its cp pair; the gradients, reduced
    by FSDP over dp and summed over cp, equal one process's on the whole batch."""
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from sisa.distributed import shard_sequence
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "cp"))
        cp_group = mesh["cp"].get_group()
        ids = batch()[:2, :20]                               # one row per dp rank; 20 = 5 x 2 x cp size
        weights = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(5))
        ref = tiny_model()
        (ref(ids) * weights).sum().backward()
        model = tiny_model()
        for block in model.layers:
            fully_shard(block, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
        row = mesh["dp"].get_local_rank()
        mine = model(shard_sequence(ids[row:row + 1], group=cp_group), cp_group=cp_group)
        loss = (mine * shard_sequence(weights[row:row + 1], group=cp_group)).sum() * 2   # FSDP averages over dp
        loss.backward()
        for (name, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
            local = p.grad.to_local()
            dist.all_reduce(local, group=cp_group)           # context-parallel ranks hold partial sums
            grad = p.grad.full_tensor()
            assert (grad - r.grad).abs().max() <= 1e-5 * (1 + r.grad.abs().max()), name
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp_by_context_parallel_grid():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(grid_worker, args=(4, os.path.join(tmp, "rendezvous")), nprocs=4, join=True)
