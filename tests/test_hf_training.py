"""sisa.hf with transformers' Trainer on the CPU: the loss and gradient of gradient
accumulation and of DDP (2 spawned gloo processes) equal one large batch (the model
honours num_items_in_batch), a resumed run continues exactly, gradient checkpointing
gives the gradients of the plain run, resize_token_embeddings keeps one vocab size."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):   # before transformers loads
    os.environ.setdefault(var, "1")
pytest.importorskip("transformers", reason="sisa.hf needs transformers: pip install -e '.[hf]'")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate: pip install accelerate")

from transformers import Trainer, TrainingArguments                     # noqa: E402

import sisa.hf as H                                                      # noqa: E402

TINY = dict(vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_state=4, d_ff=48, n_kv_heads=2, backend="sdpa")
ROWS, LENGTH = 8, 10


def tiny_model():
    torch.manual_seed(0)
    return H.SISAForCausalLM(H.SISAHFConfig(**TINY))


class Rows(torch.utils.data.Dataset):
    """8 rows of 10 tokens; row r has r + (r % 3) leading labels -100 (uneven counts)."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 61, (ROWS, LENGTH), generator=gen)
        self.labels = self.ids.clone()
        for r in range(ROWS):
            self.labels[r, : min(r + r % 3, LENGTH - 2)] = -100

    def __len__(self):
        return ROWS

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def train(out_dir, batch, accumulation, steps=1, resume=None, **args):
    """Trainer.train on Rows (plain SGD: the update is the clipped gradient, which the
    parameters then show); returns (the per-step logs, the final parameters)."""
    targs = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", logging_steps=1, report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0, max_grad_norm=1.0,
        **{"save_strategy": "no", **args})
    trainer = Trainer(model=tiny_model(), args=targs, train_dataset=Rows())
    trainer.train(resume_from_checkpoint=resume)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return logs, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def one_batch_reference():
    """The loss and gradient norm of all 8 rows in one plain forward and backward."""
    model, data = tiny_model().train(), Rows()
    loss = model(data.ids, labels=data.labels).loss
    loss.backward()
    return loss.item(), torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()


def assert_same_step(got, want, tol=1e-5):
    for key in ("loss", "grad_norm"):
        assert abs(got[key] - want[key]) <= tol * max(1.0, abs(want[key])), (key, got[key], want[key])


def test_gradient_accumulation_equals_one_batch(tmp_path):
    loss, norm = one_batch_reference()
    (big,), big_params = train(tmp_path / "big", batch=8, accumulation=1)
    (acc,), acc_params = train(tmp_path / "acc", batch=4, accumulation=2)
    assert_same_step(big, {"loss": loss, "grad_norm": norm})
    assert_same_step(acc, big)
    for name, p in big_params.items():
        torch.testing.assert_close(acc_params[name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_resumed_run_continues_exactly(tmp_path):
    logs, params = train(tmp_path / "full", batch=4, accumulation=2, steps=3, save_strategy="steps", save_steps=2)
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert ckpt.is_dir()
    resumed_logs, resumed = train(tmp_path / "resumed", batch=4, accumulation=2, steps=3, resume=str(ckpt))
    assert resumed_logs[-1]["step"] == 3
    assert_same_step(resumed_logs[-1], logs[-1], tol=1e-6)
    for name, p in params.items():
        torch.testing.assert_close(resumed[name], p, rtol=0, atol=1e-6, msg=name)


def test_trainer_gradient_checkpointing_equals_the_plain_run(tmp_path):
    (plain,), plain_params = train(tmp_path / "plain", batch=8, accumulation=1)
    (ckpt,), ckpt_params = train(tmp_path / "ckpt", batch=8, accumulation=1, gradient_checkpointing=True)
    assert_same_step(ckpt, plain, tol=1e-6)
    for name, p in plain_params.items():
        torch.testing.assert_close(ckpt_params[name], p, rtol=0, atol=1e-7, msg=name)


def test_gradient_checkpointing_enable_recomputes_every_block_with_equal_gradients():
    model, data = tiny_model().train(), Rows()

    def grads():
        model.zero_grad()
        model(data.ids, labels=data.labels).loss.backward()
        return [p.grad.clone() for p in model.parameters()]
    plain = grads()
    calls = []
    model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing and model.is_gradient_checkpointing
    func = model.model._gradient_checkpointing_func
    assert func.keywords == {"use_reentrant": False}
    model.model._gradient_checkpointing_func = lambda *a, **k: calls.append(a[0]) or func(*a, **k)
    checkpointed = grads()
    assert calls == list(model.model.layers)                             # one checkpoint per block
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)
    model.gradient_checkpointing_disable()
    assert not model.model.gradient_checkpointing


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    (log,), _ = train(os.path.join(out_dir, "run"), batch=4, accumulation=1, ddp_backend="gloo")
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(log, f)


def test_ddp_two_ranks_equal_one_batch(tmp_path):
    """2 ranks x batch 4 over gloo (Trainer's DDP on the CPU) give the loss and gradient
    norm of the 8 rows in one batch."""
    loss, norm = one_batch_reference()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        log = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert_same_step(log, {"loss": loss, "grad_norm": norm})


def test_resize_token_embeddings_keeps_one_vocab_size():
    model = tiny_model().eval()
    ids = torch.randint(0, 61, (1, 5))
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    model.resize_token_embeddings(70)
    assert model.config.vocab_size == model.model.config.vocab_size == model.model.embed.num_embeddings == 70
    with torch.no_grad():
        grown = model(torch.cat([ids, torch.tensor([[69]])], 1), use_cache=False).logits
    assert grown.shape == (1, 6, 70)
    torch.testing.assert_close(grown[:, :5, :61], before, rtol=1e-5, atol=1e-6)   # old rows unchanged
    model.resize_token_embeddings(50)
    assert model.config.vocab_size == model.model.config.vocab_size == 50
    with pytest.raises(ValueError, match=r"token ids in \[0, vocab_size\) = \[0, 50\)"):
        model(torch.tensor([[3, 55]]))
    assert model(torch.tensor([[3, 49]])).logits.shape == (1, 2, 50)
