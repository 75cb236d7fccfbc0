"""Pads (attention_mask 0) in SISAModel: each real token's output equals its row's
with the pads deleted, in the full forward, the cached prefill and the decode steps
(SISAAttention._forward_padded states the rule)."""
import pytest
import torch

import sisa
from sisa import SISAConfig, SISAModel

from conftest import DEVICE

LENS = [5, 9, 1]                       # three prompts; the batch is left-padded to 9


def tiny_model(backend, use_ssm=True, dtype=torch.float64, n_kv_heads=2, layers=2):
    torch.manual_seed(0)
    cfg = SISAConfig(vocab_size=61, d_model=32, n_heads=4, n_layers=layers, d_state=4, d_ff=48,
                     n_kv_heads=n_kv_heads, backend=backend, use_ssm=use_ssm)
    model = SISAModel(cfg).to(DEVICE, dtype).eval()
    if use_ssm:
        with torch.no_grad():          # a stronger decay than the init's, so that pads adding decay would show
            for block in model.layers:
                block.attn.alpha_proj.bias.fill_(-0.5)
                block.attn.theta_proj.weight.mul_(20)
    return model


def left_padded(prompts, pad_id=0, side="left"):
    """prompts: list of (1, L) -> ids (b, T), mask (b, T) long, 0 at pads."""
    T = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=DEVICE)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        cols = slice(T - p.shape[1], T) if side == "left" else slice(0, p.shape[1])
        ids[r, cols], mask[r, cols] = p[0], 1
    return ids, mask


def prompts_for(model, lens=LENS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, model.config.vocab_size, (1, n), generator=g).to(DEVICE) for n in lens]


def real_rows(out, mask, r):
    return out[r][mask[r].bool()]


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("use_ssm", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_forward_equals_each_prompt_alone(backend, use_ssm, side):
    model = tiny_model(backend, use_ssm)
    prompts = prompts_for(model)
    ids, mask = left_padded(prompts, side=side)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        unmasked = model(ids)
        for r, p in enumerate(prompts):
            alone = model(p)[0]
            torch.testing.assert_close(real_rows(out, mask, r), alone, rtol=0, atol=1e-12)
    assert torch.isfinite(out).all()
    if side == "left":                 # the check can fail: without the mask the pads change the outputs
        assert (real_rows(unmasked, mask, 0) - real_rows(out, mask, 0)).abs().max() > 1e-3


def test_pad_changes_nothing_whatever_its_id_and_inner_pads():
    model = tiny_model("sdpa")
    p = prompts_for(model, [7])[0]
    ids = torch.cat([p[:, :3], torch.tensor([[5, 17]], device=DEVICE), p[:, 3:]], 1)   # two inner pads
    mask = torch.ones_like(ids)
    mask[0, 3:5] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask)[0]
        alone = model(p)[0]
    torch.testing.assert_close(out[mask[0].bool()], alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("use_ssm", [True, False])
def test_padded_cached_decoding_equals_each_prompt_alone(backend, use_ssm):
    model = tiny_model(backend, use_ssm)
    prompts = prompts_for(model)
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        got = model.generate(ids, 6, attention_mask=mask)
        for r, p in enumerate(prompts):
            assert torch.equal(got[r, ids.shape[1]:], model.generate(p, 6)[0, p.shape[1]:])
        # Step logits against the full forward of each prompt + new tokens, alone.
        caches = model.new_caches()
        model(ids, caches=caches, attention_mask=mask)
        new = torch.randint(1, 61, (3, 3), device=DEVICE)
        full_mask = torch.cat([mask, torch.ones_like(new)], 1)
        steps = [model(new[:, i:i + 1], caches=caches, attention_mask=full_mask[:, : ids.shape[1] + i + 1])[:, -1]
                 for i in range(3)]
        for r, p in enumerate(prompts):
            full = model(torch.cat([p, new[r:r + 1]], 1))[0, -3:]
            torch.testing.assert_close(torch.stack([s[r] for s in steps]), full, rtol=0, atol=1e-12)


def test_fully_padded_row_is_finite_and_grads_stay_finite():
    model = tiny_model("sdpa", dtype=torch.float32)
    model.train()
    prompts = prompts_for(model, [4, 6])
    ids, mask = left_padded(prompts + [prompts[0][:, :0]])        # a third row that is all pads
    assert mask[2].sum() == 0
    out = model(ids, attention_mask=mask)
    assert torch.isfinite(out).all()
    out[mask.bool()].float().logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        torch.testing.assert_close(real_rows(out, mask, 1), model(prompts[1])[0], rtol=1e-5, atol=1e-5)


def test_triton_interpreter_left_padded_small():
    if sisa.backends.triton_unavailable_reason(DEVICE) is not None:
        pytest.skip(f"Triton unavailable on {DEVICE}: {sisa.backends.triton_unavailable_reason(DEVICE)}")
    model = tiny_model("triton", dtype=torch.float32, layers=1)
    prompts = prompts_for(model, [3, 5])
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        for r, p in enumerate(prompts):
            torch.testing.assert_close(real_rows(out, mask, r), model(p)[0], rtol=1e-5, atol=1e-5)
            ref = tiny_model("naive", dtype=torch.float32, layers=1)(p)[0]   # same seed and weights
            torch.testing.assert_close(real_rows(out, mask, r), ref, rtol=1e-4, atol=1e-4)


def test_attention_mask_errors_name_the_argument():
    model = tiny_model("sdpa")
    ids = torch.randint(1, 61, (2, 4), device=DEVICE)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=torch.ones(2, 5, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="attention_mask must hold only 0"):
        model(ids, attention_mask=torch.full((2, 4), 2, device=DEVICE))
    with pytest.raises(TypeError, match="attention_mask must be bool or integer"):
        model(ids, attention_mask=torch.ones(2, 4, device=DEVICE))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        model(ids, attention_mask=[[1, 1, 1, 1]] * 2)
    with torch.no_grad():              # an all-ones mask is the same as none
        assert torch.equal(model(ids, attention_mask=torch.ones_like(ids)), model(ids))
