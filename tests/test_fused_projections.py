"""The layer's fused projections (sisa.layer.fused_linear): one matmul over W_Q, W_K, W_V,
W_C, W_B, alpha_proj, theta_proj equals the modules called one by one (outputs and
gradients), and a projection PEFT or a hook replaced still runs as itself. Fusion runs
by default on CUDA only (sisa.layer.FUSE_MIN_ROWS); the tests switch it on for the CPU."""
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import sisa
import sisa.layer

ROWS = 2 * 48
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


class CountLinear(TorchFunctionMode):
    """Counts F.linear calls (an nn.Linear's forward is one)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def layer(use_ssm, n_kv_heads, dtype, seed=0):
    torch.manual_seed(seed)
    m = sisa.SISAAttention(64, 4, d_state=8, n_kv_heads=n_kv_heads, use_ssm=use_ssm, backend="sdpa").to(dtype)
    with torch.no_grad():                          # weights away from the init, so every term matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def run(m, x, fused, monkeypatch):
    """(output, x.grad, {name: grad}, F.linear calls) of one forward and backward."""
    monkeypatch.setattr(sisa.layer, "FUSE_MIN_ROWS", {x.device.type: 1} if fused else {})
    m.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with CountLinear() as count:
        y = m(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in m.named_parameters()}, count.calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_ssm", [True, False])
@pytest.mark.parametrize("n_kv_heads", [None, 2], ids=["mha", "gqa"])
def test_fused_equals_unfused(dtype, use_ssm, n_kv_heads, monkeypatch):
    m = layer(use_ssm, n_kv_heads, dtype)
    x = torch.randn(2, ROWS // 2, 64, dtype=dtype)
    y0, gx0, gp0, calls0 = run(m, x, False, monkeypatch)
    y1, gx1, gp1, calls1 = run(m, x, True, monkeypatch)
    assert (calls0, calls1) == ((8 if use_ssm else 4), 2)          # the projections, then W_O
    torch.testing.assert_close(y1, y0, **TOL[dtype])
    torch.testing.assert_close(gx1, gx0, **TOL[dtype])
    assert gp1.keys() == gp0.keys()
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **TOL[dtype], msg=name)


def test_projections_match_explicit_products(monkeypatch):
    """float64: the fused split gives each projection's own product (and the methods
    callers use, qkv and ssm_inputs, agree with projections)."""
    monkeypatch.setattr(sisa.layer, "FUSE_MIN_ROWS", {"cpu": 1})
    m = layer(True, 2, torch.float64)
    x = torch.randn(3, 40, 64, dtype=torch.float64)
    q, k, v, (C, B, log_alpha, theta) = m.projections(x)
    torch.testing.assert_close(v.flatten(2), x @ m.W_V.weight.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(C.flatten(2), x @ m.W_C.weight.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(B.flatten(2), x @ m.W_B.weight.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(theta.flatten(2), x @ m.theta_proj.weight.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(log_alpha, -F.softplus(x @ m.alpha_proj.weight.T + m.alpha_proj.bias),
                               rtol=0, atol=1e-13)
    torch.testing.assert_close(q, sisa.layer.rope((x @ m.W_Q.weight.T).unflatten(-1, (4, 16))), rtol=0, atol=1e-13)
    assert k.shape == v.shape == (3, 40, 2, 16)
    for got, want in zip(m.qkv(x) + m.ssm_inputs(x), (q, k, v, C, B, log_alpha, theta)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)      # other groups: other rounding


def test_hooked_projection_runs_as_itself(monkeypatch):
    """A module with a forward hook is called (not bypassed by the fused matmul); the
    others still fuse."""
    monkeypatch.setattr(sisa.layer, "FUSE_MIN_ROWS", {"cpu": 1})
    m = layer(True, None, torch.float32)
    x = torch.randn(1, 80, 64)
    ref = m(x)
    m.W_C.register_forward_hook(lambda mod, inp, out: out * 2)
    with CountLinear() as count:
        doubled = m.projections(x)[3][0]
    assert count.calls == 2                         # six fused, W_C on its own
    torch.testing.assert_close(doubled, 2 * (x @ m.W_C.weight.T).unflatten(-1, (4, 8)))
    assert not torch.allclose(m(x), ref)


def test_peft_wrapped_projections(monkeypatch):
    """LoRA replaces W_Q, W_V, W_B, W_C with PEFT's wrappers: those run through PEFT
    (the adapters change the output and get gradients), the rest fuse, and the result
    equals the merged model's, fused or not."""
    peft = pytest.importorskip("peft", reason="the PEFT test needs peft: pip install peft")
    monkeypatch.setattr(sisa.layer, "FUSE_MIN_ROWS", {"cpu": 1})
    base = layer(True, 2, torch.float32)
    x = torch.randn(2, 48, 64)
    before = base(x).detach()
    model = peft.get_peft_model(base, peft.LoraConfig(target_modules=["W_Q", "W_V", "W_B", "W_C"], r=4,
                                                      lora_alpha=8, init_lora_weights=False))
    attn = model.base_model.model
    assert not any(sisa.layer._plain_linear(getattr(attn, n)) for n in ("W_Q", "W_V", "W_B", "W_C"))
    with CountLinear() as count:
        y = model(x)
    assert not torch.allclose(y, before, atol=1e-4)                 # the adapters are in the output
    y.square().sum().backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    merged = model.merge_and_unload()
    assert sisa.layer._plain_linear(merged.W_B)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), y.detach(), rtol=1e-5, atol=1e-6)
        monkeypatch.setattr(sisa.layer, "FUSE_MIN_ROWS", {})
        torch.testing.assert_close(merged(x), y.detach(), rtol=1e-5, atol=1e-6)
    assert count.calls > 2                          # PEFT's layers call their base and adapters themselves
