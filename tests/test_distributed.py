"""Context parallelism (sisa.distributed) on the CPU: W spawned processes over gloo,
each holding a shard; the gathered output and all eight gradients equal the float64
single-process sisa_attention. World sizes 2, 3 and 4, both layouts, GQA, a total
decay past 100 nats, packed documents, and the bad inputs that must raise on every
rank instead of hanging."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NAMES = ("q", "k", "v", "C", "B", "log_alpha", "theta", "lam")


def full_inputs(t, h=4, hk=2, d=8, n=4, decay=5.0, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)        # noqa: E731
    x = {"q": r(1, t, h, d), "k": r(1, t, hk, d), "v": r(1, t, hk, d), "C": r(1, t, h, n), "B": r(1, t, h, n),
         "log_alpha": -decay * torch.rand(1, t, h, generator=gen, dtype=torch.float64),
         "theta": 0.3 * r(1, t, h, n // 2), "lam": 0.3 + torch.rand(h, generator=gen, dtype=torch.float64)}
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    return {k: v.to(sd if k in ("log_alpha", "lam") else dtype) for k, v in x.items()}


def check_against_single(cp, x, layout, backend, tol, cu=None):
    """Shard x, run context parallel attention with grads, gather, compare with float64."""
    import sisa
    from sisa.distributed import context_parallel_attention, shard_sequence, unshard_sequence
    ref_in = {k: v.detach().double().clone().requires_grad_() for k, v in x.items()}
    ref = sisa.sisa_attention(*(ref_in[k] for k in NAMES), backend="naive", cu_seqlens=cu)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref.backward(dout)
    shards = {k: (v if k == "lam" else shard_sequence(v, layout=layout)).detach().requires_grad_()
              for k, v in x.items()}
    out = cp(*(shards[k] for k in NAMES), layout=layout, backend=backend, cu_seqlens=cu)
    out.backward(shard_sequence(dout, layout=layout).to(out.dtype))
    with torch.no_grad():
        full_out = unshard_sequence(out, layout=layout)
        assert (full_out.double() - ref).abs().max() <= tol, (layout, backend, "output")
        for k in NAMES:
            grad = shards[k].grad if k == "lam" else unshard_sequence(shards[k].grad, layout=layout)
            if k == "lam":
                dist.all_reduce(grad)                  # each rank holds its shard's share of dlam
            err = (grad.double() - ref_in[k].grad).abs().max()
            assert err <= tol * max(1.0, ref_in[k].grad.abs().max()), (layout, backend, "d" + k, float(err))
    return cp


def expect_error(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def check_model(rank):
    """SISAModel (and its Transformer baseline) on id shards: logits are the shards of
    the whole sequence's logits, and the parameter gradients summed over ranks equal
    the whole sequence's (packed documents too)."""
    import sisa
    from sisa.distributed import shard_sequence
    for use_ssm in (True, False):
        torch.manual_seed(0)
        cfg = sisa.SISAConfig(vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_state=4,
                              d_ff=40, use_ssm=use_ssm, backend="sdpa")
        model = sisa.SISAModel(cfg).double()
        ids = torch.randint(0, 50, (1, 24), generator=torch.Generator().manual_seed(3))
        weights = torch.randn(1, 24, 50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        for cu in (None, torch.tensor([0, 7, 24], dtype=torch.int32)):
            model.zero_grad()
            full = model(ids, cu_seqlens=cu)
            (full * weights).sum().backward()
            ref = {n: p.grad.clone() for n, p in model.named_parameters()}
            model.zero_grad()
            mine = model(shard_sequence(ids), cu_seqlens=cu, cp_group=dist.group.WORLD)
            assert (mine - shard_sequence(full)).abs().max() < 1e-10, (use_ssm, cu)
            (mine * shard_sequence(weights)).sum().backward()
            for name, p in model.named_parameters():
                grad = p.grad.clone()
                dist.all_reduce(grad)
                assert (grad - ref[name]).abs().max() < 1e-10, (use_ssm, cu, name)


def worker(rank, world, path):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        from sisa.distributed import context_parallel_attention as cp, shard_sequence
        t = 4 * world * 3                                          # 2W zigzag chunks of 6
        x = full_inputs(t, decay=10.0)                             # total decay ~ 5 t > 100 nats
        assert float(-x["log_alpha"].sum(1).min()) > 100
        for layout in ("zigzag", "contiguous"):
            for backend in ("naive", "sdpa"):
                check_against_single(cp, x, layout, backend, tol=1e-9)
        check_against_single(cp, full_inputs(t, dtype=torch.float32, decay=0.3), "zigzag", "auto", tol=2e-4)
        if world == 2:                                             # the fused kernels, interpreted on a CPU
            check_against_single(cp, full_inputs(t, dtype=torch.float32, decay=2.0), "zigzag", "triton", tol=2e-4)
        if world == 2:                                             # packed documents
            cu = torch.tensor([0, 5, 16, 24], dtype=torch.int32)
            check_against_single(cp, full_inputs(24, decay=1.0), "zigzag", "sdpa", tol=1e-9, cu=cu)
            check_against_single(cp, full_inputs(24, decay=1.0), "contiguous", "naive", tol=1e-9, cu=cu)
        if world == 2:
            check_model(rank)
        # A group of size 1 is the single-device op.
        singles = [dist.new_group([r]) for r in range(world)]
        import sisa
        y = full_inputs(10)
        one = cp(*(y[k] for k in NAMES), group=singles[rank])
        assert torch.equal(one, sisa.sisa_attention(*(y[k] for k in NAMES)))
        # Bad input: a clear ValueError on every rank, never a hang.
        expect_error(lambda: shard_sequence(torch.zeros(1, 2 * world + 1, 2)), "divisible by")
        bad = {k: (v if k == "lam" else shard_sequence(v)) for k, v in x.items()}
        if rank == 0:                                              # rank 0 alone has a shorter shard
            bad = {k: (v if k == "lam" else v[:, :-2]) for k, v in bad.items()}
        expect_error(lambda: cp(*(bad[k] for k in NAMES)), "ranks disagree on local sequence length")
        good = {k: (v if k == "lam" else shard_sequence(v)) for k, v in x.items()}
        expect_error(lambda: cp(*(good[k] for k in NAMES), layout="zigzag" if rank else "contiguous"),
                     "ranks disagree on layout")
        expect_error(lambda: cp(*(good[k] for k in NAMES), layout="ring"), "layout must be one of")
        expect_error(lambda: cp(*(good[k] for k in NAMES), backend="flash"), "backend must be one of")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_context_parallel_equals_single_process(world):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(world, os.path.join(tmp, "rendezvous")), nprocs=world, join=True)


def test_needs_a_process_group():
    import sisa.distributed as sd
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        sd.shard_sequence(torch.zeros(1, 4))
