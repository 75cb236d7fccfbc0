"""Training one model on the associative-recall task: configuration, matched model
pair, loss, held-out evaluation, SISA's monitors and the training loop.

``benchmarks.retrieval`` runs this for both models, several seeds and settings.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch
import torch.nn.functional as F

import sisa
from .retrieval_data import RetrievalBatch, RetrievalTask, batches

MODELS = ("sisa", "transformer")


@dataclasses.dataclass
class RunConfig:
    # task (see RetrievalTask; the default is MQAR with 8 pairs, no filler)
    seq_len: int = 33
    n_facts: int = 8
    n_keys: int = 32
    n_values: int = 32
    n_filler: int = 0
    n_queries: int = 8
    # model (the Transformer's d_ff; SISA's is matched_d_ff of it)
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    d_state: int = 16
    d_ff: int = 256
    backend: str = "auto"
    # training
    steps: int = 5000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 100
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    seed: int = 0
    stop_at: float = 0.99     # stop once held-out accuracy reaches this (1.01: never)
    # evaluation
    eval_every: int = 50
    n_eval: int = 256
    eval_seed: int = 12345
    stats_batch: int = 64
    threads: int = 1

    def task(self) -> RetrievalTask:
        return RetrievalTask(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RetrievalTask)})

    def with_pairs(self, n_pairs: int) -> "RunConfig":
        """The same run on MQAR with ``n_pairs`` pairs (context 1 + 4 * n_pairs tokens)."""
        t = RetrievalTask.mqar(n_pairs, self.n_keys, self.n_values)
        return dataclasses.replace(self, seq_len=t.seq_len, n_facts=t.n_facts, n_filler=t.n_filler,
                                   n_queries=t.n_queries)


def model_configs(run: RunConfig, vocab_size: int) -> dict[str, "sisa.SISAConfig"]:
    base = dict(vocab_size=vocab_size, d_model=run.d_model, n_heads=run.n_heads,
                n_layers=run.n_layers, d_state=run.d_state, backend=run.backend)
    # multiple_of=1: the paper's exact width (at d_model 32-64 rounding to 8 would cost > 1% of the parameters)
    sisa_ff = sisa.matched_d_ff(run.d_model, run.n_heads, run.d_state, run.d_ff, multiple_of=1)
    return {"sisa": sisa.SISAConfig(**base, d_ff=sisa_ff, use_ssm=True),
            "transformer": sisa.SISAConfig(**base, d_ff=run.d_ff, use_ssm=False)}


def build_models(run: RunConfig, vocab_size: int, names=MODELS) -> dict[str, torch.nn.Module]:
    """The named models, each initialised from ``run.seed``; asserts matched sizes (1 %)."""
    cfgs = model_configs(run, vocab_size)
    n_s, n_t = (sum(p.numel() for p in sisa.SISAModel(cfgs[m]).parameters()) for m in MODELS)
    assert abs(n_s - n_t) <= 0.01 * n_t, f"parameter counts differ by > 1 %: SISA {n_s}, Transformer {n_t}"
    models = {}
    for name in names:
        torch.manual_seed(run.seed)
        models[name] = sisa.SISAModel(cfgs[name])
    return models


def lr_lambda(run: RunConfig):
    """Linear warm-up to the peak, cosine down to ``min_lr_ratio`` of it."""
    def f(step: int) -> float:
        if step < run.warmup:
            return (step + 1) / run.warmup
        progress = min(1.0, (step - run.warmup) / max(1, run.steps - run.warmup))
        return run.min_lr_ratio + (1 - run.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def optimizer(model, run):
    """AdamW over ``sisa.param_groups`` (betas 0.9, 0.95) and its ``lr_lambda`` schedule;
    ``run`` holds lr, weight_decay and the schedule's fields (RunConfig, NeedleConfig)."""
    opt = torch.optim.AdamW(sisa.param_groups(model, run.lr, run.weight_decay), lr=run.lr, betas=(0.9, 0.95))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(run))


