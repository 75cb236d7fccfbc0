"""Layer, model, converter, parameter groups and presets (docs/design.md section 2).

The model is checked against an independent functional implementation of the
paper's model written here from a paper-named state dict: complex-number rotations
(not the package's rotate_pairs), the SSM term as C_i^T R(Phi_i - Phi_j) B_j, an
explicit float64 score matrix.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import sisa
from sisa import SISAAttention, SISAConfig, SISAModel

F64 = torch.float64


# ---------------------------------------------------------------- independent reference

def rms_norm(x, w, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def as_complex(x):
    """(..., 2m) interleaved pairs -> (..., m) complex."""
    return torch.complex(x[..., 0::2], x[..., 1::2])


def rope_ref(x, base=10000.0):
    """x (b, t, h, d): pair m at position p turns by p * base^(-2m/d)."""
    t, d = x.shape[1], x.shape[-1]
    ang = torch.arange(t, dtype=F64)[:, None] * base ** (-torch.arange(0, d, 2, dtype=F64) / d)
    z = as_complex(x) * torch.exp(1j * ang)[None, :, None, :]
    return torch.stack((z.real, z.imag), -1).flatten(-2)


def attention_ref(q, k, v, C, B, log_alpha, theta, lam):
    """score = q.k/sqrt(d) + lam prod_{s=j+1..i} alpha_s * Re(sum_m C_im conj(B_jm) e^{i(Phi_im - Phi_jm)}).

    q (b, t, h, d), k, v (b, t, hk, d), C, B (b, t, h, n), log_alpha (b, t, h),
    theta (b, t, h, n/2), lam (h,). Returns (b, t, h, d).
    """
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    phi = theta.cumsum(1)
    cz = as_complex(C) * torch.exp(1j * phi)
    bz = as_complex(B) * torch.exp(1j * phi)
    ssm = torch.einsum("bihm,bjhm->bhij", cz, bz.conj()).real
    decay = torch.zeros(b, h, t, t, dtype=F64)
    alpha = log_alpha.exp()
    for i in range(t):
        acc = torch.ones(b, h, dtype=F64)
        decay[:, :, i, i] = acc
        for j in range(i - 1, -1, -1):           # prod of alpha over (j, i]
            acc = acc * alpha[:, j + 1]
            decay[:, :, i, j] = acc
    score = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d) + lam[None, :, None, None] * decay * ssm
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    p = torch.softmax(score.masked_fill(~causal, -math.inf), -1)
    return torch.einsum("bhij,bjhd->bihd", p, v)


def model_ref(sd, ids, n_heads, d_state, use_ssm=True):
    """The paper's model, functionally, from its own parameter names."""
    x = sd["embed.weight"][ids]
    b, t, dm = x.shape
    d = dm // n_heads
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    for i in range(n_layers):
        p = lambda name: sd[f"layers.{i}.{name}"]  # noqa: E731
        hx = rms_norm(x, p("attn_norm.weight"))
        q = rope_ref((hx @ p("W_Q.weight").T).unflatten(-1, (n_heads, d)))
        k = rope_ref((hx @ p("W_K.weight").T).unflatten(-1, (-1, d)))
        v = (hx @ p("W_V.weight").T).unflatten(-1, (-1, d))
        if use_ssm:
            C = (hx @ p("W_C.weight").T).unflatten(-1, (n_heads, d_state))
            B = (hx @ p("W_B.weight").T).unflatten(-1, (n_heads, d_state))
            log_alpha = -F.softplus(hx @ p("alpha_proj.weight").T + p("alpha_proj.bias"))
            theta = (hx @ p("theta_proj.weight").T).unflatten(-1, (n_heads, d_state // 2))
            lam = F.softplus(p("lambda_raw"))
        else:
            C = B = torch.zeros(b, t, n_heads, 2, dtype=F64)
            log_alpha, theta, lam = torch.zeros(b, t, n_heads, dtype=F64), torch.zeros(b, t, n_heads, 1), torch.zeros(n_heads, dtype=F64)
        o = attention_ref(q, k, v, C, B, log_alpha, theta.double(), lam)
        x = x + o.flatten(-2) @ p("W_O.weight").T
        hx = rms_norm(x, p("ffn_norm.weight"))
        x = x + (F.silu(hx @ p("ffn.w_gate.weight").T) * (hx @ p("ffn.w_up.weight").T)) @ p("ffn.w_down.weight").T
    return rms_norm(x, sd["final_norm.weight"]) @ sd["embed.weight"].T


def paper_state_dict(vocab, dm, h, n, layers, d_ff, seed=0):
    """Random float64 weights under the paper's names, scaled so every term matters."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, generator=gen, dtype=F64)

    sd = {"embed.weight": rnd(vocab, dm), "final_norm.weight": rnd(dm, std=0.1, mean=1.0)}
    w = dm ** -0.5
    for i in range(layers):
        L = f"layers.{i}."
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            sd[L + name + ".weight"] = rnd(dm, dm, std=w)
        sd[L + "W_B.weight"] = rnd(h * n, dm, std=1.5 * w)
        sd[L + "W_C.weight"] = rnd(h * n, dm, std=1.5 * w)
        sd[L + "alpha_proj.weight"] = rnd(h, dm, std=w)
        sd[L + "alpha_proj.bias"] = rnd(h, std=0.5, mean=-0.5)      # strong-ish decay: ~0.5-1 nats/token
        sd[L + "theta_proj.weight"] = rnd(h * n // 2, dm, std=w)
        sd[L + "lambda_raw"] = rnd(h, std=0.5, mean=0.5).float().double()   # representable in float32
        sd[L + "attn_norm.weight"] = rnd(dm, std=0.1, mean=1.0)
        sd[L + "ffn_norm.weight"] = rnd(dm, std=0.1, mean=1.0)
        sd[L + "ffn.w_gate.weight"] = rnd(d_ff, dm, std=w)
        sd[L + "ffn.w_up.weight"] = rnd(d_ff, dm, std=w)
        sd[L + "ffn.w_down.weight"] = rnd(dm, d_ff, std=d_ff ** -0.5)
    return sd


SMALL = dict(vocab=61, dm=32, h=4, n=4, layers=2, d_ff=24)


def small_model(backend, sd=None, **overrides):
    cfg = SISAConfig(vocab_size=SMALL["vocab"], d_model=SMALL["dm"], n_heads=SMALL["h"],
                     n_layers=SMALL["layers"], d_state=SMALL["n"], d_ff=SMALL["d_ff"], backend=backend,
                     **overrides)
    model = SISAModel(cfg).double()
    if sd is not None:
        model.load_state_dict(sisa.convert_reference_state_dict(sd), strict=True)
    return model


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_model_matches_independent_reference(backend):
    sd = paper_state_dict(**SMALL)
    ids = torch.randint(0, SMALL["vocab"], (2, 13), generator=torch.Generator().manual_seed(1))
    ref = model_ref(sd, ids, SMALL["h"], SMALL["n"])
    # The test has teeth: the SSM term changes the logits a lot on these weights.
    no_ssm = dict(sd)
    for i in range(SMALL["layers"]):
        no_ssm[f"layers.{i}.lambda_raw"] = torch.full((SMALL["h"],), -40.0, dtype=F64)
    assert (model_ref(no_ssm, ids, SMALL["h"], SMALL["n"]) - ref).abs().max() > 0.1
    model = small_model(backend, sd)
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 13, SMALL["vocab"]) and logits.dtype == F64
    assert (logits - ref).abs().max() < 1e-9


def test_transformer_baseline_matches_reference():
    """use_ssm=False: the same model without the score bias (and no SSM weights)."""
    sd = {k: v for k, v in paper_state_dict(**SMALL).items()
          if not any(s in k for s in ("W_B", "W_C", "alpha_proj", "theta_proj", "lambda_raw"))}
    ids = torch.randint(0, SMALL["vocab"], (2, 9), generator=torch.Generator().manual_seed(2))
    model = small_model("sdpa", sd, use_ssm=False)
    with torch.no_grad():
        assert (model(ids) - model_ref(sd, ids, SMALL["h"], SMALL["n"], use_ssm=False)).abs().max() < 1e-9


def test_converter_keys():
    sd = paper_state_dict(**SMALL)
    out = sisa.convert_reference_state_dict(sd)
    assert "layers.1.attn.W_Q.weight" in out and "layers.0.attn.lambda_raw" in out
    assert "layers.0.attn.alpha_proj.bias" in out and "layers.1.ffn.w_down.weight" in out
    assert len(out) == len(sd)
    assert all(out[k2] is sd[k1] for k1, k2 in [("layers.0.W_C.weight", "layers.0.attn.W_C.weight"),
                                                ("embed.weight", "embed.weight")])


def test_converter_unknown_key_raises():
    sd = paper_state_dict(**SMALL)
    sd["layers.0.W_D.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match="W_D"):
        sisa.convert_reference_state_dict(sd)
    with pytest.raises(KeyError, match="rotary"):
        sisa.convert_reference_state_dict({"rotary.inv_freq": torch.zeros(4)})


def test_converter_tied_lm_head():
    """A separate lm_head.weight equal to embed is accepted (and dropped); a different one is an error."""
    sd = paper_state_dict(**SMALL)
    sd["lm_head.weight"] = sd["embed.weight"].clone()
    out = sisa.convert_reference_state_dict(sd)
    assert "lm_head.weight" not in out
    small_model("naive").load_state_dict(out, strict=True)
    sd["lm_head.weight"] = sd["embed.weight"] + 1e-3
    with pytest.raises(ValueError, match="lm_head"):
        sisa.convert_reference_state_dict(sd)


# ---------------------------------------------------------------- the layer

def layer_x(b=2, t=11, dm=32, seed=0, dtype=F64):
    return torch.randn(b, t, dm, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def sharpen(layer, seed=0):
    """Weights large enough that the SSM term and the decay matter (init makes them tiny)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.W_C.weight, layer.W_B.weight, layer.theta_proj.weight):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=F64))
        layer.alpha_proj.bias.fill_(0.0)
        layer.lambda_raw.fill_(0.5)
    return layer


