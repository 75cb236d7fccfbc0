"""sisa.param_groups: the authors' train.py treatment (style="paper") and the common
no-decay-for-norms-and-biases one, against hand-written tables."""
import pytest
import torch

import sisa

LR, WD = 6e-4, 0.1
MATRICES = ["embed.weight"] + [f"layers.0.attn.{w}.weight" for w in ("W_Q", "W_K", "W_V", "W_O", "W_B", "W_C")] + [
    "layers.0.attn.alpha_proj.weight", "layers.0.attn.theta_proj.weight",
    "layers.0.ffn.w_gate.weight", "layers.0.ffn.w_up.weight", "layers.0.ffn.w_down.weight"]
NORMS_AND_BIAS = ["final_norm.weight", "layers.0.attn_norm.weight", "layers.0.ffn_norm.weight",
                  "layers.0.attn.alpha_proj.bias"]

# name -> (lr, weight_decay), written out by hand from train.py's rule and the common rule.
PAPER = {**{n: (LR, WD) for n in MATRICES + NORMS_AND_BIAS}, "layers.0.attn.lambda_raw": (LR * 0.1, 0.0)}
COMMON = {**{n: (LR, WD) for n in MATRICES}, **{n: (LR, 0.0) for n in NORMS_AND_BIAS},
          "layers.0.attn.lambda_raw": (LR * 0.1, 0.0)}


def tiny(use_ssm=True):
    return sisa.SISAModel(sisa.SISAConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, d_state=2, d_ff=8,
                                          use_ssm=use_ssm))


def table(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in out, f"{names[id(p)]} in two groups"
            out[names[id(p)]] = (g["lr"], g["weight_decay"])
    return out


@pytest.mark.parametrize("style, want", [("paper", PAPER), ("common", COMMON)])
def test_styles_match_the_hand_written_tables(style, want):
    model = tiny()
    assert set(want) == {n for n, _ in model.named_parameters()}      # the table covers the model
    got = table(model, sisa.param_groups(model, lr=LR, weight_decay=WD, style=style))
    assert got.keys() == want.keys()
    for name, (lr, wd) in want.items():
        assert got[name][0] == pytest.approx(lr) and got[name][1] == wd, name
    opt = torch.optim.AdamW(sisa.param_groups(model, lr=LR, weight_decay=WD, style=style))
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()                                                          # AdamW takes the groups


def test_default_is_common_and_baseline_has_no_lambda_group():
    model = tiny()
    assert table(model, sisa.param_groups(model, lr=LR)) == table(model, sisa.param_groups(model, LR, style="common"))
    base = tiny(use_ssm=False)
    for style, n_groups in (("paper", 1), ("common", 2)):
        groups = sisa.param_groups(base, lr=LR, style=style)
        assert len(groups) == n_groups and all(g["lr"] == LR for g in groups)


def test_frozen_parameters_are_left_out_and_bad_arguments_named():
    model = tiny()
    model.embed.weight.requires_grad_(False)
    assert "embed.weight" not in table(model, sisa.param_groups(model, lr=LR, style="paper"))
    with pytest.raises(ValueError, match="style must be one of"):
        sisa.param_groups(model, lr=LR, style="adamw")
    with pytest.raises(ValueError, match="lr must be finite"):
        sisa.param_groups(model, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay must be finite"):
        sisa.param_groups(model, lr=LR, weight_decay=float("nan"))