def optimizer_step(name: str, step: int, model, opt, sched, loss: torch.Tensor, clip: float) -> float:
    """Backward, clip, step the optimizer and the schedule; the loss as a float (an
    error naming the model and step if it is not finite)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"{name}: loss is {value} at step {step}")
    return value


def answer_loss(model, batch: RetrievalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the answer positions, and the predictions there
    (b, n_queries) (argmax over the whole vocabulary).

    The loss is on the answer tokens only: keys and values are drawn at random, so
    an LM loss over them is an irreducible floor that would swamp the tokens that
    measure recall (the usual MQAR setup).
    """
    logits = model(batch.ids)[:, batch.answer_positions].float()      # (b, n_queries, vocab)
    return F.cross_entropy(logits.flatten(0, 1), batch.target.flatten()), logits.argmax(-1)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of answers predicted exactly (every query of every context counts once)."""
    return (pred == target).float().mean().item()


@torch.no_grad()
def evaluate(model, data: RetrievalBatch, chunk: int = 128) -> dict:
    model.eval()
    n, loss_sum, correct = data.ids.shape[0], 0.0, 0.0
    for i in range(0, n, chunk):
        part = RetrievalBatch(*(x[i:i + chunk] for x in dataclasses.astuple(data)))
        loss, pred = answer_loss(model, part)
        loss_sum += loss.item() * part.ids.shape[0]
        correct += accuracy(pred, part.target) * part.ids.shape[0]
    model.train()
    return {"accuracy": correct / n, "loss": loss_sum / n}


@torch.no_grad()
def ssm_stats(model, ids: torch.Tensor) -> dict:
    """The paper's monitors on one batch: max |g - c| over sequences, heads and layers
    (c = (max g + min g)/2 per sequence and head), the mean decay half-life
    ln 2 / mean(-log_alpha) per layer, and lam per head averaged over layers."""
    inputs = {}

    def grab(i):
        def hook(_module, args, kwargs):
            inputs[i] = args[0] if args else next(iter(kwargs.values()))
        return hook

    handles = [layer.attn.register_forward_pre_hook(grab(i), with_kwargs=True)
               for i, layer in enumerate(model.layers)]
    try:
        model.eval()
        model(ids)
    finally:
        model.train()
        for h in handles:
            h.remove()
    max_dev, half_life, lams = 0.0, [], []
    for i, layer in enumerate(model.layers):
        _, _, log_alpha, _ = layer.attn.ssm_inputs(inputs[i])
        g = torch.cumsum(log_alpha.float(), dim=1)                   # (b, t, h)
        c = (g.amax(1, keepdim=True) + g.amin(1, keepdim=True)) / 2
        max_dev = max(max_dev, (g - c).abs().max().item())
        half_life.append(math.log(2) / max(-log_alpha.float().mean().item(), 1e-12))
        lams.append(layer.attn.lam().detach().float())
    return {"max_abs_g_minus_c": max_dev,
            "half_life": [round(x, 2) for x in half_life],
            "lam": [round(x, 4) for x in torch.stack(lams).mean(0).tolist()]}


def train(name: str, model, run: RunConfig, task: RetrievalTask, held_out: RetrievalBatch,
          tag: str | None = None, log=sys.stderr) -> list[dict]:
    """Train one model; returns one record per evaluation (step 0 included). Stops
    early once held-out accuracy reaches ``run.stop_at``. Progress goes to ``log``
    (None: silent) at every evaluation."""
    opt, sched = optimizer(model, run)
    data = batches(task, run.batch_size, run.seed)          # same order for every model
    stats_ids = held_out.ids[: run.stats_batch]
    use_ssm = model.config.use_ssm
    records, window, t0 = [], [], time.perf_counter()

    def record(step: int):
        rec = {"step": step, **evaluate(model, held_out),
               "train_loss": sum(window) / len(window) if window else None,
               "elapsed_s": round(time.perf_counter() - t0, 2)}
        if use_ssm:
            rec |= ssm_stats(model, stats_ids)
        window.clear()
        records.append(rec)
        if log is not None:
            print(f"[{tag or name}] step {step:5d}/{run.steps}  held-out acc {rec['accuracy']:.3f}"
                  f"  loss {rec['loss']:.4f}  {rec['elapsed_s']:6.0f}s", file=log, flush=True)
        return rec

    record(0)
    for step in range(1, run.steps + 1):
        loss, _ = answer_loss(model, next(data))
        window.append(optimizer_step(name, step, model, opt, sched, loss, run.clip))
        if step % run.eval_every == 0 or step == run.steps:
            if record(step)["accuracy"] >= run.stop_at:
                break
    return records
