"""sisa.hf: the transformers config/model, the Auto classes, save/load, generate,
left-padded batches (requires the [hf] extra; skipped with the reason otherwise)."""
import json
import os
import subprocess
import sys

import pytest
import torch

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):   # before transformers loads
    os.environ.setdefault(var, "1")
pytest.importorskip("transformers", reason="sisa.hf needs transformers: pip install -e '.[hf]'")
pytest.importorskip("safetensors", reason="sisa.hf needs safetensors: pip install -e '.[hf]'")

from safetensors import safe_open                                        # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM                # noqa: E402

import sisa.hf as H                                                      # noqa: E402
from sisa import SISAConfig, SISAModel                                   # noqa: E402

from test_padding import left_padded, prompts_for, real_rows            # noqa: E402

TINY = dict(vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=48, n_kv_heads=2)


def tiny_hf(backend="sdpa", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = H.SISAForCausalLM(H.SISAHFConfig(**{**TINY, "backend": backend, **kw})).to(dtype).eval()
    with torch.no_grad():              # a stronger decay and rotation than the init's
        for block in model.model.layers:
            if block.attn.use_ssm:
                block.attn.alpha_proj.bias.fill_(-0.5)
                block.attn.theta_proj.weight.mul_(20)
    return model


def test_config_converts_both_ways_and_validates():
    cfg = SISAConfig(**TINY, backend="naive")
    hf = H.SISAHFConfig.from_sisa_config(cfg, eos_token_id=3)
    assert hf.model_type == "sisa" and hf.eos_token_id == 3 and hf.to_sisa_config() == cfg
    assert H.SISAHFConfig.preset("152M", d_state=32).to_sisa_config() == SISAConfig.preset("152M", d_state=32)
    assert H.SISAHFConfig.preset("50M", use_ssm=False, vocab_size=100).to_sisa_config() == \
        SISAConfig.preset("50M", use_ssm=False, vocab_size=100)
    assert hf.hidden_size == 32 and hf.num_hidden_layers == 2
    with pytest.raises(ValueError, match="d_state must be even"):
        H.SISAHFConfig(d_state=3)
    with pytest.raises(ValueError, match="tie_word_embeddings must be True"):
        H.SISAHFConfig(tie_word_embeddings=False)
    with pytest.raises(TypeError, match="config must be a sisa.SISAConfig"):
        H.SISAHFConfig.from_sisa_config({"d_model": 8})


def test_auto_class_round_trip_is_bit_exact(tmp_path):
    model = tiny_hf()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sisa"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), H.SISAHFConfig)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == {f"model.{k}" for k in model.model.state_dict()}       # the tied embedding once, no lm_head
    assert sum("embed" in k for k in keys) == 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is H.SISAForCausalLM
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) and sd[k].dtype == ld[k].dtype for k in sd)
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded.eval()(ids).logits)


def test_dtype_and_device_map_keep_lambda_float32(tmp_path):
    model = tiny_hf()
    model.save_pretrained(tmp_path)
    for kwargs in ({"dtype": torch.bfloat16}, {"dtype": torch.float16, "device_map": "cpu"},
                   {"torch_dtype": torch.bfloat16}):               # the older name, still what many users write
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
        want = kwargs.get("dtype", kwargs.get("torch_dtype"))
        for name, p in loaded.named_parameters():
            ref = model.get_parameter(name)
            if name.endswith("lambda_raw"):
                assert p.dtype == torch.float32 and torch.equal(p, ref), name
            else:
                assert p.dtype == want and torch.equal(p, ref.to(want)), name
        assert loaded.device.type == "cpu"


def test_from_sisa_wraps_the_same_weights_and_matches_sisa_model():
    base = SISAModel(SISAConfig(**TINY, backend="sdpa")).eval()
    wrapped = H.SISAForCausalLM.from_sisa(base)
    assert wrapped.model is base
    ids = torch.randint(0, 61, (2, 8))
    with torch.no_grad():
        assert torch.equal(wrapped(ids, use_cache=False).logits, base(ids))
        # With a cache (the default, config.use_cache) the prompt goes through the cached prefill: equal to rounding.
        torch.testing.assert_close(wrapped(ids).logits, base(ids), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="model must be a sisa.SISAModel"):
        H.SISAForCausalLM.from_sisa(wrapped)


