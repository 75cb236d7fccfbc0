"""The associative-recall benchmark: its task generator, matched model sizes, the
accuracy and steps-to-threshold arithmetic, and the --smoke sweep end to end."""
import dataclasses
import json

import pytest
import torch

from benchmarks import retrieval, retrieval_report, retrieval_train
from benchmarks.retrieval_data import (BOS, QUERY, RetrievalBatch, RetrievalTask, batches, eval_set,
                                       make_batch, parse_facts)

TINY = dict(seq_len=32, n_facts=3, n_queries=2, n_keys=16, n_values=16, n_filler=16, d_model=32, n_heads=2,
            n_layers=2, d_state=8, d_ff=128, batch_size=16, warmup=2, eval_every=5, n_eval=32,
            stats_batch=8, lr=3e-3, threads=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Training sets torch's thread count; leave it as found."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("task", [RetrievalTask(), RetrievalTask(n_queries=4), RetrievalTask.mqar(4),
                                  RetrievalTask.mqar(8),
                                  RetrievalTask(seq_len=25, n_facts=5, n_keys=5, n_values=7, n_filler=3,
                                                n_queries=2)])
def test_contexts_hold_exactly_the_claimed_facts(task):
    batch = make_batch(task, 64, torch.Generator().manual_seed(1))
    assert batch.ids.shape == (64, task.seq_len)
    assert batch.ids.min() >= 0 and batch.ids.max() < task.vocab_size
    claimed = batch.facts()
    for i, ids in enumerate(batch.ids):
        facts = parse_facts(ids, task)
        assert facts == claimed[i]
        keys = [k for _, k, _ in facts]
        values = [v for _, _, v in facts]
        assert len(facts) == task.n_facts
        assert len(set(keys)) == task.n_facts and len(set(values)) == task.n_facts
        assert all(task.value_range[0] <= v < task.value_range[1] for v in values)
        # everything that is not a fact, BOS or the query is filler
        fact_slots = {p for p, _, _ in facts} | {p + 1 for p, _, _ in facts}
        rest = [tok for j, tok in enumerate(ids[1:1 + task.body_len].tolist(), start=1)
                if j not in fact_slots]
        assert all(task.filler_range[0] <= tok < task.filler_range[1] for tok in rest)
        assert ids[0] == BOS
        answer = batch.answer_positions
        assert torch.equal(answer, task.answer_positions) and answer[-1] == task.seq_len - 1
        assert (ids[answer - 1] == QUERY).all()
        q_keys = ids[answer].tolist()
        assert len(set(q_keys)) == task.n_queries and set(q_keys) <= set(keys)
        assert batch.target[i].tolist() == [dict(zip(keys, values))[k] for k in q_keys]
        assert [keys[j] for j in batch.query[i]] == q_keys


def test_mqar_packs_the_pairs_and_queries_every_key():
    task = RetrievalTask.mqar(4)
    assert task.seq_len == 17 and task.n_filler == 0 and task.vocab_size == 2 + 32 + 32
    batch = make_batch(task, 16, torch.Generator().manual_seed(3))
    assert (batch.positions == torch.tensor([1, 3, 5, 7])).all()           # back to back after BOS
    assert (batch.query.sort(1).values == torch.arange(4)).all()           # each pair asked once
    with pytest.raises(ValueError, match="n_filler=0"):
        RetrievalTask(seq_len=20, n_facts=4, n_queries=4, n_filler=0)


def test_fact_depths_cover_the_context():
    task = RetrievalTask(seq_len=128)
    batch = make_batch(task, 2000, torch.Generator().manual_seed(2))
    assert batch.positions.min() == 1 and batch.positions.max() == task.seq_len - 4  # first, last slot
    assert torch.bincount(batch.query[:, 0], minlength=task.n_facts).min() > 300  # every fact is asked


def test_streams_are_reproducible_and_held_out_differs():
    task = RetrievalTask(seq_len=64)
    a, b = next(batches(task, 8, seed=0)), next(batches(task, 8, seed=0))
    assert torch.equal(a.ids, b.ids)
    assert torch.equal(eval_set(task, 8, 5).ids, eval_set(task, 8, 5).ids)
    assert not torch.equal(eval_set(task, 8, 5).ids, a.ids)


@pytest.mark.parametrize("shape", [dict(d_model=32, n_heads=2, d_state=8, d_ff=128), dict()])  # dict(): default
def test_parameter_counts_match_within_one_percent(shape):
    run = retrieval_train.RunConfig(**shape)
    models = retrieval_train.build_models(run, run.task().vocab_size)   # asserts it too
    n_s, n_t = models["sisa"].num_parameters(), models["transformer"].num_parameters()
    assert abs(n_s - n_t) <= 0.01 * n_t
    assert models["sisa"].config.d_ff < models["transformer"].config.d_ff == run.d_ff
    assert models["sisa"].config.use_ssm and not models["transformer"].config.use_ssm


