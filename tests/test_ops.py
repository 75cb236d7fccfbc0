"""The public ops, every backend, against the float64 naive path (FlashAttention rule).

Backends: "naive", "sdpa" and "triton" where ``sisa.available_backends`` lists it.
On a CPU Triton runs under its interpreter (tests/conftest.py), which is ~100x
slower, so there it gets a small subset of the sweep; on CUDA it gets all of it.
"""
import functools
import math

import pytest
import torch

import sisa
from sisa.naive import naive_sisa_attention
from sisa.testing import FLOOR, NAMES, Case, compare, make_inputs

from conftest import DEVICE

LOW = [torch.float32, torch.float16, torch.bfloat16]
WEAK, STRONG = 0.0067, 1.0

# Odd lengths 1/33/77/130, GQA h=4 with hk 4/2/1, d_state 2..64, head dims
# 16..128 (40, 96 not powers of two), weak and strong mean decay per token.
SWEEP = [
    Case(2, 1, 4, 4, 16, 2),
    Case(1, 33, 4, 2, 40, 16, decay=WEAK),
    Case(1, 77, 4, 1, 96, 8, decay=STRONG),           # 77 nats: sdpa chunks in every dtype
    Case(1, 130, 4, 4, 128, 64, decay=1e-3),
    Case(2, 33, 4, 1, 64, 32, decay=0.5),
    Case(1, 130, 4, 2, 48, 4, decay=2.0),             # 260 nats, far past exp's range
]
# What the Triton interpreter can afford on a CPU (the kernel tests sweep it further).
TRITON_CPU = {(Case(1, 33, 4, 2, 40, 16, decay=STRONG), torch.float32),
              (Case(1, 17, 4, 1, 16, 4, decay=WEAK), torch.float16),
              (Case(1, 20, 2, 1, 96, 8, decay=STRONG), torch.bfloat16)}


def ids(x):
    return str(x).replace(" ", "-") if isinstance(x, Case) else str(x).replace("torch.", "")


def need(backend):
    """Skip, printing why, when ``backend`` cannot run on this device."""
    if backend not in sisa.available_backends(DEVICE):
        reason = sisa.backends.triton_unavailable_reason(DEVICE)
        pytest.skip(f"backend {backend!r} unavailable on {DEVICE}: {reason}")


def op(backend):
    return lambda *a: sisa.sisa_attention(*a, backend=backend)


def assert_ok(report, what):
    assert report.fwd_err <= report.fwd_tol, f"{what}: forward err {report.fwd_err:.3g} > tol {report.fwd_tol:.3g}"
    for k in report.grad_err:
        assert report.grad_err[k] <= report.grad_tol[k], (
            f"{what}: d{k} err {report.grad_err[k]:.3g} > tol {report.grad_tol[k]:.3g}")


# ---------------------------------------------------------------- attention sweeps

F64_JOBS = [("sdpa", c) for c in SWEEP] + [("naive", SWEEP[2])]   # naive is the judge: one dispatch check


@pytest.mark.parametrize("backend,case", F64_JOBS, ids=[f"{b}-{ids(c)}" for b, c in F64_JOBS])
def test_float64_matches_naive(backend, case):
    """In float64 the reference paths agree with the judge to ~1e-10 (forward and all grads)."""
    assert_ok(compare(op(backend), case, torch.float64, DEVICE), f"{backend} {case} float64")


@pytest.mark.parametrize("case", SWEEP, ids=ids)
@pytest.mark.parametrize("dtype", LOW, ids=ids)
@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_low_precision_matches_naive(backend, dtype, case):
    assert_ok(compare(op(backend), case, dtype, DEVICE), f"{backend} {case} {dtype}")


TRITON_JOBS = [(c, dt) for c in SWEEP for dt in LOW] if DEVICE == "cuda" else sorted(TRITON_CPU, key=str)


