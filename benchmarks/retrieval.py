"""SISA vs Transformer on needle-in-a-haystack retrieval: the paper's claim in miniature.

    python -m benchmarks.retrieval            # default run (<= 15 min on a 2-core CPU)
    python -m benchmarks.retrieval --smoke    # < 60 s, a wiring check

Trains a SISA model and a Transformer baseline (the same model with the SSM term
off) with matched parameter counts -- SISA's FFN shrunk by ``sisa.matched_d_ff``,
the paper's rule -- on the same seed and data order, and evaluates retrieval
accuracy on a fixed held-out set every ``--eval-every`` steps. For SISA it also
logs what the paper monitors: max |g - c| (the range the paper's single-offset
factorisation must cover; it clamps at 11), the mean decay half-life per layer and
lam per head. Writes ``retrieval.json`` and ``retrieval.png`` to ``--out``, prints a
table, and reports progress on stderr.

The paper (152M, 512-token contexts, 5 facts): Transformer 61.5/78/93.5/98.5/100 %
at steps 1K/2K/3K/5K/7K, SISA 100 % at every one.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sisa
from benchmarks.retrieval_data import RetrievalBatch, RetrievalTask, batches, eval_set

MODELS = ("sisa", "transformer")
DEFAULT_OUT = Path("benchmarks/results/retrieval_cpu")


@dataclasses.dataclass
class RunConfig:
    # task
    seq_len: int = 128
    n_facts: int = 5
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 64
    n_queries: int = 4        # queries per context (distinct facts): more supervision per step
    # model (the Transformer's d_ff; SISA's is matched_d_ff of it)
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    d_state: int = 16
    d_ff: int = 256
    backend: str = "auto"
    # training
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 100
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    seed: int = 0
    # evaluation
    eval_every: int = 100
    n_eval: int = 500
    eval_seed: int = 12345
    stats_batch: int = 64
    threads: int = 2

    def task(self) -> RetrievalTask:
        return RetrievalTask(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RetrievalTask)})


SMOKE = dict(seq_len=64, d_model=64, n_heads=2, n_layers=2, d_ff=256, steps=30,
             batch_size=16, warmup=5, eval_every=10, n_eval=64, stats_batch=16)


def model_configs(run: RunConfig, vocab_size: int) -> dict[str, "sisa.SISAConfig"]:
    base = dict(vocab_size=vocab_size, d_model=run.d_model, n_heads=run.n_heads,
                n_layers=run.n_layers, d_state=run.d_state, backend=run.backend)
    sisa_ff = sisa.matched_d_ff(run.d_model, run.n_heads, run.d_state, run.d_ff)
    return {"sisa": sisa.SISAConfig(**base, d_ff=sisa_ff, use_ssm=True),
            "transformer": sisa.SISAConfig(**base, d_ff=run.d_ff, use_ssm=False)}


def build_models(run: RunConfig, vocab_size: int) -> dict[str, torch.nn.Module]:
    """Both models, each initialised from the same seed; asserts matched sizes (1 %)."""
    models = {}
    for name, cfg in model_configs(run, vocab_size).items():
        torch.manual_seed(run.seed)
        models[name] = sisa.SISAModel(cfg)
    n_s, n_t = (models[m].num_parameters() for m in MODELS)
    assert abs(n_s - n_t) <= 0.01 * n_t, f"parameter counts differ by > 1 %: SISA {n_s}, Transformer {n_t}"
    return models


def lr_lambda(run: RunConfig):
    """Linear warm-up to the peak, cosine down to ``min_lr_ratio`` of it."""
    def f(step: int) -> float:
        if step < run.warmup:
            return (step + 1) / run.warmup
        progress = min(1.0, (step - run.warmup) / max(1, run.steps - run.warmup))
        return run.min_lr_ratio + (1 - run.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def answer_loss(model, batch: RetrievalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the answer positions, and the predictions there
    (b, n_queries).

    The loss is on the answer tokens only. Everything else in a context is uniform
    noise (filler, keys, values are all drawn at random), so an LM loss over it is
    an irreducible floor of ~ln(64) nats per token that would swamp the few
    tokens that measure retrieval, both in the gradient and in the reported loss.
    """
    logits = model(batch.ids)[:, batch.answer_positions].float()      # (b, n_queries, vocab)
    return F.cross_entropy(logits.flatten(0, 1), batch.target.flatten()), logits.argmax(-1)


@torch.no_grad()
def evaluate(model, data: RetrievalBatch, chunk: int = 125) -> dict:
    model.eval()
    n, loss_sum, correct = data.ids.shape[0], 0.0, 0.0
    for i in range(0, n, chunk):
        part = RetrievalBatch(*(x[i:i + chunk] for x in dataclasses.astuple(data)))
        loss, pred = answer_loss(model, part)
        loss_sum += loss.item() * part.ids.shape[0]
        correct += (pred == part.target).float().mean(1).sum().item()
    model.train()
    return {"accuracy": correct / n, "loss": loss_sum / n}


@torch.no_grad()
def ssm_stats(model, ids: torch.Tensor) -> dict:
    """The paper's monitors on one batch: max |g - c| over sequences, heads and layers
    (c = (max g + min g)/2 per sequence and head; equals half the total decay), the
    mean decay half-life ln 2 / mean(-log_alpha) per layer, and lam per head
    averaged over layers."""
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


class Progress:
    """stderr lines: step, loss, elapsed, ETA over all models still to train."""

    def __init__(self, total_steps: int):
        self.total, self.done, self.start = total_steps, 0, time.perf_counter()

    def step(self, name: str, step: int, steps: int, loss: float, acc: float | None = None,
             show: bool = True):
        self.done += 1
        if not show:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        extra = "" if acc is None else f"  eval acc {acc:.3f}"
        print(f"[{name:>11}] step {step:5d}/{steps}  loss {loss:.4f}  elapsed {elapsed:6.0f}s"
              f"  eta {eta:6.0f}s{extra}", file=sys.stderr, flush=True)


