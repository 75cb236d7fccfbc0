"""Cached decoding equals full recomputation; packed sequences equal a per-sequence loop."""
import pytest
import torch

import sisa
from sisa.cache import LayerCache
from sisa.testing import Case, make_inputs

from conftest import DEVICE

BACKENDS = sisa.available_backends(DEVICE)
NAMES = ("q", "k", "v", "C", "B", "log_alpha", "theta", "lam")


def tiny_model(use_ssm=True, dtype=torch.float64, backend="auto"):
    torch.manual_seed(0)
    cfg = sisa.SISAConfig(vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_state=8,
                          d_ff=48, use_ssm=use_ssm, backend=backend)
    model = sisa.SISAModel(cfg).to(DEVICE, dtype)
    if use_ssm:  # strong decays and a large lam so the SSM term decides the output
        for block in model.layers:
            torch.nn.init.constant_(block.attn.alpha_proj.bias, 0.5)
            torch.nn.init.constant_(block.attn.lambda_raw, 1.0)
            torch.nn.init.normal_(block.attn.W_C.weight, std=0.5)
            torch.nn.init.normal_(block.attn.W_B.weight, std=0.5)
    return model


@pytest.mark.parametrize("use_ssm", [True, False])
def test_cached_logits_equal_full_forward(use_ssm):
    model = tiny_model(use_ssm)
    ids = torch.randint(0, 61, (2, 23), device=DEVICE)
    full = model(ids)
    caches = model.new_caches()
    parts = [model(ids[:, a:b], caches=caches) for a, b in ((0, 9), (9, 10), (10, 14), (14, 23))]
    assert caches[0].length == 23
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("use_ssm", [True, False])
def test_greedy_generate_matches_argmax_of_full_recomputation(use_ssm):
    model = tiny_model(use_ssm)
    ids = torch.randint(0, 61, (3, 5), device=DEVICE)
    out = model.generate(ids, max_new_tokens=15)
    assert out.shape == (3, 20) and torch.equal(out[:, :5], ids)
    for step in range(5, 20):  # every new token is the argmax of recomputing everything before it
        assert torch.equal(model(out[:, :step])[:, -1].argmax(-1), out[:, step])


DECODE_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}


@pytest.mark.parametrize("dtype", list(DECODE_TOL), ids=str)
@pytest.mark.parametrize("s", [1, 3, 40])
@pytest.mark.parametrize("decay", [0.01, 1.5])          # 1.5 nats/token: the s new queries need several chunks
def test_sdpa_with_fewer_queries_than_keys_matches_naive(s, decay, dtype):
    """The CPU decode path: the last s of t positions attend over all t keys, through
    sisa.sdpa.sdpa_attention, against the explicit scores in float64 (GQA, n=8)."""
    from sisa.naive import naive_attention, naive_scan
    from sisa.sdpa import sdpa_attention
    x = make_inputs(Case(2, 40, 4, 2, 16, 8, decay=decay), torch.float64, DEVICE, seed=3)
    C_rot, B_rot, g, _ = naive_scan(x["C"], x["B"], x["log_alpha"], x["theta"])
    q, C_rot = x["q"][:, -s:], C_rot[:, -s:]
    ref = naive_attention(q, x["k"], x["v"], C_rot, B_rot, g, x["lam"])
    low = [t.to(dtype) for t in (q, x["k"], x["v"], C_rot, B_rot)]
    state = torch.float64 if dtype == torch.float64 else torch.float32
    out = sdpa_attention(*low, g.to(state), x["lam"].to(state))
    assert out.shape == ref.shape and out.dtype == dtype
    err = (out.double() - ref).abs().max().item()
    assert err <= DECODE_TOL[dtype] * (1 + ref.abs().max().item()), f"err {err:.3g}"