@pytest.mark.parametrize("case,dtype", TRITON_JOBS, ids=[f"{ids(c)}-{ids(d)}" for c, d in TRITON_JOBS])
def test_triton_matches_naive(case, dtype):
    need("triton")
    assert_ok(compare(op("triton"), case, dtype, DEVICE), f"triton {case} {dtype}")


def _cross_jobs():
    jobs = [(c, dt) for c in SWEEP for dt in LOW]
    if DEVICE != "cuda":
        jobs += [j for j in sorted(TRITON_CPU, key=str) if j not in jobs]
    return jobs


@pytest.mark.parametrize("case,dtype", _cross_jobs(), ids=[f"{ids(c)}-{ids(d)}" for c, d in _cross_jobs()])
def test_backends_agree(case, dtype):
    """Every available backend against every other on the same low-precision inputs:
    each is within the rule's tolerance of the judge, so any two differ by at most
    twice that tolerance."""
    backends = [bk for bk in sisa.available_backends(DEVICE)
                if bk != "triton" or DEVICE == "cuda" or (case, dtype) in TRITON_CPU]
    x = make_inputs(case, dtype, DEVICE)
    args = [x[k] for k in NAMES]
    ref = naive_sisa_attention(*(a.double() for a in args))
    low = naive_sisa_attention(*args, upcast=False)
    tol = 2 * (2 * (low.double() - ref).abs().max().item() + FLOOR[dtype] * max(1.0, ref.abs().max().item()))
    outs = {bk: sisa.sisa_attention(*args, backend=bk) for bk in backends}
    for bk, o in outs.items():
        assert o.dtype == dtype and o.shape == (case.b, case.t, case.h, case.d), bk
    names = sorted(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = (outs[a].double() - outs[b].double()).abs().max().item()
            assert diff <= tol, f"{a} vs {b} on {case} {dtype}: {diff:.3g} > {tol:.3g}"


def test_triton_rejects_float64():
    """The kernels are 16/32-bit: float64 through backend="triton" is a clear TypeError
    (never a silent float32-accurate result), and "auto" takes a float64 path."""
    need("triton")
    x = make_inputs(Case(1, 9, 2, 1, 16, 4, decay=0.5), torch.float64, DEVICE)
    with pytest.raises(TypeError, match="float64"):
        sisa.sisa_attention(*(x[k] for k in NAMES), backend="triton")
    assert_ok(compare(sisa.sisa_attention, Case(1, 9, 2, 1, 16, 4, decay=0.5), torch.float64, DEVICE), "auto f64")


def test_auto_backend_is_correct():
    """backend="auto" (the default) picks a correct path."""
    case = Case(1, 33, 4, 2, 40, 16, decay=STRONG)
    assert_ok(compare(sisa.sisa_attention, case, torch.float32, DEVICE, grads=False), "auto")


def test_softmax_scale_is_honoured():
    """A custom softmax_scale scales only the content term, in every backend."""
    case = Case(1, 21, 2, 1, 16, 8, decay=0.3)
    x = make_inputs(case, torch.float64, DEVICE)
    args = [x[k] for k in NAMES]
    ref = naive_sisa_attention(*args, softmax_scale=0.7)
    default = naive_sisa_attention(*args)
    assert (ref - default).abs().max() > 1e-3          # the scale matters on these inputs
    for bk in ("naive", "sdpa"):
        out = sisa.sisa_attention(*args, softmax_scale=0.7, backend=bk)
        assert (out - ref).abs().max() < 1e-10, bk


def _same_values_other_memory(x, how):
    """``x``'s values in a different memory layout (a view of a bigger buffer)."""
    if how == "odd_offset":      # contiguous, but starting at an odd element of its storage
        buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
        buf[1:] = x.flatten()
        return buf[1:].view(x.shape)
    if how == "expanded" and x.dim() == 1:       # lam broadcast from one value (stride 0)
        return x[:1].expand(x.shape)
    big = torch.full((*x.shape[:-1], 2 * x.shape[-1]), float("nan"), dtype=x.dtype, device=x.device)
    big[..., ::2] = x            # "strided": every other element of a NaN-filled wider tensor
    return big[..., ::2]


@pytest.mark.parametrize("how", ["odd_offset", "strided", "expanded"])
@pytest.mark.parametrize("backend", ["naive", "sdpa", "triton"])
def test_input_memory_layout_does_not_matter(backend, how):
    """Each input, one at a time, given as a view (odd storage offset / stride 2 /
    stride 0 for lam): the same values give the same output as contiguous inputs."""
    need(backend)
    case = Case(1, 9, 2, 1, 16, 4, decay=0.5)
    x = make_inputs(case, torch.float32, DEVICE)
    if how == "expanded":
        x["lam"] = x["lam"][:1].repeat(case.h)
    base = sisa.sisa_attention(*(x[k] for k in NAMES), backend=backend)
    names = ["lam"] if how == "expanded" else NAMES
    for name in names:
        args = [_same_values_other_memory(x[k], how) if k == name else x[k] for k in NAMES]
        assert torch.equal(args[NAMES.index(name)], x[name])
        out = sisa.sisa_attention(*args, backend=backend)
        diff = (out - base).abs().max().item()
        assert diff <= 1e-6, f"{backend}: {name} as a {how} view changes the output by {diff}"


def test_scan_odd_storage_offset():
    """The scan accepts a contiguous C whose storage starts at an odd element."""
    C, B, la, theta = scan_inputs(1, 5, 2, 4, torch.float32)
    want = sisa.ssm_importance_scan(C, B, la, theta, backend="naive")
    got = sisa.ssm_importance_scan(_same_values_other_memory(C, "odd_offset"), B, la, theta, backend="naive")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ---------------------------------------------------------------- long, strongly decaying sequence

LONG = Case(1, 2048, 1, 1, 32, 8, decay=0.1)     # ~200 nats of total decay: far past exp's 88


@functools.lru_cache(maxsize=None)
def _long_results(dtype):
    """(ours error, ours tolerance, paper error) for LONG in ``dtype``, forward only."""
    x = make_inputs(LONG, dtype, DEVICE)
    args = [x[k] for k in NAMES]
    total = -x["log_alpha"].double().sum(1).min().item()
    assert total > 150, f"the long case must decay far past 88 nats, got {total:.1f}"
    ref = _long_ref()
    low = naive_sisa_attention(*args, upcast=False)
    tol = 2 * _err(low, ref) + FLOOR[dtype] * max(1.0, ref.abs().max().item())
    ours = sisa.sisa_attention(*args, backend="sdpa")
    paper = sisa.paper_sdpa_attention(*args)
    return _err(ours, ref), tol, _err(paper, ref)


@functools.lru_cache(maxsize=None)
def _long_ref():
    x = make_inputs(LONG, torch.float64, DEVICE)
    return naive_sisa_attention(*(x[k] for k in NAMES))


def _err(a, ref):
    """Max abs error; non-finite output counts as infinitely wrong."""
    d = (a.double() - ref).abs()
    return math.inf if not torch.isfinite(d).all() else d.max().item()


@pytest.mark.parametrize("dtype", LOW, ids=ids)
def test_long_strong_decay_sdpa_exact(dtype):
    err, tol, _ = _long_results(dtype)
    assert err <= tol, f"sdpa at t=2048 with ~200 nats of decay: err {err:.3g} > tol {tol:.3g}"


@pytest.mark.parametrize("dtype", LOW, ids=ids)
def test_long_strong_decay_paper_clamp_departs(dtype):
    """The paper's single-SDPA form clamps g - c to [-11, 11]: with 200 nats of total
    decay its output departs from the equation by O(1) (fp16 even overflows to NaN),
    while ours, on the same inputs, stays within the FlashAttention tolerance."""
    ours, tol, paper = _long_results(dtype)
    assert ours <= tol
    assert paper > 0.5, f"expected the paper's clamp to break the output, err only {paper:.3g}"


def test_paper_form_is_exact_inside_its_range():
    """The baseline is a faithful copy of the paper: exact while total decay < 22 nats."""
    case = Case(1, 130, 4, 2, 40, 16, decay=0.02)   # ~2.6 nats
    assert_ok(compare(sisa.paper_sdpa_attention, case, torch.float32, DEVICE, grads=False), "paper")


def test_paper_form_without_clamp_overflows():
    """With the clamp removed the sequence-wide factorisation overflows: not finite."""
    x = make_inputs(Case(1, 300, 1, 1, 16, 8, decay=0.7), torch.float32, DEVICE)
    out = sisa.paper_sdpa_attention(*(x[k] for k in NAMES), clamp=None)
    assert not torch.isfinite(out).all()


def test_long_strong_decay_triton():
    need("triton")
    if DEVICE != "cuda":
        pytest.skip("t=2048 under the Triton CPU interpreter is too slow for this suite; "
                    "it runs on CUDA (tests/test_attention_kernel.py covers strong decay on CPU)")
    x = make_inputs(LONG, torch.float32, DEVICE)
    args = [x[k] for k in NAMES]
    ref = _long_ref()
    low = naive_sisa_attention(*args, upcast=False)
    tol = 2 * _err(low, ref) + FLOOR[torch.float32] * max(1.0, ref.abs().max().item())
    assert _err(sisa.sisa_attention(*args, backend="triton"), ref) <= tol


# ---------------------------------------------------------------- the scan

def loop_scan(C, B, log_alpha, theta, g0=None, phi0=None):
    """The scan written as a float64 loop over time and pairs, independent of the package."""
    C, B, log_alpha, theta = (x.double() for x in (C, B, log_alpha, theta))
    b, t, h, n = C.shape
    g = torch.zeros(b, h, dtype=torch.float64) if g0 is None else g0.double().clone()
    phi = torch.zeros(b, h, n // 2, dtype=torch.float64) if phi0 is None else phi0.double().clone()
    Cr, Br, gs = torch.empty_like(C), torch.empty_like(B), torch.empty(b, t, h, dtype=torch.float64)
    for s in range(t):
        g = g + log_alpha[:, s]
        phi = phi + theta[:, s]
        gs[:, s] = g
        for m in range(n // 2):
            c, sn = torch.cos(phi[..., m]), torch.sin(phi[..., m])
            for src, dst in ((C, Cr), (B, Br)):
                x, y = src[:, s, :, 2 * m], src[:, s, :, 2 * m + 1]
                dst[:, s, :, 2 * m] = x * c - y * sn
                dst[:, s, :, 2 * m + 1] = x * sn + y * c
    return Cr, Br, gs, (g, phi)


def scan_inputs(b, t, h, n, dtype, decay=0.3, seed=0, theta_std=0.5):
    gen = torch.Generator().manual_seed(seed)
    C = torch.randn(b, t, h, n, generator=gen, dtype=torch.float64)
    B = torch.randn(b, t, h, n, generator=gen, dtype=torch.float64)
    la = -2 * decay * torch.rand(b, t, h, generator=gen, dtype=torch.float64)
    theta = theta_std * torch.randn(b, t, h, n // 2, generator=gen, dtype=torch.float64)
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    return C.to(DEVICE, dtype), B.to(DEVICE, dtype), la.to(DEVICE, sd), theta.to(DEVICE, sd)


def scan_backends():
    return [bk for bk in ("naive", "triton") if bk in sisa.available_backends(DEVICE)]


def test_scan_float64_matches_loop():
    C, B, la, theta = scan_inputs(2, 19, 3, 6, torch.float64)
    g0 = torch.randn(2, 3, dtype=torch.float64) - 5
    phi0 = torch.randn(2, 3, 3, dtype=torch.float64)
    for init in (None, (g0, phi0)):
        Cr, Br, g, (gl, pl) = sisa.ssm_importance_scan(C, B, la, theta, initial_state=init, backend="naive")
        rC, rB, rg, (rgl, rpl) = loop_scan(C, B, la, theta, *(init or (None, None)))
        for got, ref in ((Cr, rC), (Br, rB), (g, rg), (gl, rgl), (pl, rpl)):
            assert got.dtype == torch.float64
            assert (got - ref).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", LOW, ids=ids)
@pytest.mark.parametrize("n", [2, 16, 64])
def test_scan_low_precision_matches_loop(dtype, n):
    """Every scan backend against the float64 loop: g (float64 for every dtype) and the
    final state to float32 accuracy at least, C_rot/B_rot in the input dtype within 2x the naive path's own error."""
    t = 77
    C, B, la, theta = scan_inputs(1, t, 2, n, dtype, decay=1.0)
    rC, rB, rg, (rgl, rpl) = loop_scan(C, B, la, theta)
    naive_C = sisa.ssm_importance_scan(C, B, la, theta, backend="naive")[0]
    rot_tol = 2 * (naive_C.double() - rC).abs().max().item() + FLOOR[dtype]
    for bk in scan_backends():
        Cr, Br, g, (gl, pl) = sisa.ssm_importance_scan(C, B, la, theta, backend=bk)
        assert Cr.dtype == dtype and Br.dtype == dtype and Cr.shape == C.shape, bk
        assert g.dtype == torch.float64 and gl.dtype == torch.float64 and pl.dtype == torch.float32, bk
        assert g.shape == la.shape and gl.shape == (1, 2) and pl.shape == (1, 2, n // 2), bk
        state_tol = 4 * t * torch.finfo(torch.float32).eps * (1 + rg.abs().max().item())
        assert (g.double() - rg).abs().max() <= state_tol, bk
        assert (gl.double() - rgl).abs().max() <= state_tol, bk
        assert (pl.double() - rpl).abs().max() <= 4 * t * 1.2e-7 * (1 + rpl.abs().max().item()), bk
        assert (Cr.double() - rC).abs().max() <= rot_tol, bk
        assert (Br.double() - rB).abs().max() <= rot_tol, bk


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=ids)
def test_scan_continues_from_state(dtype):
    """Scanning [0, s) then [s, t) from the first part's final state equals one scan."""
    C, B, la, theta = scan_inputs(2, 41, 3, 8, dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for bk in scan_backends():
        whole = sisa.ssm_importance_scan(C, B, la, theta, backend=bk)
        for s in (1, 17, 40):
            first = sisa.ssm_importance_scan(C[:, :s], B[:, :s], la[:, :s], theta[:, :s], backend=bk)
            second = sisa.ssm_importance_scan(C[:, s:], B[:, s:], la[:, s:], theta[:, s:],
                                              initial_state=first[3], backend=bk)
            for i in range(3):
                joined = torch.cat((first[i], second[i]), dim=1)
                assert (joined.double() - whole[i].double()).abs().max() <= tol, (bk, s, i)
            for got, ref in zip(second[3], whole[3]):
                assert (got.double() - ref.double()).abs().max() <= tol, (bk, s)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=ids)
def test_scan_empty_sequence_final_state(dtype):
    """t = 0: empty outputs; the final state is the initial state, or zeros without one."""
    C, B, la, theta = scan_inputs(2, 0, 3, 4, dtype)
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    g0 = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], dtype=sd, device=DEVICE)
    phi0 = torch.arange(12, dtype=sd, device=DEVICE).reshape(2, 3, 2) / 7
    for bk in scan_backends():
        Cr, Br, g, (gl, pl) = sisa.ssm_importance_scan(C, B, la, theta, backend=bk)
        assert Cr.shape == (2, 0, 3, 4) and Br.shape == (2, 0, 3, 4) and g.shape == (2, 0, 3), bk
        assert gl.shape == (2, 3) and pl.shape == (2, 3, 2), bk
        assert torch.equal(gl, torch.zeros_like(gl)) and torch.equal(pl, torch.zeros_like(pl)), bk
        *_, (gl, pl) = sisa.ssm_importance_scan(C, B, la, theta, initial_state=(g0, phi0), backend=bk)
        assert torch.equal(gl.to(sd), g0) and torch.equal(pl.to(sd), phi0), bk