def train(name: str, model, run: RunConfig, task: RetrievalTask, held_out: RetrievalBatch,
          progress: Progress | None = None, log_every: int = 10) -> list[dict]:
    """Train one model; returns one record per evaluation (step 0 included)."""
    opt = torch.optim.AdamW(sisa.param_groups(model, run.lr, run.weight_decay),
                            lr=run.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(run))
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
        return rec

    record(0)
    for step in range(1, run.steps + 1):
        batch = next(data)
        loss, _ = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.clip)
        opt.step()
        sched.step()
        window.append(loss.item())
        if not math.isfinite(window[-1]):
            raise FloatingPointError(f"{name}: loss is {window[-1]} at step {step}")
        acc = None
        if step % run.eval_every == 0 or step == run.steps:
            acc = record(step)["accuracy"]
        if progress is not None:
            show = acc is not None or step % log_every == 0
            progress.step(name, step, run.steps, window[-1] if window else loss.item(), acc, show)
    return records


def table(result: dict) -> str:
    runs = result["models"]
    names = [m for m in MODELS if m in runs]
    head = "  step | " + " | ".join(f"{m[:5]} acc  {m[:5]} loss" for m in names)
    lines = [head, "-" * len(head)]
    for i, rec in enumerate(runs[names[0]]):
        cells = []
        for m in names:
            r = runs[m][i]
            cells.append(f"{r['accuracy']:9.3f}  {r['loss']:10.4f}")
        lines.append(f"{rec['step']:6d} | " + " | ".join(cells))
    if "sisa" in runs:
        last = runs["sisa"][-1]
        lines.append(f"SISA at step {last['step']}: max|g-c| {last['max_abs_g_minus_c']:.3f}, "
                     f"half-life per layer {last['half_life']} tokens, lam per head {last['lam']}")
    return "\n".join(lines)


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    task = cfg["task"]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for name, recs in result["models"].items():
        steps = [r["step"] for r in recs]
        label = f"{name} ({cfg['parameters'][name] / 1e6:.2f}M)"
        ax_acc.plot(steps, [r["accuracy"] for r in recs], marker=".", label=label)
        ax_loss.plot(steps, [r["loss"] for r in recs], marker=".", label=label)
    ax_acc.axhline(1 / task["n_facts"], color="grey", ls=":", lw=1, label="1/n_facts")
    ax_acc.set(xlabel="training step", ylabel="held-out retrieval accuracy", ylim=(-0.02, 1.02))
    # plateaus: guessing any value (ln n_values), any value of this context (ln n_facts)
    for n, ls in ((task["n_values"], "--"), (task["n_facts"], ":")):
        ax_loss.axhline(math.log(n), color="grey", ls=ls, lw=1, label=f"ln {n}")
    ax_loss.set(xlabel="training step", ylabel="held-out answer loss (nats)", ylim=(0, None))
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    run = cfg["run"]
    fig.suptitle(f"Retrieval: {task['seq_len']}-token contexts, {task['n_facts']} facts, "
                 f"d_model {run['d_model']}, {run['n_layers']} layers, batch {run['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> tuple[RunConfig, Path, list[str], bool]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny run (< 60 s) to check the wiring")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {DEFAULT_OUT}, or its scratch/smoke with --smoke)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of sisa,transformer")
    for f in dataclasses.fields(RunConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    a = p.parse_args(argv)
    over = dict(SMOKE) if a.smoke else {}
    over |= {f.name: getattr(a, f.name) for f in dataclasses.fields(RunConfig)
             if getattr(a, f.name) is not None}
    run = RunConfig(**over)
    out = a.out or (DEFAULT_OUT / "scratch" / "smoke" if a.smoke else DEFAULT_OUT)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}")
    return run, out, models, a.smoke


def main(argv=None) -> dict:
    run, out, names, smoke = parse_args(argv)
    torch.set_num_threads(run.threads)
    task = run.task()
    held_out = eval_set(task, run.n_eval, run.eval_seed)
    models = build_models(run, task.vocab_size)
    cfgs = {m: dataclasses.asdict(models[m].config) for m in MODELS}
    result = {"config": {
        "task": task.to_dict(), "run": dataclasses.asdict(run), "smoke": smoke,
        "models": cfgs, "parameters": {m: models[m].num_parameters() for m in MODELS},
        "loss": "cross-entropy on the answer tokens only",
        "machine": {"host": platform.node(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "paper": {"steps": [1000, 2000, 3000, 5000, 7000],
                  "transformer": [61.5, 78, 93.5, 98.5, 100], "sisa": [100] * 5},
    }, "models": {}, "wall_s": {}}
    print("parameters: " + ", ".join(f"{m} {n:,}" for m, n in result["config"]["parameters"].items())
          + f"; SISA d_ff {cfgs['sisa']['d_ff']} vs {cfgs['transformer']['d_ff']}", file=sys.stderr)
    progress = Progress(run.steps * len(names))
    for name in names:
        t0 = time.perf_counter()
        result["models"][name] = train(name, models[name], run, task, held_out, progress)
        result["wall_s"][name] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "retrieval.png")
    print(table(result))
    print("wall time: " + ", ".join(f"{m} {s:.0f}s" for m, s in result["wall_s"].items())
          + f"; wrote {out / 'retrieval.json'} and {out / 'retrieval.png'}")
    return result


if __name__ == "__main__":
    main()
