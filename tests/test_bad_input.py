"""Bad input gives a clear ValueError/TypeError naming the argument, before any compute."""
import re

import pytest
import torch

import sisa
import sisa.ops

from conftest import DEVICE

NAMES = ("q", "k", "v", "C", "B", "log_alpha", "theta", "lam")


def good(b=2, t=5, h=4, hk=2, d=8, n=4, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    x = {"q": torch.randn(b, t, h, d, generator=gen), "k": torch.randn(b, t, hk, d, generator=gen),
         "v": torch.randn(b, t, hk, d, generator=gen), "C": torch.randn(b, t, h, n, generator=gen),
         "B": torch.randn(b, t, h, n, generator=gen), "log_alpha": -torch.rand(b, t, h, generator=gen),
         "theta": 0.1 * torch.randn(b, t, h, n // 2, generator=gen), "lam": 0.2 + torch.rand(h, generator=gen)}
    return {k: v.to(DEVICE, sd if k in ("log_alpha", "lam") else dtype) for k, v in x.items()}


def call(x, **kw):
    return sisa.sisa_attention(*(x[k] for k in NAMES), **kw)


def with_(**changes):
    x = good()
    x.update(changes)
    return x


def raises_naming(name, x, exc=(ValueError, TypeError), **kw):
    """The call raises ``exc`` and the message names ``name`` as a word."""
    with pytest.raises(exc) as info:
        call(x, **kw)
    msg = str(info.value)
    assert re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", msg), f"{name!r} not named in: {msg}"
    return msg


@pytest.fixture
def no_compute(monkeypatch):
    """Fail loudly if any backend is reached: validation must come first."""
    def boom(*a, **k):
        raise AssertionError("a backend ran before the inputs were validated")
    for fn in ("naive_scan", "naive_attention", "sdpa_attention"):
        monkeypatch.setattr(sisa.ops, fn, boom)


g = good()   # shapes: b=2, t=5, h=4, hk=2, d=8, n=4

BAD_SHAPES = [
    # (argument named, replacement inputs, what is wrong)
    ("k", {"k": torch.randn(2, 6, 2, 8), "v": torch.randn(2, 6, 2, 8)}, "sequence length"),
    ("v", {"v": torch.randn(2, 6, 2, 8)}, "sequence length"),
    ("C", {"C": torch.randn(2, 6, 4, 4), "B": torch.randn(2, 6, 4, 4), "log_alpha": -torch.rand(2, 6, 4),
           "theta": torch.randn(2, 6, 4, 2)}, "sequence length"),
    ("log_alpha", {"log_alpha": -torch.rand(2, 6, 4)}, "sequence length"),
    ("k", {"k": torch.randn(3, 5, 2, 8), "v": torch.randn(3, 5, 2, 8)}, "batch"),
    ("v", {"v": torch.randn(1, 5, 2, 8)}, "batch"),
    ("C", {"C": torch.randn(1, 5, 4, 4)}, "batch"),
    ("theta", {"theta": torch.randn(1, 5, 4, 2)}, "batch"),
    ("k", {"k": torch.randn(2, 5, 3, 8), "v": torch.randn(2, 5, 3, 8)}, "heads 4 vs kv heads 3"),
    ("d_state", {"C": torch.randn(2, 5, 4, 3), "B": torch.randn(2, 5, 4, 3), "theta": torch.randn(2, 5, 4, 1)},
     "odd d_state"),
    ("B", {"B": torch.randn(2, 5, 4, 6)}, "B wider than C"),
    ("C", {"C": torch.randn(2, 5, 2, 4)}, "C with kv heads instead of heads"),
    ("theta", {"theta": torch.randn(2, 5, 4, 4)}, "theta n wide, not n/2"),
    ("theta", {"theta": torch.randn(2, 5, 4)}, "theta missing its last dim"),
    ("lam", {"lam": torch.rand(5) + 0.1}, "lam (h+1,)"),
    ("lam", {"lam": torch.rand(1, 4) + 0.1}, "lam (1, h)"),
    ("lam", {"lam": torch.tensor(0.5)}, "lam scalar"),
    ("k", {"k": torch.randn(2, 5, 2, 6), "v": torch.randn(2, 5, 2, 6)}, "head dim of k differs"),
    ("v", {"v": torch.randn(2, 5, 2, 6)}, "head dim of v differs"),
    ("q", {"q": torch.randn(2, 5, 32)}, "q 3-D"),
]


@pytest.mark.parametrize("name,changes,why", BAD_SHAPES, ids=[w for _, _, w in BAD_SHAPES])
def test_bad_shapes(name, changes, why, no_compute):
    raises_naming(name, with_(**{k: v.to(DEVICE) for k, v in changes.items()}), ValueError)


@pytest.mark.parametrize("name", NAMES)
def test_non_floating(name, no_compute):
    x = good()
    x[name] = (x[name] * 10).to(torch.int64)
    raises_naming(name, x, TypeError)


@pytest.mark.parametrize("name", NAMES)
def test_non_tensor(name, no_compute):
    x = good()
    x[name] = x[name].cpu().numpy() if name != "lam" else x[name].tolist()
    raises_naming(name, x, TypeError)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_devices(name, no_compute):
    """One input on the 'meta' device: a ValueError naming it, not a crash inside a
    backend (no_compute proves no backend was reached)."""
    x = good()
    x[name] = x[name].to("meta")
    msg = raises_naming(name, x, ValueError)
    assert "meta" in msg and "device" in msg


def test_positive_log_alpha(no_compute):
    x = good()
    x["log_alpha"][0, 2, 1] = 0.25
    raises_naming("log_alpha", x, ValueError)
    x = good()
    x["log_alpha"][1, 0, 0] = float("-inf")
    raises_naming("log_alpha", x, ValueError)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_check_inputs_false_skips_value_checks(backend):
    """check_inputs=False trusts the values (no host sync): the call runs. (What it
    returns for invalid values is unspecified: naive clamps exp(g_i - g_j) at 1.)"""
    x = good()
    x["log_alpha"][0, 2, 1] = 0.25
    out = call(x, backend=backend, check_inputs=False)
    assert out.shape == x["q"].shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="log_alpha"):     # and with the default it does not run
        call(x, backend=backend)
    x = good()
    x["lam"][0] = -0.5
    assert call(x, backend=backend, check_inputs=False).shape == x["q"].shape
    with pytest.raises(ValueError, match="lam"):
        call(x, backend=backend)


@pytest.mark.parametrize("bad", [0.0, -0.3, float("nan"), float("inf")])
def test_lam_not_positive_or_not_finite(bad, no_compute):
    x = good()
    x["lam"][2] = bad
    raises_naming("lam", x, ValueError)


@pytest.mark.parametrize("backend", ["flash", "Naive", "", "triton2"])
def test_unknown_backend(backend, no_compute):
    raises_naming("backend", good(), ValueError, backend=backend)


def test_scan_rejects_attention_only_backend():
    """The scan has no sdpa form; asking for one is an error naming the argument."""
    x = good()
    with pytest.raises(ValueError, match="backend"):
        sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"], backend="sdpa")


def test_triton_unavailable_is_a_clear_runtime_error(monkeypatch, no_compute):
    """On a CPU without the interpreter (and on devices with no kernels) asking for
    triton explicitly raises RuntimeError with the reason, never falls back silently."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = {k: v.cpu() for k, v in good().items()}
    with pytest.raises(RuntimeError, match="triton.*unavailable.*TRITON_INTERPRET"):
        call(x, backend="triton")
    with pytest.raises(RuntimeError, match="triton.*unavailable"):
        sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"], backend="triton")
    assert "triton" not in sisa.available_backends("cpu")
    meta = {k: v.to("meta") for k, v in x.items()}
    with pytest.raises(RuntimeError, match="meta"):
        call(meta, backend="triton", check_inputs=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
def test_empty_sequence(backend, dtype):
    x = good(t=0, dtype=dtype)
    if backend == "triton" and dtype == torch.float64:      # the kernels are 16/32-bit
        with pytest.raises(TypeError, match="float64"):
            call(x, backend=backend)
        return
    out = call(x, backend=backend)
    assert out.shape == (2, 0, 4, 8) and out.dtype == dtype


@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
def test_empty_batch(backend):
    """Batch 0: an empty output of the right shape, and empty gradients."""
    x = {k: (v[:0] if k != "lam" else v).requires_grad_() for k, v in good().items()}
    out = call(x, backend=backend)
    assert out.shape == (0, 5, 4, 8)
    out.sum().backward()
    assert x["q"].grad.shape == x["q"].shape


def test_scan_bad_initial_state(no_compute):
    x = good()
    args = (x["C"], x["B"], x["log_alpha"], x["theta"])
    with pytest.raises(ValueError, match=re.escape("initial_state[0] (g0)")):
        sisa.ssm_importance_scan(*args, initial_state=(torch.zeros(2, 3), torch.zeros(2, 4, 2)))
    with pytest.raises(ValueError, match=re.escape("initial_state[1] (phi0)")):
        sisa.ssm_importance_scan(*args, initial_state=(torch.zeros(2, 4), torch.zeros(2, 4, 4)))
    with pytest.raises(TypeError, match="initial_state"):
        sisa.ssm_importance_scan(*args, initial_state=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=re.escape("initial_state[0] (g0)")):
        sisa.ssm_importance_scan(*args, initial_state=(torch.zeros(2, 4, device="meta"), torch.zeros(2, 4, 2)))


NAN_AT = {"q": (0, 3, 1, 2), "log_alpha": (1, 2, 0), "k": (1, 3, 0, 5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("where", sorted(NAN_AT))
@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
def test_nan_in_gives_nan_out(backend, where, dtype):
    """One NaN in: no crash, NaN wherever the maths gives NaN, and every finite output
    equals the clean maths (nothing silently replaced, e.g. by zeros).

    In the maths a NaN in q poisons its own row; a NaN decay at position s poisons g
    from s on (rows >= s of that head); a NaN key poisons rows >= its position.
    """
    if backend == "triton" and dtype == torch.float64:
        return                                                  # the kernels are 16/32-bit (tested above)
    x = good(dtype=dtype)
    x[where][NAN_AT[where]] = float("nan")
    out = call(x, backend=backend)
    expect = torch.zeros_like(out, dtype=torch.bool)
    if where == "q":
        b, s, hh, _ = NAN_AT["q"]
        expect[b, s, hh] = True
    elif where == "log_alpha":
        b, s, hh = NAN_AT["log_alpha"]
        expect[b, s:, hh] = True
    else:
        b, s, kh, _ = NAN_AT["k"]
        rep = x["q"].shape[2] // x["k"].shape[2]
        expect[b, s:, kh * rep:(kh + 1) * rep] = True
    assert torch.isnan(out[expect]).all(), (
        f"{backend}: NaN in {where} should give NaN out, got e.g. {out[expect][:4].tolist()}")
    finite = torch.isfinite(out)
    assert not (finite & expect).any()
    clean = sisa.sisa_attention(*(x[k].double() for k in NAMES), backend="naive")
    assert torch.equal(torch.isnan(clean), expect)              # the maths itself, as described
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert ((out.double() - clean).abs()[finite] <= tol).all(), f"{backend}: finite outputs are wrong"
    if backend == "naive":                                      # the judge is exactly as NaN as the maths
        assert torch.equal(finite, ~expect)


BAD_SCALES = [(0.0, ValueError), (-0.3, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
              ("0.3", TypeError), (True, TypeError), (torch.tensor(0.3), TypeError)]


@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
@pytest.mark.parametrize("scale,exc", BAD_SCALES, ids=[repr(s) for s, _ in BAD_SCALES])
def test_bad_softmax_scale(scale, exc, backend, no_compute):
    """Every backend refuses a scale that is not a finite positive number (sdpa
    takes sqrt(lam / scale); 0 or negative was NaN there, a string passed triton)."""
    raises_naming("softmax_scale", good(), exc, softmax_scale=scale, backend=backend)
    with pytest.raises(exc, match="softmax_scale"):
        sisa.paper_sdpa_attention(*(good()[k] for k in NAMES), softmax_scale=scale)


@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
@pytest.mark.parametrize("scale", [1e-3, 1e30])
def test_extreme_softmax_scale(scale, backend):
    """Finite positive scales are exact at both ends (1e30: the running max must not
    start at a finite floor that the logits undercut)."""
    x = good()
    ref = call({k: v.double() for k, v in x.items()}, backend="naive", softmax_scale=scale)
    out = call(x, backend=backend, softmax_scale=scale)
    assert torch.isfinite(out).all() and (out.double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["k", "v", "C", "B"])
def test_mixed_dtypes(name, no_compute):
    """q, k, v, C and B share one dtype: a TypeError naming the odd one out, on every
    backend alike (naive computed, sdpa raised torch's error, triton asserted)."""
    for backend in sisa.available_backends(DEVICE):
        x = good()
        x[name] = x[name].half()
        raises_naming(name, x, TypeError, backend=backend)


@pytest.mark.parametrize("name", ["log_alpha", "theta", "lam"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_state_inputs_take_any_float_dtype(name, dtype):
    """log_alpha, theta and lam are used in float32: any float dtype gives the same
    answer on every backend."""
    x = good()
    x[name] = x[name].to(dtype)
    ref = call({k: v.double() for k, v in x.items()}, backend="naive")
    for backend in sisa.available_backends(DEVICE):
        assert (call(x, backend=backend).double() - ref).abs().max() < 1e-5, backend


def test_unsupported_dtype(no_compute):
    x = good()
    x["q"] = x["q"].to(torch.complex64)
    raises_naming("q", x, TypeError)


@pytest.mark.parametrize("what", ["d_state 0", "head_dim 0"])
def test_zero_sizes(what, no_compute):
    """d_state 0 was accepted by naive and sdpa and refused by triton; head dim 0
    divided by zero. Both are ValueErrors on every backend."""
    if what == "d_state 0":
        x = with_(C=torch.randn(2, 5, 4, 0), B=torch.randn(2, 5, 4, 0), theta=torch.randn(2, 5, 4, 0))
        name = "d_state"
    else:
        x = with_(q=torch.randn(2, 5, 4, 0), k=torch.randn(2, 5, 2, 0), v=torch.randn(2, 5, 2, 0))
        name = "head_dim"
    for backend in sisa.available_backends(DEVICE):
        raises_naming(name, {k: v.to(DEVICE) for k, v in x.items()}, ValueError, backend=backend)


def test_meta_tensors():
    """All inputs on 'meta': the value checks say they cannot run (not an .item()
    error); check_inputs=False traces shapes."""
    meta = {k: v.to("meta") for k, v in good().items()}
    with pytest.raises(ValueError, match="meta.*check_inputs=False"):
        call(meta, backend="naive")
    assert call(meta, backend="naive", check_inputs=False).shape == meta["q"].shape


def test_total_decay_beyond_float32():
    """-1e38 twice overflows the float32 cumsum (naive and sdpa gave NaN, triton
    finite values off by 1.1): a ValueError naming log_alpha."""
    x = good()
    x["log_alpha"][0, 1, 2] = -1e38
    x["log_alpha"][0, 3, 2] = -1e38
    msg = raises_naming("log_alpha", x, ValueError)
    assert "float32" in msg
    with pytest.raises(ValueError, match="log_alpha"):
        sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"])
    x = good()
    x["log_alpha"][0, 1, 2] = -1e4                      # strong but representable: runs
    assert torch.isfinite(call(x)).all()


def test_scan_initial_state_must_be_finite(no_compute):
    x = good()
    g0 = torch.zeros(2, 4, device=DEVICE)
    g0[1, 3] = float("-inf")
    with pytest.raises(ValueError, match=re.escape("initial_state[0] (g0)")):
        sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"],
                                 initial_state=(g0, torch.zeros(2, 4, 2, device=DEVICE)))


def test_packed_scan_initial_state_errors():
    """With cu_seqlens the state has one row per sequence: errors say so, and a
    tensor instead of a pair is the same TypeError as without cu_seqlens."""
    x = {k: v[:1] if k != "lam" else v for k, v in good().items()}
    args = (x["C"], x["B"], x["log_alpha"], x["theta"])
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=re.escape("(n_seqs, h) = (2, 4), got (1, 4)")):
        sisa.ssm_importance_scan(*args, cu_seqlens=cu, initial_state=(torch.zeros(1, 4), torch.zeros(1, 4, 2)))
    with pytest.raises(TypeError, match="initial_state must be a pair"):
        sisa.ssm_importance_scan(*args, cu_seqlens=cu, initial_state=torch.zeros(2, 4))
    state = (torch.zeros(2, 4, device=DEVICE), torch.zeros(2, 4, 2, device=DEVICE))
    assert sisa.ssm_importance_scan(*args, cu_seqlens=cu, initial_state=state)[3][0].shape == (2, 4)


def test_cuda_listed_only_with_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: triton may be listed for it")
    assert "triton" not in sisa.available_backends("cuda")
    assert "no CUDA device" in sisa.backends.triton_unavailable_reason("cuda")


@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_v_is_exact(value, backend):
    """One inf (or NaN) in v at key s: rows before s are untouched, rows from s on are
    inf (NaN) in that one column and exact in the others (sdpa made whole rows NaN;
    the kernel's diagonal tiles multiply masked zeros by it)."""
    x = good()
    x["v"][0, 3, 1, 2] = value
    out = call(x, backend=backend)
    ref = call({k: v.double() for k, v in x.items()}, backend="naive")
    rep = 2
    hit = torch.zeros_like(out, dtype=torch.bool)
    hit[0, 3:, rep:2 * rep, 2] = True
    assert torch.equal(~torch.isfinite(ref), hit)                # the maths, as described
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.equal(torch.isinf(out), torch.isinf(ref))
    assert (out.double() - ref).abs()[~hit].max() < 1e-5


@pytest.mark.parametrize("scale", [1e38, 3e30, 1e-31, 1e-45])
def test_softmax_scale_beyond_float32(scale, no_compute):
    """A scale float32 cannot hold or multiply by with headroom gave NaN on every
    backend (issue 20): a ValueError naming softmax_scale, on every backend and the
    paper's baseline."""
    for backend in sisa.available_backends(DEVICE):
        raises_naming("softmax_scale", good(), ValueError, softmax_scale=scale, backend=backend)
    with pytest.raises(ValueError, match="softmax_scale"):
        sisa.paper_sdpa_attention(*(good()[k] for k in NAMES), softmax_scale=scale)


@pytest.mark.parametrize("what", ["lam float64 1e300", "lam float32 1e38", "lam over a tiny scale",
                                  "theta float64 1e39"])
def test_scalars_beyond_float32(what, no_compute):
    """float64 values past float32's range (lam 1e300, theta 1e39), lam 1e38 in float32,
    or lam / softmax_scale past 1e30 (sdpa's s = sqrt(lam / scale)): NaN on every
    backend where the maths is finite (issue 20). Now a ValueError naming the argument."""
    x, kw = good(), {}
    if what == "lam float64 1e300":
        x["lam"] = torch.full_like(x["lam"], 1e300, dtype=torch.float64)
    elif what == "lam float32 1e38":
        x["lam"] = torch.full_like(x["lam"], 1e38)
    elif what == "lam over a tiny scale":
        x["lam"] = torch.full_like(x["lam"], 100.0)
        kw["softmax_scale"] = 1e-29
    else:
        x["theta"] = x["theta"].double()
        x["theta"][1, 2, 3, 1] = 1e39
    name = "theta" if what.startswith("theta") else "lam"
    for backend in sisa.available_backends(DEVICE):
        raises_naming(name, x, ValueError, backend=backend, **kw)
    if name == "theta":
        with pytest.raises(ValueError, match="theta"):
            sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"])


def test_large_representable_scalars_run():
    """Just inside the limits: finite and exact (float64 judge)."""
    x = good()
    x["theta"][0, 0, 0, 0] = 1e3
    x["lam"][0] = 1e6
    ref = call({k: v.double() for k, v in x.items()}, backend="naive")
    for backend in sisa.available_backends(DEVICE):
        assert (call(x, backend=backend).double() - ref).abs().max() < 1e-4, backend


@pytest.mark.parametrize("scale", [0.7, 0.05, 2.0])
def test_paper_baseline_custom_scale(scale):
    """paper_sdpa_attention(softmax_scale=s) scaled the SSM term by s sqrt(d) (error
    1.69 at s = 0.7): it computes the paper's formula, SSM term unscaled, for any scale
    (no clamp engages at this decay)."""
    x = {k: v.double() for k, v in good(t=9).items()}
    ref = call(x, backend="naive", softmax_scale=scale)
    out = sisa.paper_sdpa_attention(*(x[k] for k in NAMES), softmax_scale=scale)
    assert (out - ref).abs().max() < 1e-10


def test_paper_baseline_empty_sequence():
    """t = 0 passed validation and then crashed in amax."""
    x = good(t=0)
    out = sisa.paper_sdpa_attention(*(x[k] for k in NAMES))
    assert out.shape == x["q"].shape


@pytest.mark.parametrize("check_inputs", [True, False])
@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
def test_cu_seqlens_on_another_device(backend, check_inputs):
    """cu_seqlens on another device than the inputs (meta counts as one) was never
    checked: triton read garbage (outputs of 1e19) with check_inputs=False, the
    reference paths failed with an unrelated error. A ValueError naming cu_seqlens,
    from the op, the scan, the layer and the model (no host sync needed)."""
    x = {k: v[:1] if k != "lam" else v for k, v in good().items()}
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device="meta")
    raises_naming("cu_seqlens", x, ValueError, backend=backend, cu_seqlens=cu, check_inputs=check_inputs)
    with pytest.raises(ValueError, match="cu_seqlens"):
        sisa.ssm_importance_scan(x["C"], x["B"], x["log_alpha"], x["theta"], cu_seqlens=cu, check_inputs=check_inputs)
    from sisa.model import SISAConfig, SISAModel
    for use_ssm in (True, False):
        model = SISAModel(SISAConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, d_state=4, d_ff=16,
                                     use_ssm=use_ssm)).to(DEVICE)
        ids = torch.zeros(1, 5, dtype=torch.long, device=DEVICE)
        with pytest.raises(ValueError, match="cu_seqlens"):
            model(ids, cu_seqlens=cu, check_inputs=check_inputs)
        with pytest.raises(ValueError, match="cu_seqlens"):
            model.layers[0].attn(torch.zeros(1, 5, 16, device=DEVICE), cu_seqlens=cu, check_inputs=check_inputs)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_meta_tensors_every_reference_backend(backend):
    """sdpa on meta tensors raised 'Tensor.item() cannot be called on meta tensors'
    (plan_chunks) even with check_inputs=False, though available_backends('meta')
    lists it: shapes come out, on either reference backend."""
    assert backend in sisa.available_backends("meta")
    meta = {k: v.to("meta") for k, v in good().items()}
    assert call(meta, backend=backend, check_inputs=False).shape == meta["q"].shape


@pytest.mark.parametrize("use_ssm", [True, False])
def test_model_built_on_meta_runs(use_ssm):
    """A model built under torch.device('meta') (how a large model is built before its
    weights are loaded, or to trace shapes) runs a forward, with or without a mask,
    a cached step, and a backward."""
    from sisa.model import SISAConfig, SISAModel
    with torch.device("meta"):
        model = SISAModel(SISAConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=2, d_state=4, d_ff=64,
                                     use_ssm=use_ssm))
    ids = torch.zeros(2, 7, dtype=torch.long, device="meta")
    logits = model(ids)
    assert logits.shape == (2, 7, 50) and logits.device.type == "meta"
    logits.sum().backward()
    assert model.embed.weight.grad.shape == model.embed.weight.shape
    assert model(ids, attention_mask=torch.ones(2, 7, dtype=torch.long, device="meta")).shape == (2, 7, 50)
    caches = model.new_caches()
    model(ids, caches=caches)
    assert model(ids[:, :1], caches=caches).shape == (2, 1, 50)