def test_layer_output_shape_and_dtype():
    layer = SISAAttention(32, 4, d_state=8)
    x = layer_x(dtype=torch.float32)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_layer_gradients_reach_every_parameter(backend):
    layer = SISAAttention(32, 4, d_state=8, n_kv_heads=2, backend=backend).double()
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"W_Q.weight", "W_K.weight", "W_V.weight", "W_O.weight", "W_B.weight", "W_C.weight",
                     "alpha_proj.weight", "alpha_proj.bias", "theta_proj.weight", "lambda_raw"}
    out = layer(layer_x())
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, f"no gradient reaches {name}"
        assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name


def test_layer_initialisation():
    torch.manual_seed(0)
    layer = SISAAttention(256, 4, d_state=16)
    assert torch.equal(layer.alpha_proj.bias, torch.full((4,), -5.0))
    assert layer.lambda_raw.dtype == torch.float32 and torch.equal(layer.lambda_raw, torch.full((4,), -1.0))
    assert torch.allclose(layer.lam(), torch.full((4,), math.log1p(math.exp(-1.0))))
    assert abs(layer.lam()[0].item() - 0.313) < 1e-3
    th = layer.theta_proj.weight
    assert th.shape == (4 * 16 // 2, 256) and abs(th.std().item() - 0.01) < 0.0006 and abs(th.mean().item()) < 5e-4
    for lin in (layer.W_Q, layer.W_K, layer.W_V, layer.W_O, layer.W_B, layer.W_C, layer.alpha_proj):
        assert abs(lin.weight.std().item() - 0.02) < 0.002 and abs(lin.weight.mean().item()) < 2e-3
    assert layer.W_B.weight.shape == (64, 256) and layer.alpha_proj.weight.shape == (4, 256)
    # per-token decay at init ~ 1 - exp(-softplus(-5)) ~ 0.0067 for x ~ 0
    la = layer.ssm_inputs(torch.zeros(1, 1, 256))[2]
    assert torch.allclose(-la, torch.full_like(la, math.log1p(math.exp(-5.0))))
    assert abs(-la[0, 0, 0].item() - 0.0067) < 1e-4


def test_model_initialisation():
    torch.manual_seed(0)
    model = SISAModel(SISAConfig(vocab_size=500, d_model=128, n_heads=2, n_layers=1, d_state=4, d_ff=256))
    for p in (model.embed.weight, model.layers[0].ffn.w_gate.weight, model.layers[0].ffn.w_down.weight):
        assert abs(p.std().item() - 0.02) < 0.002
    for p in (model.final_norm.weight, model.layers[0].attn_norm.weight, model.layers[0].ffn_norm.weight):
        assert torch.equal(p, torch.ones_like(p))
    assert model.final_norm.eps == 1e-6 and model.layers[0].attn_norm.eps == 1e-6
    assert not any("lm_head" in n for n, _ in model.named_parameters())   # tied head


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_lambda_raw_stays_float32(dtype):
    """Under 16-bit casts lambda_raw stays float32 (the paper's treatment); the rest is cast."""
    layer = SISAAttention(32, 4, d_state=8).to(dtype)
    assert layer.lambda_raw.dtype == torch.float32
    assert all(p.dtype == dtype for n, p in layer.named_parameters() if n != "lambda_raw")
    assert layer.lam().dtype == torch.float32
    model = small_model("sdpa").to(dtype)
    assert all(blk.attn.lambda_raw.dtype == torch.float32 for blk in model.layers)
    out = layer(layer_x(dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    layer.float()
    assert layer.lambda_raw.dtype == torch.float32 and layer.W_Q.weight.dtype == torch.float32


def test_layer_backends_agree_float64():
    layer = sharpen(SISAAttention(32, 4, d_state=8, n_kv_heads=2).double())
    x = layer_x(t=40)
    outs = []
    for bk in ("naive", "sdpa"):
        layer.backend = bk
        outs.append(layer(x))
    layer.backend = "naive"
    layer.lambda_raw.data.fill_(-40.0)
    assert (layer(x) - outs[0]).abs().max() > 1e-2       # the SSM term is not negligible here
    assert (outs[0] - outs[1]).abs().max() < 1e-12


def test_layer_gqa_equals_repeated_kv_heads():
    """n_kv_heads=2 of 4 equals full MHA whose K/V projections repeat each kv head."""
    gqa = sharpen(SISAAttention(32, 4, d_state=8, n_kv_heads=2, backend="naive").double())
    assert gqa.W_K.weight.shape == (16, 32) and gqa.W_V.weight.shape == (16, 32)
    mha = SISAAttention(32, 4, d_state=8, backend="naive").double()
    sd = gqa.state_dict()
    for name in ("W_K.weight", "W_V.weight"):
        sd[name] = sd[name].unflatten(0, (2, 8)).repeat_interleave(2, dim=0).flatten(0, 1)
    mha.load_state_dict(sd)
    x = layer_x(t=17)
    assert (gqa(x) - mha(x)).abs().max() < 1e-12


def test_layer_matches_reference_attention():
    """One layer against the functional reference above (RoPE, SSM term, GQA)."""
    layer = sharpen(SISAAttention(32, 4, d_state=8, n_kv_heads=2, backend="sdpa").double())
    x = layer_x(t=15)
    d, h = 8, 4
    q = rope_ref((x @ layer.W_Q.weight.T).unflatten(-1, (h, d)))
    k = rope_ref((x @ layer.W_K.weight.T).unflatten(-1, (2, d)))
    v = (x @ layer.W_V.weight.T).unflatten(-1, (2, d))
    C = (x @ layer.W_C.weight.T).unflatten(-1, (h, 8))
    B = (x @ layer.W_B.weight.T).unflatten(-1, (h, 8))
    la = -F.softplus(x @ layer.alpha_proj.weight.T + layer.alpha_proj.bias)
    theta = (x @ layer.theta_proj.weight.T).unflatten(-1, (h, 4))
    lam = F.softplus(layer.lambda_raw)
    ref = attention_ref(q, k, v, C, B, la, theta, lam).flatten(-2) @ layer.W_O.weight.T
    with torch.no_grad():
        assert (layer(x) - ref).abs().max() < 1e-12


def test_use_ssm_false():
    layer = SISAAttention(32, 4, d_state=8, use_ssm=False).double()
    assert {n for n, _ in layer.named_parameters()} == {"W_Q.weight", "W_K.weight", "W_V.weight", "W_O.weight"}
    x = layer_x(t=9)
    q = rope_ref((x @ layer.W_Q.weight.T).unflatten(-1, (4, 8)))
    k = rope_ref((x @ layer.W_K.weight.T).unflatten(-1, (4, 8)))
    v = (x @ layer.W_V.weight.T).unflatten(-1, (4, 8))
    t = x.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8)
    o = torch.einsum("bhij,bjhd->bihd", torch.softmax(s.masked_fill(~causal, -math.inf), -1), v)
    with torch.no_grad():
        assert (layer(x) - o.flatten(-2) @ layer.W_O.weight.T).abs().max() < 1e-12


def test_layer_rejects_bad_config():
    with pytest.raises(ValueError, match="n_heads"):
        SISAAttention(30, 4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        SISAAttention(32, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_state"):
        SISAAttention(32, 4, d_state=5)


# ---------------------------------------------------------------- the model: forward, presets, groups

@pytest.mark.parametrize("use_ssm", [True, False])
def test_model_forward_backward(use_ssm):
    cfg = SISAConfig(vocab_size=97, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=48, use_ssm=use_ssm)
    model = SISAModel(cfg)
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(0))
    logits = model(ids)
    assert logits.shape == (2, 21, 97) and logits.dtype == torch.float32
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


D_FF = {"50M": {16: 1936, 32: 1832, 64: 1616, 128: 1192},              # the paper's widths rounded down to 8
        "152M": {16: 2904, 32: 2744, 64: 2424, 128: 1784},
        "369M": {32: 2512, 64: 2080, 128: 1232}}
PAPER_D_FF = {"50M": {16: 1939, 32: 1832, 64: 1619, 128: 1192},        # the paper's table (multiple_of=1)
              "152M": {16: 2908, 32: 2748, 64: 2428, 128: 1788},
              "369M": {32: 2512, 64: 2085, 128: 1232}}
SHAPES = {"50M": (512, 8, 6, 2048), "152M": (768, 12, 12, 3072), "369M": (1024, 16, 24, 2944)}
PAIRS = [(s, n) for s in D_FF for n in D_FF[s]]


@pytest.mark.parametrize("scale,n", PAIRS, ids=[f"{s}-n{n}" for s, n in PAIRS])
def test_preset_d_ff_and_shapes(scale, n):
    cfg = SISAConfig.preset(scale, d_state=n)
    dm, h, layers, t_ff = SHAPES[scale]
    assert (cfg.d_ff, cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_state) == (D_FF[scale][n], dm, h, layers, n)
    assert cfg.d_model // cfg.n_heads == 64 and cfg.vocab_size == 50277 and cfg.use_ssm
    base = SISAConfig.preset(scale, d_state=n, use_ssm=False)
    assert base.d_ff == t_ff and not base.use_ssm
    assert cfg.d_ff % 8 == 0 and cfg.d_ff <= PAPER_D_FF[scale][n] < cfg.d_ff + 8
    assert sisa.matched_d_ff(dm, h, n, t_ff, multiple_of=1) == PAPER_D_FF[scale][n]


def test_matched_d_ff_multiple_of():
    assert sisa.matched_d_ff(512, 8, 16, 2048, multiple_of=64) == 1920
    assert sisa.matched_d_ff(32, 4, 4, 22, multiple_of=8) == 7            # below the multiple: left as it is
    assert sisa.matched_d_ff(32, 4, 4, 23, multiple_of=8) == 8
    for bad, err in ((0, ValueError), (8.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="multiple_of"):
            sisa.matched_d_ff(512, 8, 16, 2048, multiple_of=bad)


def param_count(vocab, dm, h, layers, d_ff, n, use_ssm):
    """Counted from docs/design.md section 2's shapes, independently of the package."""
    per = 4 * dm * dm + 2 * dm + 3 * dm * d_ff
    if use_ssm:
        per += 2 * (h * n) * dm + (h * dm + h) + (h * n // 2) * dm + h
    return vocab * dm + layers * per + dm


@pytest.mark.parametrize("scale,n", PAIRS, ids=[f"{s}-n{n}" for s, n in PAIRS])
def test_preset_param_counts_match(scale, n):
    """SISA's parameter count is within 1% of the Transformer's (meta device: no memory)."""
    sisa_cfg, base_cfg = SISAConfig.preset(scale, d_state=n), SISAConfig.preset(scale, d_state=n, use_ssm=False)
    with torch.device("meta"):
        sisa_n, base_n = SISAModel(sisa_cfg).num_parameters(), SISAModel(base_cfg).num_parameters()
    dm, h, layers, t_ff = SHAPES[scale]
    assert sisa_n == param_count(50277, dm, h, layers, sisa_cfg.d_ff, n, True)
    assert base_n == param_count(50277, dm, h, layers, t_ff, n, False)
    assert abs(sisa_n - base_n) / base_n < 0.01
    assert abs(base_n / 1e6 - int(scale[:-1])) / int(scale[:-1]) < 0.05     # the names are honest


def test_preset_unknown_name():
    with pytest.raises(ValueError, match="preset"):
        SISAConfig.preset("7B")


@pytest.mark.parametrize("use_ssm", [True, False])
def test_param_groups(use_ssm):
    model = small_model("naive", use_ssm=use_ssm)
    lr = 6e-4
    groups = sisa.param_groups(model, lr=lr, weight_decay=0.1)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())       # every parameter exactly once
    by_name = {id(p): n for n, p in model.named_parameters()}
    names = [{by_name[id(p)] for p in g["params"]} for g in groups]
    lam = [i for i, ns in enumerate(names) if any(n.endswith("lambda_raw") for n in ns)]
    if use_ssm:
        assert len(lam) == 1
        g, ns = groups[lam[0]], names[lam[0]]
        assert ns == {f"layers.{i}.attn.lambda_raw" for i in range(SMALL["layers"])}
        assert g["lr"] == pytest.approx(lr * 0.1) and g["weight_decay"] == 0.0
    else:
        assert not lam
    for i, (g, ns) in enumerate(zip(groups, names)):
        if i in lam or not ns:
            continue
        no_decay = any(n.endswith("norm.weight") or n.endswith(".bias") for n in ns)
        if no_decay:
            assert g["weight_decay"] == 0.0 and all(n.endswith("norm.weight") or n.endswith(".bias") for n in ns)
        else:
            assert g["weight_decay"] == 0.1 and all(model.get_parameter(n).dim() == 2 for n in ns)
        assert g["lr"] == lr
    flat_no_decay = set().union(*(ns for g, ns in zip(groups, names) if g["weight_decay"] == 0.0))
    assert "final_norm.weight" in flat_no_decay and "layers.1.ffn_norm.weight" in flat_no_decay
    if use_ssm:
        assert "layers.0.attn.alpha_proj.bias" in flat_no_decay
    assert "embed.weight" not in flat_no_decay
    torch.optim.AdamW(groups, betas=(0.9, 0.95)).step()     # AdamW accepts the groups as they are
