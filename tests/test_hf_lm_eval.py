"""lm-evaluation-harness on the local tasks (benchmarks/lm_eval_tasks): lm-eval's
scores, example by example, equal the same quantities computed from the model
directly (requires the [eval] extra; skipped with the reason otherwise)."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):   # before transformers loads
    os.environ.setdefault(var, "1")
pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[hf,eval]'")
pytest.importorskip("lm_eval", reason="needs lm-eval: pip install -e '.[eval]'")

from benchmarks import lm_eval_smoke as smoke                            # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    tok = smoke.make_tokenizer()
    return smoke.tiny_model(len(tok)), tok, smoke.read_data()


def test_task_files_are_shipped_and_data_is_as_generated():
    assert all((smoke.TASKS_DIR / f"{t}.yaml").exists() for t in smoke.TASKS)
    rows = smoke.read_data()
    assert rows == smoke.needle_examples()                               # --write-data reproduces the file
    tok = smoke.make_tokenizer()
    for row in rows:
        ids = tok(row["context"], add_special_tokens=False)["input_ids"]
        assert 496 < len(ids) <= 512 and tok.unk_token_id not in ids
        fact = ids.index(tok.convert_tokens_to_ids(row["answer"]))      # the needle, in the first half
        assert fact < len(ids) // 2


def test_lm_eval_in_process_equals_direct_computation(tiny):
    model, tok, rows = tiny
    results, logged = smoke.run_in_process(model, tok, batch_size=4)
    samples = smoke.direct_samples(model, tok, rows)
    assert smoke.compare(results, smoke.direct_scores(samples, rows)) == []
    assert smoke.compare_samples(logged, samples) == []
    # The comparison can fail: a changed log-likelihood or generated word is reported.
    bad = copy.deepcopy(samples)
    bad[3]["ll"] += 0.01
    bad[5]["gen"] = "NOT-A-WORD"
    problems = smoke.compare_samples(logged, bad)
    assert any("sisa_needle doc 3" in p for p in problems) and any("sisa_needle_gen doc 5" in p for p in problems)


def test_lm_eval_command_line_smoke():
    """python -m benchmarks.lm_eval_smoke: the lm_eval CLI in a subprocess, through the
    trust_remote_code files saved beside the weights (that process never imports sisa.hf)."""
    res = subprocess.run([sys.executable, "-m", "benchmarks.lm_eval_smoke", "--limit", "8"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=smoke.offline_env())
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "OK: every score came back" in res.stdout
