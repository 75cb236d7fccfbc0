"""The fused scan kernel (sisa_kernels.scan.ssm_scan) against the float64 judge.

Parity rule (as in FlashAttention's tests): with inputs rounded to the test dtype,
the kernel's max error against sisa.naive.naive_scan in float64 must be within 2x
(outputs) or 3x (gradients) of the same naive maths run by PyTorch in the test
dtype, plus a small absolute slack scaled to the reference's magnitude.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, kernels_or_skip
from sisa.naive import naive_scan

kernels_or_skip()
from sisa_kernels.scan import ssm_scan  # noqa: E402
from sisa_kernels.scan_ref import scan_ref, scan_ref_backward  # noqa: E402

NAMES = ("C", "B", "log_alpha", "theta", "g0", "phi0")
OUT_NAMES = ("C_rot", "B_rot", "g", "g_last", "phi_last")


def make_inputs(b, t, h, n, dtype, initial_state=True, seed=0):
    """C, B, theta in `dtype`; log_alpha, g0, phi0 float32 (float64 for float64)."""
    gen = torch.Generator().manual_seed(seed)
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x = {"C": rand(b, t, h, n).to(dtype), "B": rand(b, t, h, n).to(dtype),
         "log_alpha": (-F.softplus(rand(b, t, h) - 1)).to(sd),
         "theta": (0.5 * rand(b, t, h, n // 2)).to(dtype),
         "g0": (-rand(b, h).abs()).to(sd) if initial_state else None,
         "phi0": rand(b, h, n // 2).to(sd) if initial_state else None}
    return {k: v.to(DEVICE) if v is not None else None for k, v in x.items()}


def naive(C, B, log_alpha, theta, g0=None, phi0=None):
    init = None
    if g0 is not None or phi0 is not None:
        b, _, h, n = C.shape
        init = (g0 if g0 is not None else C.new_zeros(b, h, dtype=torch.float32),
                phi0 if phi0 is not None else C.new_zeros(b, h, n // 2, dtype=torch.float32))
    C_rot, B_rot, g, (g_last, phi_last) = naive_scan(C, B, log_alpha, theta, init)
    return C_rot, B_rot, g, g_last, phi_last


def run(fn, inputs, grads, cast=None):
    """Outputs and gradients of all given inputs for incoming `grads` (None = unused)."""
    leaves = {k: (v if cast is None else v.to(cast)).detach().requires_grad_()
              for k, v in inputs.items() if v is not None}
    outs = fn(*(leaves.get(k) for k in NAMES))
    used = [(o, g) for o, g in zip(outs, grads) if g is not None]
    dins = torch.autograd.grad([o for o, _ in used], list(leaves.values()),
                               [g.to(o.dtype) for o, g in used], allow_unused=True)
    return list(outs), dict(zip(leaves.keys(), dins))


def make_grads(outs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(DEVICE)
            for o in outs]


def max_err(x, ref):
    return (x.double() - ref.double()).abs().max().item() if ref.numel() else 0.0


def check(name, kernel, torch_low, ref, factor):
    atol = 1e-5 * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    ek, et = max_err(kernel, ref), max_err(torch_low, ref)
    assert kernel.shape == ref.shape, f"{name}: shape {kernel.shape} vs {ref.shape}"
    assert ek <= factor * et + atol, f"{name}: kernel err {ek:.3g} > {factor} x torch err {et:.3g} + {atol:.3g}"


def assert_parity(inputs, grad_mask=(True,) * 5):
    """Kernel vs float64 judge, scaled by PyTorch's own error in the test dtype."""
    ref_out = naive(**inputs)                     # shapes and dtypes of the outputs
    grads = [g if m else None for g, m in zip(make_grads(ref_out), grad_mask)]
    f64 = {k: v.double() if v is not None else None for k, v in inputs.items()}
    out64, din64 = run(naive, f64, grads)
    out_lo, din_lo = run(naive, inputs, grads)
    out_k, din_k = run(ssm_scan, inputs, grads)
    for name, k, lo, r, x in zip(OUT_NAMES, out_k, out_lo, out64, ref_out):
        assert k.dtype == x.dtype, f"{name}: dtype {k.dtype}, expected {x.dtype}"
        check(name, k, lo, r, 2)
    for name, r in din64.items():
        if r is None:
            assert din_k[name] is None or not din_k[name].any(), name
            continue
        assert din_k[name].dtype == inputs[name].dtype, f"d{name}: dtype {din_k[name].dtype}"
        check("d" + name, din_k[name], din_lo[name], r, 3)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t, initial_state", [(1, True), (2, False), (33, True), (77, False),
                                              (130, True)])
