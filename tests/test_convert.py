"""The paper's checkpoints as saved: torch.compile's _orig_mod. prefix, wrapper dicts,
files read as data, and the sisa-convert command (docs/design.md section 2)."""
import os
import subprocess
import sys

import pytest
import torch

import sisa
from sisa.convert import infer_config, load_reference_checkpoint, main, unwrap_checkpoint

from test_layer_model import SMALL, model_ref, paper_state_dict, small_model


def compiled_names(sd, prefix="_orig_mod."):
    """What train.py's torch.save(torch.compile(model).state_dict()) writes."""
    return {prefix + k: v for k, v in sd.items()}


def test_orig_mod_prefix_converts_like_plain_names():
    sd = paper_state_dict(**SMALL)
    want = sisa.convert_reference_state_dict(sd)
    for prefix in ("_orig_mod.", "module._orig_mod.", "module."):
        got = sisa.convert_reference_state_dict(compiled_names(sd, prefix))
        assert list(got) == list(want) and all(got[k] is want[k] for k in want)


def test_really_compiled_module_state_dict_converts():
    """The prefix as torch.compile really writes it, not as this test spells it."""
    sd = paper_state_dict(**SMALL)
    holder = torch.nn.Module()
    for k, v in sd.items():                  # a module tree with the paper's names
        *path, leaf = k.split(".")
        mod = holder
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, torch.nn.Parameter(v))
    compiled = torch.compile(holder).state_dict()
    assert all(k.startswith("_orig_mod.") for k in compiled)
    ids = torch.randint(0, SMALL["vocab"], (2, 7), generator=torch.Generator().manual_seed(1))
    model = small_model("sdpa")
    model.load_state_dict(sisa.convert_reference_state_dict(compiled), strict=True)
    with torch.no_grad():
        ref = model_ref(sd, ids, SMALL["h"], SMALL["n"])
        assert (model(ids) - ref).abs().max() < 1e-9


def test_same_name_with_and_without_prefix_is_an_error():
    sd = paper_state_dict(**SMALL)
    both = {**sd, "_orig_mod.embed.weight": sd["embed.weight"]}
    with pytest.raises(ValueError, match="embed.weight.*twice"):
        sisa.convert_reference_state_dict(both)


def test_unwrap_checkpoint_shapes():
    sd = paper_state_dict(**SMALL)
    assert unwrap_checkpoint(sd) is sd
    for key in ("model", "state_dict", "model_state_dict"):
        ckpt = {key: sd, "step": 1000, "optimizer": {"state": {}}, "config": {"d_model": 32}}
        assert unwrap_checkpoint(ckpt) is sd
    with pytest.raises(ValueError, match="holds no state dict.*'step': int"):
        unwrap_checkpoint({"step": 3, "weights": [1, 2]})
    with pytest.raises(ValueError, match="must be a state dict"):
        unwrap_checkpoint([torch.zeros(2)])


def test_load_reference_checkpoint_reads_files_as_data(tmp_path):
    sd = paper_state_dict(**SMALL)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": compiled_names(sd), "step": 7, "args": {"lr": 6e-4}}, path)
    got = load_reference_checkpoint(path)
    assert got.keys() == sisa.convert_reference_state_dict(sd).keys()
    assert all(torch.equal(got[k], v) for k, v in sisa.convert_reference_state_dict(sd).items())

    class Evil:                              # a pickle that would run code: refused, not executed
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    bad = tmp_path / "evil.pt"
    torch.save({"model": compiled_names(sd), "hook": Evil()}, bad)
    with pytest.raises(ValueError, match="weights_only"):
        load_reference_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_reference_checkpoint(junk)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {"rotary.inv_freq": torch.zeros(2)}}, wrong)
    with pytest.raises(ValueError, match="wrong.pt.*rotary.inv_freq"):
        load_reference_checkpoint(wrong)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_reference_checkpoint(tmp_path / "nope.pt")


def test_infer_config():
    sd = sisa.convert_reference_state_dict(paper_state_dict(**SMALL))
    cfg = infer_config(sd)
    assert cfg == sisa.SISAConfig(vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=24)
    base = small_model("naive", use_ssm=False).state_dict()
    assert infer_config(base, n_heads=4).use_ssm is False
    with pytest.raises(ValueError, match="n_heads must be given"):
        infer_config(base)
    with pytest.raises(ValueError, match="n_heads=8 disagrees"):
        infer_config(sd, n_heads=8)
    gqa = small_model("naive", n_kv_heads=2).state_dict()
    assert infer_config(gqa).n_kv_heads == 2


def test_sisa_convert_writes_a_transformers_directory(tmp_path):
    pytest.importorskip("transformers", reason="sisa-convert writes a transformers directory: pip install -e '.[hf]'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import sisa.hf  # noqa: F401  registers the Auto classes
    from transformers import AutoModelForCausalLM
    sd = paper_state_dict(**SMALL)                       # float64, as the reference test uses
    src, dst = tmp_path / "ckpt.pt", tmp_path / "hf"
    torch.save({"model": compiled_names(sd), "step": 1}, src)
    assert main([str(src), str(dst)]) == 0
    model = AutoModelForCausalLM.from_pretrained(dst)
    ids = torch.randint(0, SMALL["vocab"], (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model_ref(sd, ids, SMALL["h"], SMALL["n"])
        assert model.model.embed.weight.dtype == torch.float64
        assert (model(ids, use_cache=False).logits - ref).abs().max() < 1e-9
    # The same as a command; a malformed checkpoint is a usage error naming the file.
    res = subprocess.run([sys.executable, "-m", "sisa.convert", str(src), str(tmp_path / "hf2"), "--dtype",
                          "bfloat16"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    bf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf2")
    assert bf.model.embed.weight.dtype == torch.bfloat16 and bf.model.layers[0].attn.lambda_raw.dtype == torch.float32
    bad = tmp_path / "bad.pt"
    torch.save({"optimizer": {}}, bad)
    with pytest.raises(SystemExit) as exc:
        main([str(bad), str(tmp_path / "hf3")])
    assert exc.value.code == 2


def _convert_usage_error(capsys, argv):
    """main(argv) exits 2 with a one-line usage error (argparse's), no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_sisa_convert_usage_errors(tmp_path, capsys):
    """int64 or complex weights, a 0-d lambda_raw and a destination that is an existing
    file ended in tracebacks (a complex tensor among float ones was silently made real);
    a directory as SRC was 'file not found'. Each is a usage error that says what is wrong."""
    pytest.importorskip("transformers", reason="sisa-convert writes a transformers directory: pip install -e '.[hf]'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sd = paper_state_dict(**SMALL)
    dst = str(tmp_path / "out")
    cases = {"int64": ({k: v.long() for k, v in sd.items()}, "floating-point"),
             "complex": ({k: v.to(torch.complex64) for k, v in sd.items()}, "floating-point"),
             "one complex": ({**sd, "layers.0.W_Q.weight": sd["layers.0.W_Q.weight"].to(torch.complex128)},
                             "W_Q.weight"),
             "0-d lambda_raw": ({**sd, **{f"layers.{i}.lambda_raw": torch.tensor(0.5, dtype=torch.float64)
                                          for i in range(SMALL["layers"])}}, "lambda_raw")}
    for name, (bad, words) in cases.items():
        src = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save(bad, src)
        assert words in _convert_usage_error(capsys, [str(src), dst]), name
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    existing = tmp_path / "a_file"
    existing.write_text("not a directory")
    assert "existing file" in _convert_usage_error(capsys, [str(good), str(existing)])
    assert "is a directory" in _convert_usage_error(capsys, [str(tmp_path), dst])