def _decode_inputs(T, dtype, decay, seed=0, h=4, hk=2, d=16, n=8):
    """q, k, v, C_rot, B_rot, g, lam for T positions (q, C_rot for every position), on
    the CPU: the widened cache serves decoding where the Triton decode kernel does not
    (tests/test_decode_kernel.py covers that one)."""
    from sisa.naive import naive_scan
    x = make_inputs(Case(1, T, h, hk, d, n, decay=decay), torch.float64, "cpu", seed=seed)
    C_rot, B_rot, g, _ = naive_scan(x["C"], x["B"], x["log_alpha"], x["theta"])
    return x["q"], x["k"], x["v"], C_rot, B_rot, g, x["lam"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("step", [1, 3])
def test_widened_cache_decode_matches_naive(dtype, step):
    """Decoding token by token (or 3 at a time) through the cache's widened keys, with
    a decay of ~1.5 nats per token so that the reference c0 moves many times (budget
    40 nats in fp32, 6 in fp16): every step equals the float64 scores."""
    from sisa.cache import cached_attention
    from sisa.naive import naive_attention
    T = 90
    q, k, v, C_rot, B_rot, g, lam = _decode_inputs(T, dtype, decay=1.5)
    state = torch.float64 if dtype == torch.float64 else torch.float32
    cache, rebases, c0 = LayerCache(), 0, None
    with torch.no_grad():
        for t0 in range(0, T, step):
            t1 = min(t0 + step, T)
            past = cache.append(k=k[:, t0:t1].to(dtype), v=v[:, t0:t1].to(dtype), B_rot=B_rot[:, t0:t1].to(dtype),
                                g=g[:, t0:t1].to(state))
            out = cached_attention(q[:, t0:t1].to(dtype), past["k"], past["v"], C_rot[:, t0:t1].to(dtype),
                                   past["B_rot"], past["g"], lam.to(state), cache=cache)
            ref = naive_attention(q[:, t0:t1], k[:, :t1], v[:, :t1], C_rot[:, t0:t1], B_rot[:, :t1], g[:, :t1], lam)
            err = (out.double() - ref).abs().max().item()
            assert err <= DECODE_TOL[dtype] * (1 + ref.abs().max().item()), f"t={t1}: err {err:.3g}"
            if c0 is not None and not torch.equal(cache.wide["c0"], c0):
                rebases += 1
            c0 = cache.wide["c0"].clone()
    assert cache.wide["rows"] == T
    if dtype != torch.float64:
        assert rebases >= 2, rebases


def test_widened_cache_hands_nan_to_the_exact_path():
    """A NaN key at position 5: rows >= 5 are NaN, earlier rows stay exact, and the
    cache stops extending its widened keys."""
    from sisa.cache import cached_attention
    q, k, v, C_rot, B_rot, g, lam = _decode_inputs(12, torch.float32, decay=0.1)
    k = k.clone()
    k[0, 5, 1, 3] = float("nan")                   # kv head 1: query heads 2 and 3
    cache, outs = LayerCache(), []
    with torch.no_grad():
        for t in range(12):
            past = cache.append(k=k[:, t : t + 1].float(), v=v[:, t : t + 1].float(),
                                B_rot=B_rot[:, t : t + 1].float(), g=g[:, t : t + 1].float())
            outs.append(cached_attention(q[:, t : t + 1].float(), past["k"], past["v"],
                                         C_rot[:, t : t + 1].float(), past["B_rot"], past["g"], lam.float(),
                                         cache=cache))
    out = torch.cat(outs, dim=1)
    assert torch.isfinite(out[:, :5]).all() and torch.isnan(out[:, 5:, 2:]).all()
    assert cache.wide.get("off")


def test_widened_cache_is_not_used_under_autograd():
    from sisa.cache import cached_attention
    q, k, v, C_rot, B_rot, g, lam = _decode_inputs(6, torch.float32, decay=0.1)
    cache = LayerCache()
    past = cache.append(k=k, v=v, B_rot=B_rot, g=g)
    qq = q[:, -1:].clone().requires_grad_()
    out = cached_attention(qq, past["k"], past["v"], C_rot[:, -1:], past["B_rot"], past["g"], lam, cache=cache)
    out.sum().backward()
    assert cache.wide is None and qq.grad is not None


def test_sampling_respects_top_k_and_generator():
    model = tiny_model(dtype=torch.float32)
    ids = torch.randint(0, 61, (2, 4), device=DEVICE)
    a = model.generate(ids, 6, temperature=1.0, top_k=1, generator=torch.Generator(DEVICE).manual_seed(1))
    assert torch.equal(a, model.generate(ids, 6))            # top-1 sampling is greedy
    b = model.generate(ids, 6, temperature=1.0, generator=torch.Generator(DEVICE).manual_seed(3))
    c = model.generate(ids, 6, temperature=1.0, generator=torch.Generator(DEVICE).manual_seed(3))
    assert torch.equal(b, c)


def test_cache_grows_by_doubling_without_losing_data():
    cache = LayerCache()
    xs = [torch.full((1, 1, 2), float(i)) for i in range(40)]
    sizes = set()
    for x in xs:
        view = cache.append(x=x)["x"]
        sizes.add(cache._buf["x"].shape[1])
    assert torch.equal(view[0, :, 0], torch.arange(40.0))
    assert sizes == {1, 2, 4, 8, 16, 32, 64}                  # doubling, not one copy per token


def test_cache_scan_state_continues_the_scan():
    x = make_inputs(Case(1, 30, 2, 2, 8, 6, decay=0.3), torch.float64, DEVICE)
    full = sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"])
    first = sisa.ssm_importance_scan(x["C"][:, :11], x["B"][:, :11], x["log_alpha"][:, :11], x["theta"][:, :11])
    rest = sisa.ssm_importance_scan(x["C"][:, 11:], x["B"][:, 11:], x["log_alpha"][:, 11:], x["theta"][:, 11:],
                                    initial_state=first[3])
    for a, b in zip(full[:3], (torch.cat((p, r), 1) for p, r in zip(first[:3], rest[:3]))):
        torch.testing.assert_close(a, b)


def packed_inputs(lengths, dtype, decay=0.4):
    x = make_inputs(Case(1, sum(lengths), 4, 2, 16, 8, decay=decay), dtype, DEVICE)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=DEVICE)
    return x, cu