def test_accuracy_counts_every_query_and_an_oracle_scores_one():
    pred = torch.tensor([[5, 6], [7, 9]])
    target = torch.tensor([[5, 6], [7, 8]])
    assert retrieval_train.accuracy(pred, target) == 0.75

    task = RetrievalTask.mqar(4)
    data = eval_set(task, 40, 7)

    class Oracle(torch.nn.Module):
        """Logits that put all mass on the value after the last earlier occurrence of each key."""
        def forward(self, ids):
            out = torch.zeros(*ids.shape, task.vocab_size)
            for b, row in enumerate(ids.tolist()):
                for t, tok in enumerate(row):
                    earlier = [i for i in range(t) if row[i] == tok]
                    if earlier and earlier[0] + 1 < len(row):
                        out[b, t, row[earlier[0] + 1]] = 1.0
            return out

    class Blind(torch.nn.Module):
        """Always the first value of the vocabulary."""
        def forward(self, ids):
            out = torch.zeros(*ids.shape, task.vocab_size)
            out[..., task.value_range[0]] = 1.0
            return out

    for model, expected in ((Oracle(), 1.0), (Blind(), None)):
        model.train()
        res = retrieval_train.evaluate(model, data, chunk=16)
        if expected is not None:
            assert res["accuracy"] == expected
        else:
            hits = (data.target == task.value_range[0]).float().mean().item()
            assert res["accuracy"] == pytest.approx(hits) and res["accuracy"] < 0.2


def test_steps_to_threshold_and_summary():
    recs = [{"step": s, "accuracy": a} for s, a in ((0, 0.0), (50, 0.3), (100, 0.6), (150, 0.93), (200, 0.97))]
    assert retrieval_report.steps_to(recs, 0.5) == 100
    assert retrieval_report.steps_to(recs, 0.9) == 150
    assert retrieval_report.steps_to(recs, 0.95) == 200
    assert retrieval_report.steps_to(recs, 0.99) is None
    other = [{"step": s, "accuracy": a} for s, a in ((0, 0.0), (50, 0.55), (100, 0.8))]
    s = retrieval_report.summarize({"0": recs, "1": other})
    assert s["0.5"] == {"per_seed": {"0": 100, "1": 50}, "reached": 2, "seeds": 2, "mean": 75, "min": 50,
                        "max": 100}
    assert s["0.95"]["reached"] == 1 and s["0.95"]["mean"] == 200 and s["0.95"]["per_seed"]["1"] is None
    assert s["final_accuracy"] == {"0": 0.97, "1": 0.8}


def test_tiny_training_run_lowers_the_loss_and_stops_early():
    run = retrieval_train.RunConfig(**TINY, steps=15)
    torch.set_num_threads(run.threads)
    task = run.task()
    held_out = eval_set(task, run.n_eval, run.eval_seed)
    for name, model in retrieval_train.build_models(run, task.vocab_size).items():
        records = retrieval_train.train(name, model, run, task, held_out, log=None)
        assert [r["step"] for r in records] == [0, 5, 10, 15]
        assert records[-1]["loss"] < records[0]["loss"] - 0.3, (name, records)
        if name == "sisa":
            assert records[-1]["max_abs_g_minus_c"] > 0
            assert len(records[-1]["lam"]) == run.n_heads
            assert len(records[-1]["half_life"]) == run.n_layers
    run = dataclasses.replace(run, stop_at=0.0)      # reached at the first evaluation after step 0
    model = retrieval_train.build_models(run, task.vocab_size, names=("transformer",))["transformer"]
    assert [r["step"] for r in retrieval_train.train("t", model, run, task, held_out, log=None)] == [0, 5]


def test_smoke_sweep_writes_json_and_plot(tmp_path):
    result = retrieval.main(["--smoke", "--out", str(tmp_path), "--workers", "1"])
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert (tmp_path / "retrieval.png").stat().st_size > 0
    assert saved["runs"].keys() == saved["summary"].keys() == {"2 pairs", "4 pairs"}
    for setting, by_model in saved["runs"].items():
        assert by_model.keys() == {"sisa", "transformer"}
        for model, by_seed in by_model.items():
            assert by_seed.keys() == {"0"}
            recs = by_seed["0"]
            assert [r["step"] for r in recs] == [0, 10, 20]
            assert {"step", "accuracy", "loss", "train_loss", "elapsed_s"} <= recs[0].keys()
            summ = saved["summary"][setting][model]
            assert summ["0.5"]["per_seed"]["0"] == retrieval_report.steps_to(recs, 0.5)
        p = saved["config"]["parameters"][setting]
        assert abs(p["sisa"] - p["transformer"]) <= 0.01 * p["transformer"]
    assert saved["config"]["settings"]["4 pairs"]["seq_len"] == 17
    assert {"max_abs_g_minus_c", "half_life", "lam"} <= saved["runs"]["2 pairs"]["sisa"]["0"][-1].keys()
    t = saved["timing"]
    assert t["wall_s"] > 0 and len(t["loadavg_start"]) == 3 and t["threads_per_worker"] == 1
    assert saved["config"]["smoke"] is True and result["timing"]["wall_s"] == t["wall_s"]
