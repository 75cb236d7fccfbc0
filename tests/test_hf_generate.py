"""sisa.hf generation beyond greedy / beam / sampling: a croppable cache, assisted and
prompt-lookup decoding against greedy token for token, inputs_embeds, hidden states,
and the options that are refused with a message saying what to use instead."""
import os

import pytest
import torch

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):   # before transformers loads
    os.environ.setdefault(var, "1")
pytest.importorskip("transformers", reason="sisa.hf needs transformers: pip install -e '.[hf]'")

import sisa.hf as H                                                      # noqa: E402

TINY = dict(vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=48, n_kv_heads=2)
GREEDY = dict(do_sample=False, pad_token_id=0)


def lively(seed=0, noise=0.0, **kw):
    """A float64 tiny model whose greedy continuations do not settle on one token (the
    blocks outweigh the tied embedding), a strong decay and rotation; ``noise`` perturbs
    its matrices (an assistant that agrees with it often, not always)."""
    torch.manual_seed(seed)
    model = H.SISAForCausalLM(H.SISAHFConfig(**{**TINY, "backend": "sdpa", **kw})).double().eval()
    with torch.no_grad():
        for block in model.model.layers:
            attn = block.attn
            attn.alpha_proj.bias.fill_(-0.5)
            attn.theta_proj.weight.mul_(20)
            for lin in (attn.W_Q, attn.W_K, attn.W_V, attn.W_B, attn.W_C):
                lin.weight.mul_(10)
            attn.W_O.weight.mul_(50)
            block.ffn.w_down.weight.mul_(50)
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            if p.dim() == 2 and noise:
                p.add_(noise * p.std() * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture
def crops(monkeypatch):
    """Record every SISACacheLayer.crop call as (cached length, tokens_to_remove)."""
    calls, crop = [], H.SISACacheLayer.crop

    def recording(self, n):
        calls.append((self.cache.length, n))
        crop(self, n)
    monkeypatch.setattr(H.SISACacheLayer, "crop", recording)
    return calls


@pytest.mark.parametrize("pads", [False, True])
def test_crop_recovers_the_cache_of_the_shorter_sequence(pads):
    """Feed 4 + 5 tokens, crop to 6, feed 3: the logits (and the next step's) equal a
    cache fed the 6 + 3 tokens directly; so does the scan state."""
    model = lively().model
    ids = torch.randint(1, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    if pads:
        mask[1, :2] = 0                                         # row 1 left-padded
    cut, kept = model.new_caches(), model.new_caches()
    with torch.no_grad():
        model(ids[:, :4], caches=cut, attention_mask=mask[:, :4])
        model(ids[:, 4:9], caches=cut, attention_mask=mask[:, :9])
        for cache in cut:
            cache.crop(6)
        model(ids[:, :6], caches=kept, attention_mask=mask[:, :6])
        for a, b in zip(cut, kept):
            assert a.length == b.length == 6
            torch.testing.assert_close(a.state, b.state, rtol=0, atol=1e-12)
            assert torch.equal(a.real_lengths(2, "cpu"), b.real_lengths(2, "cpu"))
        nxt = torch.randint(1, 61, (2, 3), generator=torch.Generator().manual_seed(1))
        for step in (nxt, nxt[:, :1]):
            torch.testing.assert_close(model(step, caches=cut), model(step, caches=kept), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="length must be an int in"):
        cut[0].crop(99)


def test_assisted_decoding_equals_greedy(crops):
    model, assistant = lively(), lively(noise=0.1)
    assistant.generation_config.num_assistant_tokens = 5                 # long drafts, often rejected midway
    assistant.generation_config.num_assistant_tokens_schedule = "constant"
    assistant.generation_config.assistant_confidence_threshold = 0.0
    ids = torch.randint(1, 61, (1, 6), generator=torch.Generator().manual_seed(1))
    greedy = model.generate(ids, max_new_tokens=20, **GREEDY)
    assert len(set(greedy[0, 6:].tolist())) >= 4                         # not one token repeated
    assisted = model.generate(ids, max_new_tokens=20, assistant_model=assistant, **GREEDY)
    assert torch.equal(assisted, greedy)
    assert any(n < -1 for _, n in crops)                                 # drafts cut in the middle of a chunk


def test_prompt_lookup_decoding_equals_greedy(crops):
    model = lively()
    ids = torch.tensor([[5, 17, 33, 8, 41, 5, 17, 33, 8, 41, 5, 17]])
    greedy = model.generate(ids, max_new_tokens=15, **GREEDY)
    lookup = model.generate(ids, max_new_tokens=15, prompt_lookup_num_tokens=3, **GREEDY)
    assert torch.equal(lookup, greedy)
    assert any(n < 0 for _, n in crops)


def test_crop_refuses_what_it_cannot_do():
    layer = H.SISACache(1).layers[0]
    with pytest.raises(ValueError, match="tokens_to_remove must be an int <= 0"):
        layer.crop(3)
    with pytest.raises(ValueError, match="cannot drop 2 tokens: the cache holds 0"):
        layer.crop(-2)


def test_inputs_embeds_in_forward_and_generate():
    model = lively()
    ids = torch.randint(1, 61, (2, 7), generator=torch.Generator().manual_seed(2))
    embeds = model.model.embed(ids).detach()
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=embeds, use_cache=False).logits, model(ids, use_cache=False).logits)
    labels = ids.clone()
    torch.testing.assert_close(model(inputs_embeds=embeds, labels=labels).loss, model(ids, labels=labels).loss,
                               rtol=0, atol=0)
    want = model.generate(ids, max_new_tokens=6, **GREEDY)[:, 7:]
    assert torch.equal(model.generate(inputs_embeds=embeds, max_new_tokens=6, **GREEDY), want)
    mask = torch.ones(2, 7, dtype=torch.long)
    assert torch.equal(model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6, **GREEDY), want)


def test_hidden_states_are_the_embeddings_then_one_per_layer():
    model = lively()
    ids = torch.randint(1, 61, (2, 5))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, use_cache=False)
        hs = out.hidden_states
        assert len(hs) == TINY["n_layers"] + 1 and all(h.shape == (2, 5, 32) for h in hs)
        assert torch.equal(hs[0], model.model.embed(ids))
        assert torch.equal(hs[1], model.model.layers[0](hs[0]))
        last = model.model.final_norm(model.model.layers[1](hs[1]))
        assert torch.equal(hs[2], last)
        assert torch.equal(out.logits, last @ model.model.embed.weight.T)
        assert model(ids, use_cache=False).hidden_states is None


def test_refused_options_say_what_to_use_instead():
    model = lively()
    ids = torch.randint(1, 61, (1, 4))
    with pytest.raises(ValueError, match="never form the attention weights.*output_hidden_states=True"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported.*SISACache"):
        model.generate(ids, max_new_tokens=2, cache_implementation="static", **GREEDY)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['foo'\]; it takes input_ids"):
        model(ids, foo=1)
    with pytest.raises(ValueError, match=r"not used by the model: \['foo'\]"):      # transformers' own check
        model.generate(ids, max_new_tokens=2, foo=1, **GREEDY)