def test_lengths(t, initial_state, dtype):
    assert_parity(make_inputs(2, t, 2, 16, dtype, initial_state, seed=t))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, t", [(2, 33), (4, 33), (64, 33), (128, 5)])
def test_state_sizes(n, t, dtype):
    assert_parity(make_inputs(2, t, 2, n, dtype, initial_state=True, seed=n))


def test_long_sequence_fp32():
    """Several chunks on every block-size choice (interpreter 64, CUDA <= 256)."""
    assert_parity(make_inputs(1, 600, 1, 4, torch.float32, seed=3))


@pytest.mark.skipif(DEVICE != "cuda", reason="a training-sized shape; too slow for the interpreter")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_cuda(dtype):
    assert_parity(make_inputs(4, 2049, 12, 16, dtype, seed=14))
    assert_parity(make_inputs(1, 1000, 3, 128, dtype, seed=15))


def test_float64_exact():
    x = make_inputs(2, 77, 2, 8, torch.float64, seed=4)
    outs, dins = run(ssm_scan, x, make_grads(naive(**x)))
    ref_outs, ref_dins = run(naive, x, make_grads(naive(**x)))
    for k, r in zip(outs + list(dins.values()), ref_outs + list(ref_dins.values())):
        torch.testing.assert_close(k, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mask", [(True, False, False, False, False),
                                  (False, False, True, False, True),
                                  (False, True, False, True, False)])
def test_unused_outputs(mask):
    """Incoming gradients may be None for any output."""
    assert_parity(make_inputs(2, 40, 2, 8, torch.float32, seed=5), grad_mask=mask)


def test_only_g0_or_phi0():
    x = make_inputs(2, 20, 2, 8, torch.float32, seed=6)
    assert_parity({**x, "phi0": None})
    assert_parity({**x, "g0": None})


def test_matches_chunked_reference():
    """scan_ref / scan_ref_backward (the readable chunked maths) equal the judge."""
    x = make_inputs(2, 77, 2, 8, torch.float64, seed=7)
    ref_outs = naive(**x)
    grads = make_grads(ref_outs)
    _, ref_dins = run(naive, x, grads)
    for a, r in zip(scan_ref(**x, chunk=16), ref_outs):
        torch.testing.assert_close(a, r)
    dins = scan_ref_backward(x["C"], x["B"], x["theta"], ref_outs[4], *grads, chunk=16)
    for a, name in zip(dins, NAMES):
        torch.testing.assert_close(a, ref_dins[name])