@pytest.mark.parametrize("backend, dtype", [(b, dt) for b in BACKENDS for dt in (torch.float32, torch.float64)
                                            if not (b == "triton" and dt == torch.float64)])  # 16/32-bit kernels
def test_packed_attention_equals_per_sequence_loop(backend, dtype):
    lengths = [5, 1, 0, 17, 9]
    x, cu = packed_inputs(lengths, dtype)
    args = [x[n] for n in NAMES]
    packed = sisa.sisa_attention(*args, cu_seqlens=cu, backend=backend)
    loop = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        loop.append(sisa.sisa_attention(*(t[:, a:b] for t in args[:7]), args[7], backend=backend))
    # naive and sdpa loop over the sequences themselves (the same numbers); triton tiles the
    # packed batch in one launch, so it only agrees to rounding
    torch.testing.assert_close(packed, torch.cat(loop, 1), rtol=0, atol=2e-6 if backend == "triton" else 0)
    # and it differs from attending across boundaries (so the test can fail)
    assert not torch.allclose(packed, sisa.sisa_attention(*args, backend=backend), atol=1e-3)


def test_packed_scan_restarts_and_reports_one_state_per_sequence():
    lengths = [4, 7, 3]
    x, cu = packed_inputs(lengths, torch.float64)
    C_rot, B_rot, g, (g_last, phi_last) = sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"],
                                                                   cu_seqlens=cu)
    assert g_last.shape == (3, 4) and phi_last.shape == (3, 4, 4)
    torch.testing.assert_close(g[0, 4], x["log_alpha"][0, 4].double())   # restarted at the 2nd start
    torch.testing.assert_close(g_last[1], g[0, 10])


