"""torch.compile(fullgraph=True, dynamic=True) of the op, the layer and the model on
the default CPU path (sdpa): no graph break, no recompile for a second sequence
length, forward and all gradients equal to eager. Small shapes and the aot_eager
backend (Dynamo, fake tensors and AOT autograd; Inductor's code generation adds
minutes on a CPU and nothing these properties depend on)."""
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import sisa

LENGTHS = (12, 20)


def op_inputs(t, b=2, h=2, hk=1, d=8, n=4):
    g = torch.Generator().manual_seed(t)
    q = torch.randn(b, t, h, d, generator=g)
    k, v = torch.randn(b, t, hk, d, generator=g), torch.randn(b, t, hk, d, generator=g)
    C, B = torch.randn(b, t, h, n, generator=g), torch.randn(b, t, h, n, generator=g)
    log_alpha = -0.5 * torch.rand(b, t, h, generator=g)
    theta = 0.3 * torch.randn(b, t, h, n // 2, generator=g)
    lam = torch.full((h,), 0.4)
    return [x.requires_grad_() for x in (q, k, v, C, B, log_alpha, theta, lam)]


def run_both(fn, make_inputs, params=()):
    """Compile fn; per length, check forward and gradients (inputs and params) against
    eager; return the number of frames Dynamo compiled after each length."""
    counters.clear()
    params = list(params)
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=cnt)
    frames = []
    for t in LENGTHS:
        inputs = make_inputs(t)
        leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad] + list(params)
        results = []
        for f in (compiled, fn):
            out = f(*inputs)
            grads = torch.autograd.grad(out.square().sum(), leaves)
            results.append((out, grads))
        (out, grads), (ref, ref_grads) = results
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        for i, (a, b) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad {i} at t={t}: {m}")
        frames.append(cnt.frame_count)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    return frames


def test_op_compiles_whole_with_value_checks():
    # check_inputs=True: the value checks run inside the graph (sisa::checked_lam).
    frames = run_both(sisa.sisa_attention, op_inputs)
    assert frames[0] >= 1 and frames[1] == frames[0], f"recompiled for a second length: {frames}"


def test_compiled_op_still_rejects_bad_values():
    compiled = torch.compile(sisa.sisa_attention, fullgraph=True, dynamic=True, backend="aot_eager")
    inputs = [x.detach() for x in op_inputs(12)]
    inputs[5] = inputs[5].abs()                                   # log_alpha > 0
    try:
        compiled(*inputs)
    except ValueError as exc:
        assert "log_alpha" in str(exc)
    else:
        raise AssertionError("a positive log_alpha passed under torch.compile")


def test_layer_and_model_compile_whole():
    torch.manual_seed(0)
    layer = sisa.SISAAttention(d_model=16, n_heads=2, d_state=4, n_kv_heads=1)
    frames = run_both(layer, lambda t: [torch.randn(2, t, 16, generator=torch.Generator().manual_seed(t)).requires_grad_()],
                      layer.parameters())
    assert frames[1] == frames[0], f"layer recompiled for a second length: {frames}"
    cfg = sisa.SISAConfig(vocab_size=32, d_model=16, n_heads=2, n_layers=1, d_state=4, d_ff=24)
    model = sisa.SISAModel(cfg)
    frames = run_both(model, lambda t: [torch.randint(0, 32, (2, t), generator=torch.Generator().manual_seed(t))],
                      model.parameters())
    assert frames[1] == frames[0], f"model recompiled for a second length: {frames}"
