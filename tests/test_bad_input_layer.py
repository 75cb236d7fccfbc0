"""Bad input to the modules (SISAAttention, SISAConfig, SISAModel, generate) and the
checkpoint converter: a ValueError or TypeError naming the argument, raised at
construction where possible and otherwise before any compute."""
import math
import re
import subprocess
import sys
import types
from collections import OrderedDict

import pytest
import torch

import sisa
from sisa import SISAAttention, SISAConfig, SISAModel
from sisa.cache import LayerCache

CFG = dict(vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=48, backend="naive")


def raises_naming(name, fn, *args, exc=(ValueError, TypeError), **kw):
    """fn(*args, **kw) raises ``exc`` and the message names ``name`` as a word."""
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", msg), f"{name!r} not named in: {msg}"
    return msg


def no_compute(module):
    """``module`` with its forward (or every attention projection's) replaced by a
    tripwire: validation must come before any compute."""
    def boom(*a, **k):
        raise AssertionError("computation started before the inputs were validated")
    targets = [module.W_Q, module.W_K, module.W_V] if isinstance(module, SISAAttention) else [module]
    for m in targets:
        m.forward = boom
    return module


def small_model(**overrides):
    torch.manual_seed(0)
    return SISAModel(SISAConfig(**{**CFG, **overrides}))


def ids(b=2, t=5, vocab=CFG["vocab_size"]):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- SISAAttention(...)

BAD_LAYER_ARGS = [
    # (argument named, exception, keyword arguments on top of SISAAttention(32, 4, d_state=4))
    ("n_heads", ValueError, dict(n_heads=0)),
    ("n_heads", ValueError, dict(n_heads=-4)),
    ("n_heads", TypeError, dict(n_heads=4.0)),
    ("n_heads", TypeError, dict(n_heads=True)),
    ("n_heads", TypeError, dict(n_heads="4")),
    ("n_heads", ValueError, dict(n_heads=64)),               # more heads than d_model
    ("d_model", ValueError, dict(d_model=0)),
    ("d_model", ValueError, dict(d_model=-32)),
    ("d_model", TypeError, dict(d_model=32.0)),
    ("d_model", ValueError, dict(d_model=12)),               # head dim 3: RoPE needs pairs
    ("n_kv_heads", ValueError, dict(n_kv_heads=0)),          # not "n_heads" in disguise
    ("n_kv_heads", ValueError, dict(n_kv_heads=-2)),
    ("n_kv_heads", TypeError, dict(n_kv_heads=2.0)),
    ("n_kv_heads", TypeError, dict(n_kv_heads=True)),
    ("n_kv_heads", ValueError, dict(n_kv_heads=3)),
    ("backend", ValueError, dict(backend="bogus")),
    ("backend", ValueError, dict(backend="Triton")),
    ("backend", TypeError, dict(backend=None)),
    ("rope_base", ValueError, dict(rope_base=0.0)),
    ("rope_base", ValueError, dict(rope_base=-10000.0)),
    ("rope_base", ValueError, dict(rope_base=math.nan)),
    ("rope_base", ValueError, dict(rope_base=math.inf)),
    ("rope_base", TypeError, dict(rope_base="10000")),
    ("rope_base", TypeError, dict(rope_base=True)),
    ("d_state", ValueError, dict(d_state=5)),
    ("d_state", ValueError, dict(d_state=0)),
    ("d_state", TypeError, dict(d_state=4.0)),
    ("use_ssm", TypeError, dict(use_ssm="no")),
]


@pytest.mark.parametrize("name,exc,kw", BAD_LAYER_ARGS, ids=[f"{n}={list(kw.values())[0]!r}"
                                                            for n, _, kw in BAD_LAYER_ARGS])
def test_layer_rejects_bad_argument_at_construction(name, exc, kw):
    raises_naming(name, SISAAttention, **{"d_model": 32, "n_heads": 4, "d_state": 4, **kw}, exc=exc)


def test_layer_good_arguments():
    assert SISAAttention(32, 4, d_state=4, n_kv_heads=None).n_kv_heads == 4
    assert SISAAttention(32, 4, d_state=4, n_kv_heads=2).n_kv_heads == 2
    SISAAttention(32, 4, d_state=0, use_ssm=False)           # d_state is unused without the SSM
    for backend in ("auto", "naive", "sdpa", "triton"):      # the name only: availability is checked later
        assert SISAAttention(32, 4, d_state=4, backend=backend).backend == backend


# ---------------------------------------------------------------- SISAAttention.forward(x)

def layer():
    return SISAAttention(32, 4, d_state=4, backend="naive")