def test_loss_is_the_shifted_cross_entropy():
    model = tiny_hf()
    ids = torch.randint(0, 61, (2, 8))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    lg = out.logits[:, :-1].reshape(-1, 61)
    tgt = labels[:, 1:].reshape(-1)
    keep = tgt != -100
    want = -(lg.log_softmax(-1)[keep, tgt[keep]]).mean()
    torch.testing.assert_close(out.loss, want)
    with pytest.raises(ValueError, match="labels must be a tensor of the inputs' shape"):
        model(ids, labels=labels[:, :3])


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_generate_equals_sisa_generate_and_step_logits_equal_full_forward(backend):
    model = tiny_hf(backend, dtype=torch.float64)
    ids = torch.randint(1, 61, (2, 6))
    out = model.generate(ids, max_new_tokens=7, do_sample=False, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True)
    assert torch.equal(out.sequences, model.model.generate(ids, 7))
    with torch.no_grad():
        full = model(out.sequences, use_cache=False).logits
    for step, logits in enumerate(out.logits):        # the logits that chose token 6 + step (generate: float32)
        torch.testing.assert_close(logits, full[:, 5 + step].float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_left_padded_generate_equals_each_prompt_alone(backend):
    model = tiny_hf(backend, dtype=torch.float64)
    prompts = prompts_for(model.model)
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for r, p in enumerate(prompts):
            torch.testing.assert_close(real_rows(logits, mask, r), model(p).logits[0], rtol=0, atol=1e-12)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    for r, p in enumerate(prompts):
        alone = model.generate(p, max_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True,
                               return_dict_in_generate=True)
        assert torch.equal(out.sequences[r, ids.shape[1]:], alone.sequences[0, p.shape[1]:])
        for a, b in zip(out.logits, alone.logits):
            torch.testing.assert_close(a[r], b[0], rtol=0, atol=1e-6)


def test_beam_search_reorders_the_cache():
    model = tiny_hf(dtype=torch.float64)
    ids = torch.randint(1, 61, (2, 5), generator=torch.Generator().manual_seed(3))
    out = model.generate(ids, max_new_tokens=6, num_beams=4, num_return_sequences=4, do_sample=False,
                         pad_token_id=0, length_penalty=0.0, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():                                 # each beam's score from a full forward of its tokens
        lp = model(out.sequences, use_cache=False).logits.log_softmax(-1)
    new = out.sequences[:, 5:]
    want = lp[:, 4:-1].gather(-1, new[..., None])[..., 0].sum(-1).float()   # length_penalty 0: the plain sum
    torch.testing.assert_close(out.sequences_scores, want, rtol=1e-5, atol=1e-5)


def test_forward_errors_name_the_argument():
    model = tiny_hf()
    ids = torch.randint(0, 61, (1, 4))
    from transformers import DynamicCache
    with pytest.raises(TypeError, match="past_key_values"):
        model(ids, past_key_values=DynamicCache())
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        model(inputs_embeds=torch.zeros(1, 4, 31))
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        model(ids, inputs_embeds=torch.zeros(1, 4, 32))


def test_remote_code_directory_loads_without_importing_sisa_hf(tmp_path):
    tiny_hf().save_pretrained(tmp_path)
    assert (tmp_path / "modeling_sisa.py").exists()
    code = ("import sys, torch; from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
            "assert type(m).__name__ == 'SISAForCausalLM'\n"
            "print(m(torch.tensor([[1, 2, 3]])).logits.shape)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torch.Size([1, 3, 61])" in res.stdout


def test_transformers_init_keeps_the_papers_initialisation():
    """post_init runs _init_weights over every module: it must give the paper's init
    (decay bias -5, lambda_raw -1, norms 1, N(0, 0.02) projections), not transformers' default."""
    torch.manual_seed(0)
    model = H.SISAForCausalLM(H.SISAHFConfig(**{**TINY, "d_model": 256, "n_heads": 4, "d_ff": 512}))
    attn = model.model.layers[0].attn
    assert torch.equal(attn.alpha_proj.bias, torch.full_like(attn.alpha_proj.bias, -5.0))
    assert torch.equal(attn.lambda_raw, torch.full_like(attn.lambda_raw, -1.0))
    assert torch.equal(model.model.final_norm.weight, torch.ones(256))
    for w, std in ((attn.W_Q.weight, 0.02), (attn.theta_proj.weight, 0.01), (model.model.embed.weight, 0.02),
                   (model.model.layers[1].ffn.w_down.weight, 0.02)):
        assert abs(w.std().item() - std) < 0.1 * std


def test_training_forward_builds_no_cache_and_backpropagates():
    model = tiny_hf().train()
    ids = torch.randint(0, 61, (2, 8))
    out = model(ids, labels=ids)
    assert getattr(out, "cache", getattr(out, "past_key_values", None)) is None
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