@pytest.mark.parametrize("backend", sisa.available_backends(DEVICE))
def test_double_backward(backend):
    """A double backward (create_graph=True) raised unclear errors from PyTorch's fused
    SDPA backward or the kernels' custom op: naive supports it (checked against float64
    gradgradcheck), sdpa and triton raise one NotImplementedError naming naive."""
    x = {k: v.double() if backend != "triton" else v for k, v in good(t=3, h=2, hk=1, d=4, n=2).items()}
    args = [x[k].requires_grad_(True) for k in NAMES]
    out = call(dict(zip(NAMES, args)), backend=backend)
    if backend == "naive":
        fn = lambda *a: call(dict(zip(NAMES, a)), backend="naive")   # noqa: E731
        assert torch.autograd.gradgradcheck(fn, args)
        return
    with pytest.raises(NotImplementedError, match=rf"backend '{backend}'.*naive"):
        torch.autograd.grad(out.square().sum(), args[0], create_graph=True)
    first = torch.autograd.grad(call(dict(zip(NAMES, args)), backend=backend).square().sum(), args)
    assert all(torch.isfinite(g).all() for g in first)                   # first derivatives as before


def test_meta_tensors_with_cu_seqlens():
    """Packed inputs and cu_seqlens all on meta: naive and sdpa read cu_seqlens' values
    to split the sequences ('Cannot copy out of meta tensor'); now the shapes come out,
    from the op, the scan (one state row per sequence), the layer and the model."""
    meta = {k: (v[:1] if k != "lam" else v).to("meta") for k, v in good().items()}
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device="meta")
    for backend in ("naive", "sdpa"):
        assert call(meta, backend=backend, cu_seqlens=cu, check_inputs=False).shape == meta["q"].shape
    *_, (g_last, phi_last) = sisa.ssm_importance_scan(meta["C"], meta["B"], meta["log_alpha"], meta["theta"],
                                                      cu_seqlens=cu, check_inputs=False)
    assert g_last.shape == (2, 4) and phi_last.shape == (2, 4, 2)
    from sisa.model import SISAConfig, SISAModel
    for use_ssm in (True, False):
        with torch.device("meta"):
            model = SISAModel(SISAConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, d_state=4, d_ff=16,
                                         use_ssm=use_ssm))
        assert model(torch.zeros(1, 5, dtype=torch.long, device="meta"), cu_seqlens=cu).shape == (1, 5, 11)


def test_lam_past_the_scalar_limit_is_an_error_even_with_a_large_scale():
    """lam = 1e38 with softmax_scale = 1e30 passes lam / scale <= 1e30, but lam times an
    SSM product of ~3 overflows float32 (NaN out where float64 is finite): lam itself is
    capped (found by the long hypothesis profile)."""
    gen = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 3, 1, 4, generator=gen) for _ in range(3)] + \
        [torch.randn(1, 3, 1, 2, generator=gen) * 3000, torch.randn(1, 3, 1, 2, generator=gen) * 1e-3,
         -torch.rand(1, 3, 1, generator=gen), torch.zeros(1, 3, 1, 1)]
    for backend in ("naive", "sdpa"):
        with pytest.raises(ValueError, match="lam must be at most"):
            sisa.sisa_attention(*x, torch.full((1,), 1e38), softmax_scale=1e30, backend=backend)
