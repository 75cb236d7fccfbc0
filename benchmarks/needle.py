"""The paper's zero-shot needle test, in miniature: pretrain SISA and a
parameter-matched Transformer as byte-level language models on a local corpus,
and run the authors' needle test on checkpoints.

    python -m benchmarks.needle             # default run (<= 15 min on an idle 2-core CPU)
    python -m benchmarks.needle --smoke     # < 60 s, a wiring check

Both models start from the same seed and see the same windows in the same order
(``benchmarks.needle_data``: the Python Language Reference shipped in CPython,
512-byte windows, next-byte loss) for a fixed budget of ``steps * batch_size *
seq_len`` bytes. Every ``--eval-every`` steps: the held-out loss (nats per byte) and
the needle test -- 200 trials, seed 42, 502-byte contexts of the authors' filler
with one of their 5 needles in the first half and the key phrase at the end;
success is the argmax over all 256 bytes at the last position being the value's
first letter. Also logged, as diagnostics not in the paper: the accuracy of the
argmax among the 5 candidate letters only (chance 1/5), and the mean log-probability
of the right letter. The models never see a needle in training: the test is
zero-shot, as the authors'. Their models had 50-369M parameters and saw 0.5-3.7B
tokens of SlimPajama by the checkpoints they report; this one sees a few million
bytes of one manual.
Writes ``needle.json`` and ``needle.png`` to ``--out``; progress on stderr, a
table on stdout.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import needle_data as nd
from .retrieval import machine
from .retrieval_train import MODELS, model_configs, optimizer, optimizer_step
import sisa

DEFAULT_OUT = Path("benchmarks/results/needle_cpu")


@dataclasses.dataclass
class NeedleConfig:
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_state: int = 16
    d_ff: int = 512
    backend: str = "auto"
    seq_len: int = 512
    batch_size: int = 8
    steps: int = 1000
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    n_trials: int = 200
    trial_seed: int = 42
    context_len: int = 512
    n_val: int = 32
    val_fraction: float = 0.05
    threads: int = 1


SMOKE = dict(d_model=32, n_heads=2, d_state=8, d_ff=128, seq_len=128, batch_size=4, steps=20,
             warmup=5, eval_every=10, n_trials=16, n_val=4)


def needle_scores(last_logits: torch.Tensor, trials: nd.NeedleTrials) -> dict:
    """From the logits at each trial's last position (n, 256): the paper's score
    (argmax over all bytes == the value's first byte), the argmax among the 5
    candidate first letters, and the mean log-probability of the right byte."""
    logits = last_logits.float()
    candidates = torch.tensor([nd.encode(v)[0] for _, v in nd.PAIRS])
    among = candidates[logits[:, candidates].argmax(-1)]
    logp = logits.log_softmax(-1).gather(1, trials.target[:, None]).squeeze(1)
    return {"accuracy": (logits.argmax(-1) == trials.target).float().mean().item(),
            "accuracy_among_5": (among == trials.target).float().mean().item(),
            "mean_logp_target": logp.mean().item()}


@torch.no_grad()
def evaluate(model, trials: nd.NeedleTrials, val: torch.Tensor, chunk: int = 25) -> dict:
    """Needle scores on the trials and the next-byte loss on the held-out windows."""
    model.eval()
    last = torch.cat([model(trials.ids[i:i + chunk])[:, -1] for i in range(0, len(trials.ids), chunk)])
    val_loss = sum(F.cross_entropy(model(w[None, :-1])[0].float(), w[1:]).item() for w in val) / len(val)
    model.train()
    return needle_scores(last, trials) | {"val_loss": val_loss}


def build_model(cfg: NeedleConfig, name: str):
    """The named model (SISA's d_ff matched to the Transformer's, as in the MQAR runs), from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return sisa.SISAModel(model_configs(cfg, nd.VOCAB)[name])


def pretrain(cfg: NeedleConfig, name: str) -> dict:
    """Train one model (in a worker process); one record per evaluation."""
    torch.set_num_threads(cfg.threads)
    data = nd.corpus_bytes()
    train_bytes, val_bytes = nd.split(data, cfg.val_fraction)
    val = nd.val_windows(val_bytes, cfg.seq_len, cfg.n_val)
    trials = nd.needle_trials(cfg.n_trials, cfg.trial_seed, cfg.context_len)
    model = build_model(cfg, name)
    opt, sched = optimizer(model, cfg)
    stream = nd.lm_batches(train_bytes, cfg.batch_size, cfg.seq_len, cfg.seed)
    records, window, t0, c0 = [], [], time.perf_counter(), time.process_time()

    def record(step):
        rec = {"step": step, "bytes_seen": step * cfg.batch_size * cfg.seq_len, **evaluate(model, trials, val),
               "train_loss": sum(window) / len(window) if window else None,
               "elapsed_s": round(time.perf_counter() - t0, 1)}
        window.clear()
        records.append(rec)
        print(f"[{name}] step {step:5d}/{cfg.steps}  val loss {rec['val_loss']:.3f}  needle "
              f"{rec['accuracy']:.3f} (among 5: {rec['accuracy_among_5']:.3f})  {rec['elapsed_s']:.0f}s",
              file=sys.stderr, flush=True)

    record(0)
    for step in range(1, cfg.steps + 1):
        batch = next(stream)
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1).float(), batch[:, 1:].flatten())
        window.append(optimizer_step(name, step, model, opt, sched, loss, cfg.clip))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step)
    return {"records": records, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
            "parameters": model.num_parameters(), "config": dataclasses.asdict(model.config)}