BAD_X = [
    ("not a tensor", TypeError, [[0.0] * 32] * 5),
    ("numpy array", TypeError, torch.randn(2, 5, 32).numpy()),
    ("2-D", ValueError, torch.randn(5, 32)),
    ("4-D", ValueError, torch.randn(2, 5, 4, 8)),
    ("wrong width", ValueError, torch.randn(2, 5, 16)),
    ("int64", TypeError, torch.ones(2, 5, 32, dtype=torch.int64)),
    ("bool", TypeError, torch.ones(2, 5, 32, dtype=torch.bool)),
    ("float64 into a float32 layer", TypeError, torch.randn(2, 5, 32, dtype=torch.float64)),
]


@pytest.mark.parametrize("why,exc,x", BAD_X, ids=[w for w, _, _ in BAD_X])
def test_layer_forward_rejects_bad_x(why, exc, x):
    msg = raises_naming("x", no_compute(layer()), x, exc=exc)
    if exc is ValueError:
        assert "(b, t, 32)" in msg, msg
    if why.startswith("float64"):
        assert "float32" in msg and "float64" in msg, msg


def test_layer_forward_dtype_mismatch_on_meta():
    """The dtype check works where autocast does not exist (the meta device)."""
    lay = SISAAttention(32, 4, d_state=4).to("meta")
    raises_naming("x", lay, torch.zeros(1, 3, 32, device="meta", dtype=torch.float64), exc=TypeError)


def test_layer_forward_rejects_bad_cache():
    raises_naming("cache", no_compute(layer()), torch.randn(1, 3, 32), cache=[], exc=TypeError)


def test_layer_forward_good_inputs():
    lay = layer()
    x = torch.randn(2, 5, 32)
    assert lay(x).shape == (2, 5, 32)
    assert lay.double()(x.double()).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):       # autocast mixes dtypes on purpose
        assert layer()(x.bfloat16()).dtype == torch.bfloat16


def test_import_does_not_pull_in_dynamo():
    """``import sisa`` stays fast: torch.nn.attention.bias (which imports torch._dynamo)
    is imported only when a plain-attention decode step needs its mask."""
    code = "import sys, sisa; print('torch._dynamo' in sys.modules, 'torch.nn.attention.bias' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out


# ---------------------------------------------------------------- SISAConfig / SISAModel(config)

BAD_CONFIG = [
    ("vocab_size", ValueError, 0), ("vocab_size", ValueError, -5), ("vocab_size", TypeError, 61.0),
    ("d_model", ValueError, 0), ("d_model", ValueError, -32),
    ("n_heads", ValueError, 0), ("n_heads", ValueError, -1), ("n_heads", TypeError, None),
    ("n_layers", ValueError, 0), ("n_layers", ValueError, -2), ("n_layers", TypeError, 2.5),
    ("d_ff", ValueError, 0), ("d_ff", ValueError, -48), ("d_ff", TypeError, True),
    ("norm_eps", ValueError, 0.0), ("norm_eps", ValueError, -1e-6), ("norm_eps", ValueError, math.nan),
    ("norm_eps", TypeError, None),
    ("n_kv_heads", ValueError, 0), ("rope_base", ValueError, 0.0), ("d_state", ValueError, 3),
    ("backend", ValueError, "bogus"), ("use_ssm", TypeError, 1),
]


@pytest.mark.parametrize("name,exc,value", BAD_CONFIG, ids=[f"{n}={v!r}" for n, _, v in BAD_CONFIG])
def test_config_rejects_bad_field_when_built(name, exc, value):
    raises_naming(name, SISAConfig, **{**CFG, name: value}, exc=exc)
    raises_naming(name, SISAConfig(**CFG).replace, **{name: value}, exc=exc)


def test_model_revalidates_a_mutated_config():
    cfg = SISAConfig(**CFG)
    cfg.n_layers = 0
    raises_naming("n_layers", SISAModel, cfg, exc=ValueError)
    raises_naming("config", SISAModel, dict(CFG), exc=TypeError)


def test_preset_too_small_for_d_state():
    """The matched FFN width would be <= 0: an error naming d_ff, not an empty FFN."""
    raises_naming("d_ff", SISAConfig.preset, "50M", d_state=4096, exc=ValueError)


# ---------------------------------------------------------------- SISAModel.forward(ids, caches)

