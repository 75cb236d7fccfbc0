"""The CPU sdpa path's reuse of Qhat/Khat/v buffers across calls (sisa/sdpa.py's
workspace) and its folded rotation under torch.compile.

A reused buffer must never leak into a result: outputs of earlier calls stay as
they were, threads do not share buffers, autograd never sees a reused buffer, and
the eager and compiled builds agree.
"""
import threading

import torch

import sisa
from sisa import sdpa
from sisa.testing import NAMES, Case, make_inputs

CASE = Case(2, 45, 4, 2, 32, 8, decay=0.05)


def inputs(seed, case=CASE, dtype=torch.float32):
    x = make_inputs(case, torch.float64, "cpu", seed=seed)
    return {k: (v.to(dtype) if k in ("q", "k", "v", "C", "B") else v.float()) for k, v in x.items()}


def run(x, **kw):
    return sisa.sisa_attention(*(x[k] for k in NAMES), backend="sdpa", **kw)


def exact(x):
    return sisa.sisa_attention(*(x[k].double() for k in NAMES), backend="naive")


def test_earlier_outputs_survive_later_calls():
    """Two no-grad calls in a row: the second reuses the buffers, yet both results
    match float64, and the first is untouched by the second."""
    x1, x2 = inputs(1), inputs(2)
    with torch.no_grad():
        o1 = run(x1)
        kept = o1.clone()
        assert sdpa._workspace.buffers, "the no-grad CPU call should have filled the workspace"
        o2 = run(x2)
    assert torch.equal(o1, kept)
    for o, x in ((o1, x1), (o2, x2)):
        assert (o.double() - exact(x)).abs().max() < 1e-5
    sdpa.release_workspace()
    assert not sdpa._workspace.buffers


def test_shape_and_dtype_changes_reuse_safely():
    """A smaller, then a larger, then a half-precision call: each exact."""
    small, big = Case(1, 20, 4, 4, 16, 4, decay=0.1), Case(1, 70, 4, 1, 48, 16, decay=0.1)
    with torch.no_grad():
        for case, dtype, tol in ((big, torch.float32, 1e-5), (small, torch.float32, 1e-5),
                                 (big, torch.float16, 2e-2)):
            x = inputs(3, case, dtype)
            err = (run(x).double() - exact(x)).abs().max()
            assert err < tol, f"{case} {dtype}: err {err:.3g}"


def test_threads_do_not_share_buffers():
    """Four threads call concurrently with different inputs: every result exact."""
    xs = [inputs(10 + i) for i in range(4)]
    refs = [exact(x) for x in xs]
    errors = [None] * 4
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait()
        with torch.no_grad():
            for _ in range(5):
                errors[i] = max(errors[i] or 0.0, (run(xs[i]).double() - refs[i]).abs().max().item())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert max(errors) < 1e-5, errors


def test_autograd_calls_do_not_use_the_workspace():
    """Buffers saved for backward are fresh: a later no-grad call cannot change the
    gradients of an earlier graph."""
    x = {k: v.clone().requires_grad_() for k, v in inputs(4).items()}
    sdpa._workspace.buffers.clear()
    out = run(x)
    assert not sdpa._workspace.buffers
    with torch.no_grad():
        run(inputs(5))                       # fills the workspace meanwhile
    out.square().sum().backward()
    xd = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    sisa.sisa_attention(*(xd[k] for k in NAMES), backend="naive").square().sum().backward()
    for k in NAMES:
        err = (x[k].grad.double() - xd[k].grad).abs().max() / (1 + xd[k].grad.abs().max())
        assert err < 1e-4, f"d{k}: {err:.3g}"


def test_large_calls_skip_the_workspace(monkeypatch):
    monkeypatch.setattr(sdpa, "WORKSPACE_BYTES", 1024)
    sdpa._workspace.buffers.clear()
    x = inputs(6)
    with torch.no_grad():
        err = (run(x).double() - exact(x)).abs().max()
    assert not sdpa._workspace.buffers
    assert err < 1e-5


def test_compiled_sdpa_path_matches_eager():
    """Under torch.compile the rotation is written out pair by pair, with the decay
    factor folded in (sisa.naive.rotate_pairs): the same values as eager, and
    gradients as close to float64 as eager's."""
    torch._dynamo.reset()
    x = {k: v.clone().requires_grad_() for k, v in inputs(7).items()}
    fn = torch.compile(lambda *a: sisa.sisa_attention(*a, backend="sdpa"), backend="aot_eager")
    out = fn(*(x[k] for k in NAMES))
    out.square().sum().backward()
    ref = run({k: v.detach() for k, v in x.items()})
    torch.testing.assert_close(out, ref)
    xd = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    sisa.sisa_attention(*(xd[k] for k in NAMES), backend="naive").square().sum().backward()
    for k in NAMES:
        err = (x[k].grad.double() - xd[k].grad).abs().max() / (1 + xd[k].grad.abs().max())
        assert err < 1e-5, f"d{k}: relative err {err:.3g}"