def table(result: dict) -> str:
    names = list(result["models"])
    head = "  step |    bytes | " + " | ".join(f"{m[:5]:>5} needle  among5  val loss" for m in names)
    lines = [head, "-" * len(head)]
    for i, rec in enumerate(result["models"][names[0]]["records"]):
        cells = [f"{r['accuracy']:12.3f}  {r['accuracy_among_5']:6.3f}  {r['val_loss']:8.3f}"
                 for r in (result["models"][m]["records"][i] for m in names)]
        lines.append(f"{rec['step']:6d} | {rec['bytes_seen'] / 1e6:7.2f}M | " + " | ".join(cells))
    return "\n".join(lines)


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, res in result["models"].items():
        recs = res["records"]
        x = [r["bytes_seen"] / 1e6 for r in recs]
        label = f"{name} ({res['parameters'] / 1e3:.0f}K)"
        axes[0].plot(x, [r["val_loss"] for r in recs], marker=".", label=label)
        axes[1].plot(x, [r["accuracy"] for r in recs], marker=".", label=f"{label}, argmax of 256")
        axes[1].plot(x, [r["accuracy_among_5"] for r in recs], ls="--", marker=".", label=f"{label}, among 5")
        axes[2].plot(x, [r["mean_logp_target"] for r in recs], marker=".", label=label)
    axes[0].set(ylabel="held-out loss (nats/byte)")
    axes[1].axhline(0.2, color="grey", ls=":", lw=1, label="1/5")
    axes[1].set(ylabel="needle accuracy (200 trials)", ylim=(-0.02, 1.02))
    axes[2].axhline(-math.log(256), color="grey", ls=":", lw=1, label="uniform over 256")
    axes[2].set(ylabel="mean log p(value's first byte)")
    for ax in axes:
        ax.set(xlabel="training bytes (M)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Zero-shot needle test (the authors' filler, pairs and scoring) on byte-level LMs "
                 "pretrained on the Python Language Reference", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.needle", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny run (< 60 s) to check the wiring")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {DEFAULT_OUT}, or its scratch/smoke with --smoke)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2: one per model)")
    for f in dataclasses.fields(NeedleConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    a = p.parse_args(argv)
    over = dict(SMOKE) if a.smoke else {}
    over |= {f.name: getattr(a, f.name) for f in dataclasses.fields(NeedleConfig) if getattr(a, f.name) is not None}
    out = a.out or (DEFAULT_OUT / "scratch" / "smoke" if a.smoke else DEFAULT_OUT)
    return NeedleConfig(**over), a.workers, out, a.smoke


def main(argv=None) -> dict:
    cfg, workers, out, smoke = parse_args(argv)
    load_start, t0 = list(os.getloadavg()), time.perf_counter()
    if workers <= 1:
        runs = {name: pretrain(cfg, name) for name in MODELS}
    else:
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futs = {name: pool.submit(pretrain, cfg, name) for name in MODELS}
            runs = {name: fut.result() for name, fut in futs.items()}
    wall, load_end = time.perf_counter() - t0, list(os.getloadavg())
    n_s, n_t = (runs[m]["parameters"] for m in MODELS)
    assert abs(n_s - n_t) <= 0.01 * n_t, f"parameter counts differ by > 1 %: {n_s} vs {n_t}"
    result = {
        "config": {"run": dataclasses.asdict(cfg), "smoke": smoke, "corpus": nd.corpus_info(nd.corpus_bytes()),
                   "needle": {"filler": nd.FILLER, "pairs": nd.PAIRS, "trials": cfg.n_trials,
                              "seed": cfg.trial_seed, "context_bytes": int(nd.needle_trials(
                                  1, cfg.trial_seed, cfg.context_len).ids.shape[1]),
                              "success": "argmax over 256 bytes at the last position == the value's first letter"},
                   "token_budget_bytes": cfg.steps * cfg.batch_size * cfg.seq_len},
        "timing": {"wall_s": round(wall, 1), "workers": workers, "threads_per_worker": cfg.threads,
                   "loadavg_start": load_start, "loadavg_end": load_end, "machine": machine(),
                   "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "models": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "needle.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "needle.png")
    print(table(result))
    print(f"parameters: sisa {n_s:,}, transformer {n_t:,}; corpus {result['config']['corpus']['bytes']:,} bytes "
          f"sha256 {result['config']['corpus']['sha256'][:16]}...; CPU {sum(r['cpu_s'] for r in runs.values()):.0f}s, "
          f"wall {wall:.0f}s with {workers} workers x "
          f"{cfg.threads} threads; load average {load_start[0]:.2f} -> {load_end[0]:.2f}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
