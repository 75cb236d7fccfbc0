"""The needle test in miniature: the corpus, the authors' trial layout with byte
tokens, the scoring, and the --smoke run end to end."""
import json
import math

import pytest
import torch

from benchmarks import needle, needle_data as nd


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_corpus_is_english_text_and_deterministic():
    data = nd.corpus_bytes()
    assert data == nd.corpus_bytes() and len(data) > 300_000
    text = data.decode("utf-8")
    assert "assert" in text and " the " in text
    info = nd.corpus_info(data)
    assert info["bytes"] == len(data) and len(info["sha256"]) == 64
    train, val = nd.split(data, 0.05)
    assert len(train) + len(val) == len(data) and abs(len(val) - 0.05 * len(data)) <= 1
    batch = next(nd.lm_batches(train, 3, 64, seed=0))
    assert batch.shape == (3, 65) and torch.equal(batch, next(nd.lm_batches(train, 3, 64, seed=0)))


def test_trials_follow_the_authors_layout():
    trials = nd.needle_trials(200, 42, 512)
    assert trials.ids.shape == (200, 502)             # context_len - 10, as in their builder
    filler = nd.encode(nd.FILLER * 50)
    for ids, target, pair, start in zip(trials.ids.tolist(), trials.target.tolist(), trials.pair.tolist(),
                                        trials.needle_start.tolist()):
        key, value = nd.PAIRS[pair]
        needle = nd.encode(f"{key} {value}.")
        query = nd.encode(f" {key} ")
        assert ids[start:start + len(needle)] == needle
        assert 5 <= start < len(ids) // 2                                           # in the first half
        assert start <= (512 - len(needle) - len(query) - 10) // 2
        assert ids[:start] == filler[:start]                                         # filler before ...
        assert ids[start + len(needle):-len(query)] == filler[:len(ids) - start - len(needle) - len(query)]
        assert ids[-len(query):] == query                                            # ... and the query last
        assert target == ord(value[0]) and bytes(ids).count(value.encode()) == 1
    assert set(trials.pair.tolist()) == set(range(5))
    assert torch.equal(trials.ids, nd.needle_trials(200, 42, 512).ids)             # seed 42 is fixed
    assert not torch.equal(trials.ids, nd.needle_trials(200, 43, 512).ids)
    assert [k for k, _ in nd.PAIRS] == ["The secret code is", "The password is", "The answer is",
                                        "The key number is", "The magic word is"]


class CopyOracle(torch.nn.Module):
    """Byte LM that at each position predicts the byte that followed the longest
    earlier match of the last 8 bytes (an idealised induction head)."""
    def forward(self, ids):
        out = torch.zeros(*ids.shape, nd.VOCAB)
        for b, row in enumerate(ids.tolist()):
            t = len(row) - 1
            ctx = bytes(row)
            i = ctx.rfind(ctx[t - 7:t + 1], 0, t)
            if i >= 0:
                out[b, t, row[i + 8]] = 1.0
        return out


def test_scores_an_oracle_at_one_and_a_blind_guess_at_chance():
    trials = nd.needle_trials(50, 42, 512)
    val = torch.randint(0, 256, (2, 65))
    res = needle.evaluate(CopyOracle(), trials, val, chunk=7)
    assert res["accuracy"] == 1.0 and res["accuracy_among_5"] == 1.0
    # all logits equal: the argmax is byte 0, wrong everywhere; among the 5 it is always "A"
    flat = torch.zeros(50, 256)
    s = needle.needle_scores(flat, trials)
    assert s["accuracy"] == 0.0
    assert s["accuracy_among_5"] == pytest.approx((trials.target == ord("A")).float().mean().item())
    assert s["mean_logp_target"] == pytest.approx(-math.log(256))
    # a model that always says "E" at the end scores exactly the share of ECHO trials
    e = torch.zeros(50, 256)
    e[:, ord("E")] = 5.0
    assert needle.needle_scores(e, trials)["accuracy"] == pytest.approx((trials.pair == 4).float().mean().item())


def test_smoke_run_writes_json_and_plot(tmp_path):
    result = needle.main(["--smoke", "--out", str(tmp_path), "--workers", "1"])
    saved = json.loads((tmp_path / "needle.json").read_text())
    assert (tmp_path / "needle.png").stat().st_size > 0
    assert saved["models"].keys() == {"sisa", "transformer"}
    for name, res in saved["models"].items():
        recs = res["records"]
        assert [r["step"] for r in recs] == [0, 10, 20]
        assert {"accuracy", "accuracy_among_5", "mean_logp_target", "val_loss", "train_loss",
                "bytes_seen"} <= recs[0].keys()
        assert recs[-1]["val_loss"] < recs[0]["val_loss"]
        assert recs[-1]["bytes_seen"] == 20 * 4 * 128
    p = [saved["models"][m]["parameters"] for m in ("sisa", "transformer")]
    assert abs(p[0] - p[1]) <= 0.01 * p[1]
    c = saved["config"]
    assert c["corpus"]["sha256"] == nd.corpus_info(nd.corpus_bytes())["sha256"]
    assert c["needle"]["trials"] == 16 and c["needle"]["context_bytes"] == 502 and c["needle"]["seed"] == 42
    assert len(saved["timing"]["loadavg_end"]) == 3 and result["timing"] == saved["timing"]