BAD_IDS = [
    ("list", TypeError, [[1, 2, 3]]),
    ("float", TypeError, torch.zeros(2, 5)),
    ("bool", TypeError, torch.zeros(2, 5, dtype=torch.bool)),
    ("uint8", TypeError, torch.zeros(2, 5, dtype=torch.uint8)),
    ("1-D", ValueError, torch.zeros(5, dtype=torch.long)),
    ("3-D", ValueError, torch.zeros(2, 5, 1, dtype=torch.long)),
    ("id == vocab_size", ValueError, torch.tensor([[1, 2, 61]])),
    ("negative id", ValueError, torch.tensor([[1, -1, 2]])),
    ("int32 id too large", ValueError, torch.tensor([[1000]], dtype=torch.int32)),
]


@pytest.mark.parametrize("why,exc,bad", BAD_IDS, ids=[w for w, _, _ in BAD_IDS])
def test_model_forward_rejects_bad_ids(why, exc, bad):
    model = small_model()
    for block in model.layers:
        no_compute(block)
    msg = raises_naming("ids", model, bad, exc=exc)
    if "id" in why:
        assert "[0, 61)" in msg, msg


def test_model_forward_rejects_bad_caches():
    model = small_model()
    x = ids()
    for block in model.layers:
        no_compute(block)
    msg = raises_naming("caches", model, x, caches=model.new_caches()[:1], exc=ValueError)
    assert "expected 2" in msg and "got 1" in msg, msg
    raises_naming("caches", model, x, caches=model.new_caches() * 2, exc=ValueError)
    raises_naming("caches", model, x, caches=[], exc=ValueError)
    raises_naming("caches", model, x, caches=LayerCache(), exc=TypeError)
    raises_naming("caches", model, x, caches=[LayerCache(), None], exc=TypeError)
    raises_naming("caches", model, x[:1], caches=model.new_caches(),
                  cu_seqlens=torch.tensor([0, 5], dtype=torch.int32), exc=ValueError)
    uneven = model.new_caches()
    uneven[0].length = 3
    raises_naming("caches", model, x, caches=uneven, exc=ValueError)


def test_model_forward_good_inputs():
    model = small_model()
    x = ids()
    assert model(x).shape == (2, 5, 61)
    assert torch.equal(model(x.int()), model(x))                     # int32 ids too
    assert model(x[:, :0]).shape == (2, 0, 61)
    caches = model.new_caches()
    assert model(x, caches=tuple(caches)).shape == (2, 5, 61)
    assert model(x[:, :1], caches=caches).shape == (2, 1, 61)


# ---------------------------------------------------------------- SISAModel.generate(...)

BAD_GENERATE = [
    ("max_new_tokens", ValueError, dict(max_new_tokens=-1)),
    ("max_new_tokens", TypeError, dict(max_new_tokens=2.5)),
    ("max_new_tokens", TypeError, dict(max_new_tokens=3.0)),
    ("max_new_tokens", TypeError, dict(max_new_tokens=True)),
    ("top_k", ValueError, dict(top_k=0)),
    ("top_k", ValueError, dict(top_k=-3)),
    ("top_k", TypeError, dict(top_k=2.0)),
    ("top_k", TypeError, dict(top_k=True)),
    ("temperature", ValueError, dict(temperature=-0.5)),
    ("temperature", ValueError, dict(temperature=math.nan)),
    ("temperature", ValueError, dict(temperature=math.inf)),
    ("temperature", TypeError, dict(temperature="hot")),
    ("temperature", TypeError, dict(temperature=True)),
    ("generator", TypeError, dict(generator=1234)),
    ("input_ids", TypeError, dict(input_ids=[[1, 2]])),
    ("input_ids", TypeError, dict(input_ids=torch.zeros(1, 3))),
    ("input_ids", ValueError, dict(input_ids=torch.zeros(3, dtype=torch.long))),
    ("input_ids", ValueError, dict(input_ids=torch.zeros(1, 0, dtype=torch.long))),
    ("input_ids", ValueError, dict(input_ids=torch.tensor([[5, 61]]))),
]


@pytest.mark.parametrize("name,exc,kw", BAD_GENERATE, ids=[f"{n}={list(kw.values())[0]!r}"[:40]
                                                          for n, _, kw in BAD_GENERATE])
def test_generate_rejects_bad_argument(name, exc, kw):
    model = no_compute(small_model())
    raises_naming(name, model.generate, **{"input_ids": ids(1, 3), "max_new_tokens": 2, **kw}, exc=exc)


