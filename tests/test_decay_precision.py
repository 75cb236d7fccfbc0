"""g's precision after a large total decay, on the reference paths (issue 20, item 2).

One token of log-decay -1e6 or -1e7 (a hard reset) followed by small decays of
1e-3..1e-2 nats per token, float32 inputs: a float32 g is spaced 0.06 (1.0 at 1e7)
there, so g_i - g_j of nearby tokens would be off by that much. Every path must
stay within 1e-4 of the float64 maths (sisa.naive in float64), forward and
gradients: naive, sdpa (the CPU fold of the rotation and the chunked path from the
scan's outputs), the scan continued from a state, the decode cache, and context
parallelism (docs/design.md section 5). The Triton kernels' twin of this file is
tests/test_decay_precision_kernels.py.
"""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sisa
from sisa.cache import LayerCache, cached_attention
from sisa.naive import naive_attention, naive_scan, naive_sisa_attention
from sisa.ops import attention_from_scan

TOL = 1e-4
JUMPS = (-1e6, -1e7)
NAMES = ("q", "k", "v", "C", "B", "log_alpha", "theta", "lam")


def reset_inputs(jump, at, b=1, t=40, h=2, hk=1, d=8, n=8, seed=0):
    """float32 inputs of sisa_attention with log_alpha = -U(1e-3, 1e-2) per token and
    ``jump`` at token ``at``."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    la = -(1e-3 + 9e-3 * torch.rand(b, t, h, generator=gen, dtype=torch.float64))
    la[:, at] = jump
    return {"q": r(b, t, h, d), "k": r(b, t, hk, d), "v": r(b, t, hk, d), "C": r(b, t, h, n) * n ** -0.25,
            "B": r(b, t, h, n) * n ** -0.25, "log_alpha": la.float(), "theta": 0.3 * r(b, t, h, n // 2),
            "lam": torch.rand(h, generator=gen) + 1.0}


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def run(fn, x, dout):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out = fn(*(leaves[k] for k in NAMES))
    out.backward(dout.to(out.dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def check(fn, x, grads=True):
    dout = torch.randn(x["q"].shape, generator=torch.Generator().manual_seed(5))
    ref, ref_g = run(naive_sisa_attention, {k: v.double() for k, v in x.items()}, dout.double())
    out, got = run(fn, x, dout)
    assert out.dtype == torch.float32
    assert err(out, ref) <= TOL, f"out: {err(out, ref):.3g}"
    for k in NAMES if grads else ():
        tol = TOL * (1 + ref_g[k].abs().max().item())
        assert err(got[k], ref_g[k]) <= tol, f"d{k}: {err(got[k], ref_g[k]):.3g} > {tol:.3g}"


@pytest.mark.parametrize("jump", JUMPS)
@pytest.mark.parametrize("at", [0, 13])
@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_sisa_attention(backend, jump, at):
    """The whole op, float32: naive, and sdpa (on a CPU: the rotation folded into the build)."""
    check(lambda *a: sisa.sisa_attention(*a, backend=backend), reset_inputs(jump, at))


@pytest.mark.parametrize("jump", JUMPS)
def test_sdpa_from_scan(jump):
    """The chunked sdpa path from the scan's outputs (a float32 decay budget of 40 nats
    cuts the sequence at the reset) and naive_attention from the same g."""
    x = reset_inputs(jump, 9)

    def from_scan(backend):
        def fn(q, k, v, C, B, la, theta, lam):
            C_rot, B_rot, g, _ = sisa.ssm_importance_scan(C, B, la, theta, backend="naive")
            assert g.dtype == torch.float64
            return attention_from_scan(q, k, v, C_rot, B_rot, g, lam, backend=backend)
        return fn
    for backend in ("sdpa", "naive"):
        check(from_scan(backend), x)


@pytest.mark.parametrize("jump", JUMPS)
def test_scan_continued_from_state(jump):
    """A scan continued from (g_last, phi_last) equals the whole scan in float64."""
    x = reset_inputs(jump, 3)
    C, B, la, th = x["C"], x["B"], x["log_alpha"], x["theta"]
    _, _, g_ref, _ = naive_scan(C.double(), B.double(), la.double(), th.double())
    _, _, g1, state = sisa.ssm_importance_scan(C[:, :10], B[:, :10], la[:, :10], th[:, :10], backend="naive")
    _, _, g2, _ = sisa.ssm_importance_scan(C[:, 10:], B[:, 10:], la[:, 10:], th[:, 10:], backend="naive",
                                           initial_state=state)
    g = torch.cat((g1, g2), 1)
    assert g.dtype == state[0].dtype == torch.float64
    assert err(g[:, 1:] - g[:, :-1], la[:, 1:]) <= 1e-8


@pytest.mark.parametrize("jump", JUMPS)
@pytest.mark.parametrize("masked", [False, True])
def test_decode_cache(jump, masked):
    """Token-by-token cached decoding (the CPU's widened-key SDPA over the cache, or the
    masked explicit score) after a reset, against float64 attention over the whole prefix."""
    x = reset_inputs(jump, 6, t=24)
    C_rot, B_rot, g, _ = naive_scan(x["C"].double(), x["B"].double(), x["log_alpha"].double(),
                                    x["theta"].double())
    C_rot, B_rot = C_rot.float(), B_rot.float()
    cache = LayerCache()
    worst = 0.0
    for T in range(1, 25):
        sl = slice(T - 1, T)
        past = cache.append(k=x["k"][:, sl], v=x["v"][:, sl], B_rot=B_rot[:, sl], g=g[:, sl])
        mask = torch.ones(1, T, dtype=torch.bool) if masked else None
        with torch.no_grad():
            out = cached_attention(x["q"][:, sl], past["k"], past["v"], C_rot[:, sl], past["B_rot"], past["g"],
                                   x["lam"], cache=cache, key_mask=mask)
        ref = naive_attention(x["q"][:, sl].double(), past["k"].double(), past["v"].double(),
                              C_rot[:, sl].double(), past["B_rot"].double(), past["g"], x["lam"].double())
        worst = max(worst, err(out, ref))
    assert worst <= TOL, f"{worst:.3g}"


def _cp_worker(rank, world, path):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        from sisa.distributed import context_parallel_attention, shard_sequence, unshard_sequence
        for jump in JUMPS:
            x = reset_inputs(jump, 11, t=24)            # the reset inside rank 0's first chunk
            dout = torch.randn(x["q"].shape, generator=torch.Generator().manual_seed(5))
            ref, _ = run(naive_sisa_attention, {k: v.double() for k, v in x.items()}, dout.double())
            for backend in ("naive", "sdpa"):
                shards = {k: v if k == "lam" else shard_sequence(v) for k, v in x.items()}
                out = context_parallel_attention(*(shards[k] for k in NAMES), backend=backend)
                e = err(unshard_sequence(out), ref)
                assert e <= TOL, (jump, backend, e)
    finally:
        dist.destroy_process_group()


def test_context_parallel():
    """Context parallelism over 2 gloo ranks: the chunk totals and their prefix are
    all-gathered in float64, so a reset on one rank leaves the others' g exact."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_cp_worker, args=(2, os.path.join(tmp, "rendezvous")), nprocs=2, join=True)
