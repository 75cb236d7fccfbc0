"""The fused Qhat/Khat epilogue (sisa_kernels.augment.augment_qk) against
sisa_kernels.scan_ref.augment_ref in float64, with FlashAttention's parity rule
(see tests/test_scan_kernel.py), and the identity it exists for:
scale Qhat . Khat = scale q . k + lam exp(g_i - g_j) Cr_i . Br_j."""
import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, kernels_or_skip

kernels_or_skip()
from sisa_kernels.augment import augment_qk  # noqa: E402
from sisa_kernels.scan_ref import augment_ref  # noqa: E402
from test_scan_kernel import check  # noqa: E402

NAMES = ("q", "k", "C_rot", "B_rot", "g", "lam", "c")


def make_inputs(b, t, h, hk, d, n, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    g = torch.cumsum(-F.softplus(rand(b, t, h) - 2), 1)
    c = (g.amax(1) + g.amin(1)) / 2 if t else torch.zeros(b, h, dtype=torch.float64)
    x = {"q": rand(b, t, h, d).to(dtype), "k": rand(b, t, hk, d).to(dtype),
         "C_rot": rand(b, t, h, n).to(dtype), "B_rot": rand(b, t, h, n).to(dtype),
         "g": g.float(), "lam": (0.2 + torch.rand(h, generator=gen)), "c": c.float()}
    return {k: v.to(DEVICE) for k, v in x.items()}


def run(fn, inputs, grads, width, cast=None):
    leaves = {k: (v if cast is None else v.to(cast)).detach().requires_grad_()
              for k, v in inputs.items()}
    outs = fn(*(leaves[k] for k in NAMES), width)
    used = [(o, g) for o, g in zip(outs, grads) if g is not None]
    dins = torch.autograd.grad([o for o, _ in used], list(leaves.values()),
                               [g.to(o.dtype) for o, g in used], allow_unused=True)
    return list(outs), {k: d if d is not None else torch.zeros_like(leaves[k])
                        for k, d in zip(leaves, dins)}


def assert_parity(inputs, width, grad_mask=(True, True)):
    gen = torch.Generator().manual_seed(1)
    ref = augment_ref(*(inputs[k] for k in NAMES), width)
    grads = [torch.randn(r.shape, generator=gen, dtype=torch.float64).to(DEVICE) if m else None
             for r, m in zip(ref, grad_mask)]
    out64, din64 = run(augment_ref, inputs, grads, width, cast=torch.float64)
    out_lo, din_lo = run(augment_ref, inputs, grads, width)
    out_k, din_k = run(augment_qk, inputs, grads, width)
    for name, k, lo, r, x in zip(("Qhat", "Khat"), out_k, out_lo, out64, ref):
        assert k.dtype == x.dtype and k.shape == x.shape, name
        check(name, k, lo, r, 2)
    for name in NAMES:
        assert din_k[name].dtype == inputs[name].dtype, name
        check("d" + name, din_k[name], din_lo[name], din64[name], 3)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b, t, h, hk, d, n, width", [
    (2, 33, 4, 2, 16, 8, None),        # GQA, no padding
    (1, 77, 2, 1, 24, 16, 48),         # MQA, head dim not a power of two, padded
    (1, 5, 3, 3, 64, 128, 200),        # d_state 128, padding wider than a block
])
def test_parity(b, t, h, hk, d, n, width, dtype):
    assert_parity(make_inputs(b, t, h, hk, d, n, dtype, seed=t), width)


@pytest.mark.parametrize("grad_mask", [(True, False), (False, True)])
def test_one_output_used(grad_mask):
    assert_parity(make_inputs(1, 20, 2, 1, 8, 4, torch.float32), 16, grad_mask)


def test_scores_identity():
    """scale Qhat Khat^T equals the SISA score (the reason for the augmentation)."""
    x = make_inputs(1, 40, 2, 1, 16, 8, torch.float64)
    Qh, Kh = augment_qk(*(x[k].float() if x[k].dtype == torch.float64 else x[k] for k in NAMES))
    q, k, Cr, Br, g, lam = (x[n].float() for n in NAMES[:6])
    score = torch.einsum("bihd,bjhd->bhij", Qh, Kh) / 16 ** 0.5
    decay = (g.transpose(1, 2)[..., :, None] - g.transpose(1, 2)[..., None, :]).exp()
    want = (torch.einsum("bihd,bjhd->bhij", q, k.expand_as(q)) / 16 ** 0.5
            + lam[:, None, None] * decay * torch.einsum("bihn,bjhn->bhij", Cr, Br))
    causal = torch.ones(40, 40, dtype=torch.bool, device=q.device).tril()
    torch.testing.assert_close(score[..., causal], want[..., causal], rtol=1e-4, atol=1e-4)


def test_empty_and_bad_inputs():
    x = make_inputs(1, 0, 2, 1, 8, 4, torch.float32)
    Qh, Kh = augment_qk(*(x[k] for k in NAMES), 16)
    assert Qh.shape == Kh.shape == (1, 0, 2, 16)
    x = make_inputs(1, 3, 2, 1, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="width"):
        augment_qk(*(x[k] for k in NAMES), 11)
    with pytest.raises(TypeError, match="float64"):
        augment_qk(x["q"].double(), x["k"].double(), *(x[k] for k in NAMES[2:]))


def test_custom_op_registration():
    x = make_inputs(1, 9, 2, 1, 8, 4, torch.float32)
    s = (8 ** 0.25 * x["lam"].sqrt()).detach()
    args = (*(x[k].requires_grad_() for k in NAMES[:5]), s.requires_grad_(), x["c"].requires_grad_(), 16)
    torch.library.opcheck(torch.ops.sisa_kernels.augment_fwd.default, args)


def test_torch_compile_fullgraph():
    x = make_inputs(1, 9, 2, 1, 8, 4, torch.float32)

    def fn(*args):
        Qh, Kh = augment_qk(*args, 16)
        return (Qh * Kh).sum() + Qh.square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [x[k].detach().requires_grad_() for k in NAMES]
    grads_c = torch.autograd.grad(compiled(*leaves), leaves)
    grads_e = torch.autograd.grad(fn(*leaves), leaves)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)