def test_continue_from_state():
    """Scan of a prefix, then of the rest from the prefix's final state, equals one scan,
    in outputs and in gradients (which flow through g_last/phi_last into g0/phi0)."""
    x = make_inputs(2, 100, 2, 8, torch.float32, initial_state=True, seed=8)
    grads = make_grads(naive(**x))

    def two_part(C, B, log_alpha, theta, g0, phi0, cut=45):
        a = ssm_scan(C[:, :cut], B[:, :cut], log_alpha[:, :cut], theta[:, :cut], g0, phi0)
        c = ssm_scan(C[:, cut:], B[:, cut:], log_alpha[:, cut:], theta[:, cut:], a[3], a[4])
        return (torch.cat([a[0], c[0]], 1), torch.cat([a[1], c[1]], 1),
                torch.cat([a[2], c[2]], 1), c[3], c[4])

    outs1, dins1 = run(ssm_scan, x, grads)
    outs2, dins2 = run(two_part, x, grads)
    for a, b in zip(outs1 + list(dins1.values()), outs2 + list(dins2.values())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_non_contiguous_inputs():
    """Slices of one fused projection (strided rows), and C, B with different strides."""
    b, t, h, n = 2, 37, 2, 8
    gen = torch.Generator().manual_seed(9)
    proj = torch.randn(b, t, h, 2 * n + n // 2 + 1, generator=gen)
    proj[..., -1] = -F.softplus(proj[..., -1])                     # log_alpha <= 0
    proj = proj.to(DEVICE)
    C, B, theta, log_alpha = proj[..., :n], proj[..., n:2 * n], proj[..., 2 * n:-1], proj[..., -1]
    B2 = torch.randn(b, h, t, n, generator=gen).to(DEVICE).transpose(1, 2)
    assert not (C.is_contiguous() or theta.is_contiguous() or log_alpha.is_contiguous())
    for BB in (B, B2):
        assert_parity({"C": C, "B": BB, "log_alpha": log_alpha, "theta": theta,
                       "g0": None, "phi0": None})


@pytest.mark.parametrize("initial_state", [False, True])
def test_empty_sequence(initial_state):
    x = make_inputs(2, 0, 3, 8, torch.float32, initial_state, seed=10)
    outs = ssm_scan(**x)
    ref = naive(**x)
    for a, r in zip(outs, ref):
        assert a.shape == r.shape and a.dtype == r.dtype
        torch.testing.assert_close(a, r)
    if initial_state:
        grads = make_grads(ref)
        _, dins = run(ssm_scan, x, grads)
        torch.testing.assert_close(dins["g0"], grads[3].to(dins["g0"].dtype))   # g_last is float64
        torch.testing.assert_close(dins["phi0"], grads[4])


def test_deterministic():
    x = make_inputs(2, 50, 2, 16, torch.bfloat16, seed=11)
    grads = make_grads(naive(**x))
    o1, d1 = run(ssm_scan, x, grads)
    o2, d2 = run(ssm_scan, x, grads)
    for a, b in zip(o1 + list(d1.values()), o2 + list(d2.values())):
        assert torch.equal(a, b)


def test_bad_inputs():
    x = make_inputs(1, 4, 1, 4, torch.float32, initial_state=False)
    with pytest.raises(TypeError, match="int32"):
        ssm_scan(x["C"].int(), x["B"], x["log_alpha"], x["theta"])
    with pytest.raises(ValueError, match="even"):
        ssm_scan(x["C"][..., :3], x["B"][..., :3], x["log_alpha"], x["theta"][..., :1])
    with pytest.raises(ValueError, match="theta"):
        ssm_scan(x["C"], x["B"], x["log_alpha"], x["theta"][..., :1])


def test_custom_op_registration():
    x = make_inputs(1, 9, 2, 4, torch.float32, seed=12)
    args = tuple(x[k].requires_grad_() for k in NAMES)
    torch.library.opcheck(torch.ops.sisa_kernels.scan_fwd.default, args)   # incl. aot dispatch
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32, device=DEVICE)
    x = make_inputs(1, 9, 2, 4, torch.float32, initial_state=False, seed=12)
    args = tuple(x[k].requires_grad_() for k in NAMES[:4])
    torch.library.opcheck(torch.ops.sisa_kernels.scan_fwd.default, args + (None, None, cu))


def test_torch_compile_fullgraph():
    x = make_inputs(1, 9, 2, 4, torch.float32, seed=13)

    def fn(C, B, log_alpha, theta, g0, phi0):
        C_rot, B_rot, g, g_last, phi_last = ssm_scan(C, B, log_alpha, theta, g0, phi0)
        return (C_rot * B_rot).sum() + g.exp().sum() + g_last.sum() + phi_last.cos().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [x[k].detach().requires_grad_() for k in NAMES]
    loss_c = compiled(*leaves)
    grads_c = torch.autograd.grad(loss_c, leaves)
    loss_e = fn(*leaves)
    grads_e = torch.autograd.grad(loss_e, leaves)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


LENGTHS = {"short": [1, 3, 0, 2, 7, 1, 5], "spans chunks": [70, 1, 90, 33], "one": [37]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
def test_varlen_equals_per_sequence_scans(lengths, dtype):
    """cu_seqlens inside the kernel (one launch): every sequence (length 0, 1, or
    across chunk boundaries) restarts from its own initial state, and outputs, final
    states and all gradients equal a loop of per-sequence float64 scans."""
    h, n, total = 3, 6, sum(lengths)
    x = make_inputs(1, total, h, n, dtype, seed=len(lengths))
    gen = torch.Generator().manual_seed(5)
    x["g0"] = -torch.rand(len(lengths), h, generator=gen).to(DEVICE)
    x["phi0"] = torch.randn(len(lengths), h, n // 2, generator=gen).to(DEVICE)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=DEVICE)

    def packed(C, B, log_alpha, theta, g0, phi0):
        return ssm_scan(C, B, log_alpha, theta, g0, phi0, cu_seqlens=cu)

    def looped(C, B, log_alpha, theta, g0, phi0):
        parts = [naive(*(z[:, a:b] for z in (C, B, log_alpha, theta)), g0[s:s + 1], phi0[s:s + 1])
                 for s, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:]))]
        return [torch.cat(p, dim=1 if i < 3 else 0) for i, p in enumerate(zip(*parts))]

    grads = make_grads(packed(**x))
    out64, din64 = run(looped, {k: v.double() for k, v in x.items()}, grads)
    out_lo, din_lo = run(looped, x, grads)
    out_k, din_k = run(packed, x, grads)
    for name, k, lo, ref in zip(OUT_NAMES, out_k, out_lo, out64):
        check(name, k, lo, ref, 2)
    for name in NAMES:
        check("d" + name, din_k[name], din_lo[name], din64[name], 3)