def test_packed_model_equals_per_sequence_loop():
    model = tiny_model()
    ids = torch.randint(0, 61, (1, 20), device=DEVICE)
    cu = torch.tensor([0, 6, 13, 20], dtype=torch.int32, device=DEVICE)
    packed = model(ids, cu_seqlens=cu)
    loop = torch.cat([model(ids[:, a:b]) for a, b in ((0, 6), (6, 13), (13, 20))], 1)
    torch.testing.assert_close(packed, loop, rtol=0, atol=1e-10)
    packed.sum().backward()                                   # packed training backpropagates
    assert model.layers[0].attn.lambda_raw.grad is not None


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([1, 5, 9], dtype=torch.int32), "start at 0"),
    (torch.tensor([0, 6, 4, 9], dtype=torch.int32), "non-decreasing"),
    (torch.tensor([0, 5, 8], dtype=torch.int32), "end at"),
    (torch.tensor([0, 5, 9], dtype=torch.int64), "int32"),
    (torch.tensor([[0, 9]], dtype=torch.int32), "1-D"),
    ([0, 9], "torch.Tensor"),
])
def test_bad_cu_seqlens(bad, message):
    x, _ = packed_inputs([9], torch.float32)
    with pytest.raises((ValueError, TypeError), match=message):
        sisa.sisa_attention(*(x[n] for n in NAMES), cu_seqlens=bad)
    with pytest.raises((ValueError, TypeError), match=message):
        sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"], cu_seqlens=bad)


def test_cu_seqlens_needs_batch_one():
    x = make_inputs(Case(2, 6, 2, 2, 8, 4), torch.float32, DEVICE)
    with pytest.raises(ValueError, match="batch 1"):
        sisa.sisa_attention(*(x[n] for n in NAMES), cu_seqlens=torch.tensor([0, 6], dtype=torch.int32))


def leaf_readers(out):
    """Names of the autograd nodes behind ``out`` that read a leaf input directly."""
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nexts = [n for n, _ in node.next_functions]
        if any(type(n).__name__ == "AccumulateGrad" for n in nexts):
            names.append(type(node).__name__)
        stack.extend(nexts)
    return names


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_packed_loop_splits_once(backend):
    """The per-sequence loop takes its pieces with one split per input, whose backward
    is one concatenation: no full-size zero-filled gradient per sequence and input,
    which grew as sequences x tokens."""
    x, cu = packed_inputs([3, 1, 4, 1, 5, 9, 2, 6], torch.float32)
    leaves = {n: x[n].detach().requires_grad_(n != "lam") for n in NAMES}   # lam is shared, not split
    out = sisa.sisa_attention(*(leaves[n] for n in NAMES), cu_seqlens=cu, backend=backend)
    assert leaf_readers(out) == ["SplitWithSizesBackward0"] * 7


def test_packed_model_makes_no_host_sync_without_checks(monkeypatch):
    """SISAModel(cu_seqlens, check_inputs=False) on the triton backend: no .tolist(),
    .item() or bool() of a tensor anywhere on the forward and backward path (the model
    checks cu_seqlens' values once when asked, never per layer)."""
    pytest.importorskip("triton", reason="needs Triton (the interpreter on a CPU)")
    from sisa import SISAConfig, SISAModel
    cfg = SISAConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, d_state=4, d_ff=64, backend="triton")
    model = SISAModel(cfg)
    ids = torch.randint(0, 32, (1, 24))
    cu = torch.tensor([0, 5, 6, 24], dtype=torch.int32)
    model(ids, cu_seqlens=cu, check_inputs=False)                       # compile outside the watch

    def sync(*args, **kwargs):
        raise AssertionError("host sync")
    for name in ("tolist", "item", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    model(ids, cu_seqlens=cu, check_inputs=False).sum().backward()
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cu_seqlens"):                 # checked once when asked
        model(ids, cu_seqlens=torch.tensor([0, 5, 30], dtype=torch.int32))
