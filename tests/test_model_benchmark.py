"""benchmarks.model: the --quick run, and a gate that fails on broken models."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import sisa
import sisa.layer
from benchmarks import model as bench
from benchmarks import model_report
from benchmarks.model_forms import FORMS, _patched, build_models, decode_step
from benchmarks.model_gate import check_form

CPU = torch.device("cpu")
COMMITTED = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "model_cpu" / "model.json"


def tiny_models(forms=("transformer", "sisa", "sisa-paper")):
    fields, t_ff = bench.CONFIGS["quick"][:2]
    config = sisa.SISAConfig(d_ff=sisa.matched_d_ff(fields["d_model"], fields["n_heads"], fields["d_state"], t_ff),
                             **fields)
    return config, build_models(config, t_ff, list(forms), CPU)


def gate_ids(config, t=48):
    return torch.randint(0, config.vocab_size, (1, t), generator=torch.Generator().manual_seed(0))


def _no_ssm_term(q, k, v, C, B, log_alpha, theta, lam, **kw):
    return sisa.sisa_attention(q, k, v, C, B, log_alpha, theta, lam * 0, **kw)


def _wrong_cached_lam(q, k, v, C_rot, B_rot, g, lam, **kw):
    return sisa.cache.cached_attention(q, k, v, C_rot, B_rot, g, lam * 1.5, **kw)


BROKEN_FORWARD = dataclasses.replace(
    FORMS["sisa"], name="broken", swap=lambda device, dtype: _patched(sisa.layer, "sisa_attention", _no_ssm_term))
BROKEN_DECODE = dataclasses.replace(
    FORMS["sisa"], name="broken-decode",
    swap=lambda device, dtype: _patched(sisa.layer, "cached_attention", _wrong_cached_lam))


def test_gate_passes_the_three_forms_and_decoding_equals_the_full_forward():
    config, models = tiny_models()
    ids = gate_ids(config)
    for name, model in models.items():
        verdict = check_form(name, FORMS[name], model, ids, CPU, None)
        assert verdict["ok"], verdict
        assert ("decode" in verdict["errors"]) == (name != "sisa-paper")
    # same weights: the paper's form computes SISA's loss where its clamp is idle
    sisa_v = check_form("sisa", FORMS["sisa"], models["sisa"], ids, CPU, None)
    paper_v = check_form("sisa-paper", FORMS["sisa-paper"], models["sisa-paper"], ids, CPU, None)
    assert sisa_v["judge_loss"] == pytest.approx(paper_v["judge_loss"], rel=1e-12)
    assert paper_v["decay_span"] < 22


def test_gate_fails_on_a_model_without_its_ssm_term():
    config, models = tiny_models(("sisa",))
    verdict = check_form("broken", BROKEN_FORWARD, models["sisa"], gate_ids(config), CPU, None, decode=False)
    assert not verdict["ok"]
    assert verdict["errors"]["logits"]["err"] > verdict["errors"]["logits"]["tol"]


def test_gate_fails_on_a_wrong_cached_step_only_through_the_decode_check():
    config, models = tiny_models(("sisa",))
    verdict = check_form("broken-decode", BROKEN_DECODE, models["sisa"], gate_ids(config), CPU, None)
    assert not verdict["ok"] and verdict["worst"] == "decode"
    assert all(e["err"] <= e["tol"] for k, e in verdict["errors"].items() if k != "decode")


def test_gate_fails_on_the_paper_form_once_its_clamp_engages():
    config, models = tiny_models(("sisa", "sisa-paper"))
    for model in models.values():
        with torch.no_grad():
            for block in model.layers:
                block.attn.alpha_proj.bias.fill_(0.0)     # ~0.7 nats per token: 48 tokens span ~33 nats
    ids = gate_ids(config)
    exact = check_form("sisa", FORMS["sisa"], models["sisa"], ids, CPU, None)
    assert exact["ok"], exact
    paper = check_form("sisa-paper", FORMS["sisa-paper"], models["sisa-paper"], ids, CPU, None)
    assert paper["decay_span"] > 22 and not paper["ok"] and "clamp engaged" in paper["note"]


def test_decode_step_repeats_exactly_after_the_rewind():
    config, models = tiny_models(("sisa", "transformer"))
    ids = gate_ids(config, 40)
    for name, model in models.items():
        step = decode_step(model, FORMS[name], ids[:, :-1], ids[:, -1:], CPU, None)
        first, second, third = step(), step(), step()
        assert torch.equal(first, second) and torch.equal(second, third)


def test_quick_run_writes_every_measurement(tmp_path):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "model.json").read_text())
    rows = payload["results"]
    assert {r["phase"] for r in rows} == {"train", "prefill", "decode"}
    assert all(g["ok"] for g in payload["gate"])
    for r in rows:
        expected = "unsupported" if (r["form"] == "sisa-paper" and r["phase"] == "decode") else "ok"
        assert r["status"] == expected, r
        if expected == "ok":
            assert r["tokens_per_s"] > 0 and r["ratio"] > 0 and len(r["rounds_ms"]) == 2
    assert "thread" in payload["setup"] and "load average" in payload["setup"]
    assert (tmp_path / "model.md").exists() and (tmp_path / "model.png").exists()


def test_a_form_failing_the_gate_is_not_timed(tmp_path, monkeypatch):
    monkeypatch.setitem(FORMS, "sisa", dataclasses.replace(BROKEN_FORWARD, name="sisa"))
    assert bench.main(["--quick", "--phases", "train", "--rounds", "1", "--no-plot", "--out", str(tmp_path)]) == 1
    rows = {r["form"]: r for r in json.loads((tmp_path / "model.json").read_text())["results"]}
    assert rows["sisa"]["status"] == "mismatch" and rows["sisa"]["ms"] is None
    assert rows["transformer"]["status"] == "ok" and rows["sisa-paper"]["status"] == "ok"


def test_readme_table_is_generated_from_the_committed_results():
    if not COMMITTED.exists():
        pytest.fail(f"{COMMITTED} is missing: the README's model table is generated from it")
    payload = json.loads(COMMITTED.read_text())
    block = model_report.readme_block(payload, "benchmarks/results/model_cpu/model.json")
    assert model_report.current_block(model_report.README.read_text()) == block, \
        "README.md's model table differs from the committed model.json: run " \
        "python -m benchmarks.model_report benchmarks/results/model_cpu/model.json --write"
    assert "not measured" in block and "27,714" in block and "16,783" in block


def test_checkpointing_is_used_where_the_model_has_the_switch_and_reported_otherwise():
    import types
    from benchmarks.model_forms import checkpointing_unsupported, set_checkpointing
    assert "no gradient_checkpointing switch" in checkpointing_unsupported(types.SimpleNamespace())
    model = types.SimpleNamespace(gradient_checkpointing=False)
    assert checkpointing_unsupported(model) is None
    set_checkpointing(model, True)
    assert model.gradient_checkpointing is True
