"""The retrieval benchmark: its task generator, matched model sizes, and a tiny run."""
import dataclasses
import json

import pytest
import torch

from benchmarks import retrieval
from benchmarks.retrieval_data import (BOS, QUERY, RetrievalTask, batches, eval_set, make_batch,
                                       parse_facts)

TINY = dict(seq_len=32, n_facts=3, n_queries=2, n_keys=16, n_values=16, n_filler=16, d_model=32, n_heads=2,
            n_layers=2, d_state=8, d_ff=128, batch_size=16, warmup=2, eval_every=5, n_eval=32,
            stats_batch=8, lr=3e-3, threads=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    """main() and the training test set torch's thread count; leave it as found."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("task", [RetrievalTask(), RetrievalTask(n_queries=4),
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


@pytest.mark.parametrize("shape", [dict(d_model=32, n_heads=2, d_state=8, d_ff=128),
                                   dict()])   # the default configuration
def test_parameter_counts_match_within_one_percent(shape):
    run = retrieval.RunConfig(**shape)
    models = retrieval.build_models(run, run.task().vocab_size)   # asserts it too
    n_s, n_t = models["sisa"].num_parameters(), models["transformer"].num_parameters()
    assert abs(n_s - n_t) <= 0.01 * n_t
    assert models["sisa"].config.d_ff < models["transformer"].config.d_ff == run.d_ff
    assert models["sisa"].config.use_ssm and not models["transformer"].config.use_ssm


def test_tiny_training_run_lowers_the_loss_for_both_models():
    run = retrieval.RunConfig(**TINY, steps=15)
    torch.set_num_threads(run.threads)
    task = run.task()
    held_out = eval_set(task, run.n_eval, run.eval_seed)
    for name, model in retrieval.build_models(run, task.vocab_size).items():
        records = retrieval.train(name, model, run, task, held_out)
        assert [r["step"] for r in records] == [0, 5, 10, 15]
        assert records[-1]["loss"] < records[0]["loss"] - 0.3, (name, records)
        if name == "sisa":
            assert records[-1]["max_abs_g_minus_c"] > 0
            assert len(records[-1]["lam"]) == run.n_heads
            assert len(records[-1]["half_life"]) == run.n_layers


def test_main_writes_json_and_plot(tmp_path):
    args = []
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    args += ["--out", str(tmp_path), "--steps", "4", "--eval-every", "2"]   # later flags win
    result = retrieval.main(args)
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert (tmp_path / "retrieval.png").stat().st_size > 0
    assert saved["models"].keys() == {"sisa", "transformer"}
    assert [r["step"] for r in saved["models"]["sisa"]] == [0, 2, 4]
    assert {"step", "accuracy", "loss", "max_abs_g_minus_c", "half_life", "lam"} <= saved["models"]["sisa"][0].keys()
    assert saved["config"]["run"] == dataclasses.asdict(retrieval.RunConfig(**(TINY | dict(steps=4, eval_every=2))))
    assert result["config"]["parameters"] == saved["config"]["parameters"]
