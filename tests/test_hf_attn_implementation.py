"""attn_implementation on sisa.hf: the names that mean one of the package's attention
paths select it (eager -> naive, sdpa -> sdpa); flash-attn and flex_attention names
are refused with a message naming backend=; the _supports_* flags say the same."""
import os

import pytest
import torch

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):   # before transformers loads
    os.environ.setdefault(var, "1")
pytest.importorskip("transformers", reason="sisa.hf needs transformers: pip install -e '.[hf]'")

from transformers import AutoModelForCausalLM                            # noqa: E402

import sisa.hf as H                                                      # noqa: E402
from sisa.layer import SISAAttention                                     # noqa: E402

TINY = dict(vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=48, n_kv_heads=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    H.SISAForCausalLM(H.SISAHFConfig(**TINY)).double().save_pretrained(path)
    return path


def backends(model):
    return {m.backend for m in model.modules() if isinstance(m, SISAAttention)} | {model.config.backend,
                                                                                   model.model.config.backend}


def test_flags_are_truthful():
    assert H.SISAForCausalLM._supports_sdpa is True
    assert H.SISAForCausalLM._supports_flash_attn is False and H.SISAForCausalLM._supports_flex_attn is False


@pytest.mark.parametrize("name, backend", [("sdpa", "sdpa"), ("eager", "naive"), (None, "auto")])
def test_names_select_the_package_s_backends(saved, name, backend):
    kwargs = {} if name is None else {"attn_implementation": name}
    model = AutoModelForCausalLM.from_pretrained(saved, **kwargs)
    assert backends(model) == {backend}
    assert model.config._attn_implementation == name or (name is None and
                                                         model.config._attn_implementation == "sisa_auto")


def test_backend_kwarg_and_set_attn_implementation(saved):
    model = AutoModelForCausalLM.from_pretrained(saved, backend="triton")     # a config field, no forward here
    assert backends(model) == {"triton"} and model.config._attn_implementation == "sisa_triton"
    model = AutoModelForCausalLM.from_pretrained(saved, attn_implementation="sdpa").eval()
    ids = torch.randint(0, 61, (2, 7))
    with torch.no_grad():
        sdpa = model(ids, use_cache=False).logits
        model.set_attn_implementation("eager")
        assert backends(model) == {"naive"} and model.config._attn_implementation == "eager"
        torch.testing.assert_close(model(ids, use_cache=False).logits, sdpa, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["flash_attention_2", "flash_attention_3", "flex_attention", "paged|eager"])
def test_other_names_are_refused_naming_backend(saved, name):
    with pytest.raises(ValueError, match=r"not available for SISA.*backend="):
        AutoModelForCausalLM.from_pretrained(saved, attn_implementation=name)
    model = AutoModelForCausalLM.from_pretrained(saved)
    with pytest.raises(ValueError, match="backend='triton'" if "fl" in name else "backend="):
        model.set_attn_implementation(name)