def test_generate_good_arguments():
    model = small_model()
    prompt = ids(2, 3)
    assert torch.equal(model.generate(prompt, 0), prompt)
    greedy = model.generate(prompt, 3)
    assert greedy.shape == (2, 6) and torch.equal(greedy[:, :3], prompt)
    assert torch.equal(model.generate(prompt, 3, temperature=0.0, top_k=None), greedy)
    assert torch.equal(model.generate(prompt, 3, temperature=1.0, top_k=1), greedy)   # top-1 sampling is greedy
    gen = torch.Generator().manual_seed(0)
    assert model.generate(prompt, 3, temperature=0.7, top_k=5, generator=gen).shape == (2, 6)


# ---------------------------------------------------------------- convert_reference_state_dict(sd)

@pytest.mark.parametrize("bad", [[("embed.weight", torch.zeros(3))], torch.zeros(3), None, "embed.weight"],
                         ids=["list", "tensor", "None", "str"])
def test_converter_rejects_non_mapping(bad):
    raises_naming("sd", sisa.convert_reference_state_dict, bad, exc=TypeError)


def test_converter_rejects_non_tensor_values_and_keys():
    msg = raises_naming("embed.weight", sisa.convert_reference_state_dict,
                        {"final_norm.weight": torch.ones(4), "embed.weight": [[0.0] * 4]}, exc=TypeError)
    assert "list" in msg
    # lm_head is compared with embed.weight: a bad embed after it is still a TypeError naming it
    raises_naming("embed.weight", sisa.convert_reference_state_dict,
                  {"lm_head.weight": torch.ones(2, 4), "embed.weight": None}, exc=TypeError)
    raises_naming("sd", sisa.convert_reference_state_dict, {0: torch.ones(2)}, exc=TypeError)


def test_converter_takes_any_mapping():
    sd = OrderedDict([("embed.weight", torch.ones(2, 4)), ("layers.0.W_Q.weight", torch.ones(4, 4))])
    for mapping in (sd, types.MappingProxyType(dict(sd))):
        out = sisa.convert_reference_state_dict(mapping)
        assert list(out) == ["embed.weight", "layers.0.attn.W_Q.weight"]


# ---------------------------------------------------------------- issue 20: caches, generate

@pytest.mark.parametrize("use_ssm", [True, False])
def test_caches_of_another_batch(use_ssm):
    """Caches filled with batch 2 fed batch 3 (or 1): the SISA model blamed
    initial_state[0] (g0), which the caller never passed; the use_ssm=False baseline
    silently broadcast one row's history to every row. A ValueError naming caches
    (cache for the layer), before any compute."""
    model = small_model(use_ssm=use_ssm)
    caches = model.new_caches()
    model(ids(2, 5), caches=caches)
    for b in (1, 3):
        raises_naming("caches", model, ids(b, 1), caches=caches, exc=ValueError)
    cache = LayerCache()
    lay = model.layers[0].attn
    lay(torch.randn(2, 4, 32), cache=cache)
    raises_naming("cache", lay, torch.randn(1, 1, 32), cache=cache, exc=ValueError)
    assert model(ids(2, 1), caches=caches).shape == (2, 1, 61)        # the right batch still decodes


def lively_model(**overrides):
    """A float64 model whose greedy continuations vary (a fresh init repeats one token)."""
    model = small_model(**overrides).double()
    with torch.no_grad():
        model.embed.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return model


@pytest.mark.parametrize("use_ssm", [True, False])
def test_generate_right_padding_decodes_each_row_alone(use_ssm):
    """generate with right padding continued silently from a pad token (the last
    column's logits). Each row now continues from its last real token, as it would
    alone (right, left and inner pads); a row of pads only is a ValueError."""
    model = lively_model(use_ssm=use_ssm)
    prompt = ids(3, 7)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 1, 1, 0]])
    out = model.generate(prompt, 6, attention_mask=mask)
    for row in range(3):
        alone = prompt[row:row + 1, mask[row].bool()]
        want = model.generate(alone, 6)[0, alone.shape[1]:]
        assert torch.equal(out[row, 7:], want), (row, out[row, 7:], want)
    raises_naming("attention_mask", model.generate, prompt, 2,
                  attention_mask=torch.tensor([[1] * 7, [0] * 7, [1] * 7]), exc=ValueError)


def test_generate_edge_inputs():
    """temperature=1e-45 passed validation and then logits / T overflowed to inf
    (multinomial of NaN probabilities); a batch of 0 crashed. A tiny temperature is
    greedy (the maximum's probability tends to 1), an empty batch returns (0, t + n)."""
    model = lively_model()
    prompt = ids(2, 4)
    greedy = model.generate(prompt, 5)
    assert torch.equal(model.generate(prompt, 5, temperature=1e-45, generator=torch.Generator().manual_seed(0)),
                       greedy)
    assert model.generate(prompt[:0], 5).shape == (0, 9)
