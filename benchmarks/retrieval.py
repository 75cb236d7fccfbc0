"""SISA vs a parameter-matched Transformer on multi-query associative recall (MQAR).

    python -m benchmarks.retrieval            # default sweep (<= 15 min on an idle 2-core CPU)
    python -m benchmarks.retrieval --smoke    # < 60 s, a wiring check

The task (``benchmarks.retrieval_data``, ``RetrievalTask.mqar``): a context holds
``n`` key/value pairs back to back, then every key once more after a QUERY marker;
the model must emit each queried key's value (argmax over the whole vocabulary,
scored on held-out contexts from a fixed seed). It is the standard synthetic of
efficient-attention papers, chosen so that the Transformer baseline learns it
within the run: it measures how fast each model learns in-context recall, not the
paper's zero-shot needle test (``benchmarks.needle`` does that, in miniature).

For every setting (``--pairs``, default 4 and 8 pairs: 17- and 33-token contexts)
and seed (``--seeds``), both models are built from the same seed with matched
parameter counts (SISA's FFN shrunk by ``sisa.matched_d_ff``, the paper's rule),
trained on the same data order, and evaluated every ``--eval-every`` steps; a run
stops once it reaches ``--stop-at`` held-out accuracy. The runs go to ``--workers``
processes of ``--threads`` torch threads each. Reported: the first evaluated step
at which each model reaches 50 / 90 / 95 % (mean and range over seeds), the wall
time, the load average before and after, the thread count and the machine.
Writes ``retrieval.json`` and ``retrieval.png`` to ``--out``; progress on stderr, a
table on stdout.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import torch

from . import retrieval_report as report
from .retrieval_data import eval_set
from .retrieval_train import MODELS, RunConfig, build_models, train

DEFAULT_OUT = Path("benchmarks/results/retrieval_cpu")
SMOKE = dict(d_model=32, n_heads=2, d_ff=128, d_state=8, steps=20, batch_size=16, warmup=5,
             eval_every=10, n_eval=32, stats_batch=8)
SMOKE_SWEEP = dict(pairs=[2, 4], seeds=[0])


def run_one(run: RunConfig, name: str, tag: str) -> dict:
    """One model, one seed, one setting (runs in a worker process)."""
    torch.set_num_threads(run.threads)
    task = run.task()
    held_out = eval_set(task, run.n_eval, run.eval_seed)
    model = build_models(run, task.vocab_size, names=(name,))[name]
    t0, c0 = time.perf_counter(), time.process_time()
    records = train(name, model, run, task, held_out, tag=tag)
    return {"records": records, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
            "parameters": model.num_parameters(), "config": dataclasses.asdict(model.config)}


def machine() -> dict:
    return {"host": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def sweep(base: RunConfig, pairs: list[int], seeds: list[int], names: list[str], workers: int) -> dict:
    """Every (setting, seed, model) run; returns the full result dict."""
    jobs = {(f"{n} pairs", seed, name): dataclasses.replace(base.with_pairs(n), seed=seed)
            for n in pairs for seed in seeds for name in names}
    load_start, t0 = list(os.getloadavg()), time.perf_counter()
    results = {}
    if workers <= 1:
        for key, run in jobs.items():
            results[key] = run_one(run, key[2], f"{key[2]} {key[0]} seed {key[1]}")
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futs = {pool.submit(run_one, run, key[2], f"{key[2]} {key[0]} seed {key[1]}"): key
                    for key, run in jobs.items()}
            for fut in cf.as_completed(futs):
                results[futs[fut]] = fut.result()
    wall, load_end = time.perf_counter() - t0, list(os.getloadavg())

    runs, params, settings, walls, cpus = {}, {}, {}, {}, {}
    for (setting, seed, name), res in sorted(results.items(), key=lambda kv: (int(kv[0][0].split()[0]),
                                                                           MODELS.index(kv[0][2]), kv[0][1])):
        runs.setdefault(setting, {}).setdefault(name, {})[str(seed)] = res["records"]
        params.setdefault(setting, {})[name] = res["parameters"]
        walls.setdefault(setting, {}).setdefault(name, {})[str(seed)] = res["wall_s"]
        cpus.setdefault(setting, {}).setdefault(name, {})[str(seed)] = res["cpu_s"]
        settings[setting] = jobs[(setting, seed, name)].task().to_dict()
    return {
        "config": {"run": dataclasses.asdict(base), "pairs": pairs, "seeds": seeds, "models": names,
                   "settings": settings, "parameters": params,
                   "loss": "cross-entropy on the answer tokens only",
                   "accuracy": "argmax over the whole vocabulary == the queried key's value, "
                               "over every query of every held-out context"},
        "timing": {"wall_s": round(wall, 1), "run_wall_s": walls, "run_cpu_s": cpus, "workers": workers,
                   "threads_per_worker": base.threads, "loadavg_start": load_start, "loadavg_end": load_end,
                   "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "summary": {s: {m: report.summarize(by_seed) for m, by_seed in by_model.items()}
                    for s, by_model in runs.items()},
        "runs": runs,
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sweep (< 60 s) to check the wiring")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {DEFAULT_OUT}, or its scratch/smoke with --smoke)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of sisa,transformer")
    p.add_argument("--pairs", type=_ints, default=None, help="key/value pairs per setting (default 4,8)")
    p.add_argument("--seeds", type=_ints, default=None, help="seeds (default 0,1,2)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    skip = {"seq_len", "n_facts", "n_filler", "n_queries", "seed"}     # set by --pairs and --seeds
    for f in dataclasses.fields(RunConfig):
        if f.name not in skip:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    a = p.parse_args(argv)
    over = dict(SMOKE) if a.smoke else {}
    over |= {f.name: getattr(a, f.name) for f in dataclasses.fields(RunConfig)
             if f.name not in skip and getattr(a, f.name) is not None}
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    if set(names) - set(MODELS):
        p.error(f"unknown model(s) {sorted(set(names) - set(MODELS))}")
    sweep_default = SMOKE_SWEEP if a.smoke else dict(pairs=[4, 8], seeds=[0, 1, 2])
    pairs = a.pairs or sweep_default["pairs"]
    seeds = a.seeds or sweep_default["seeds"]
    out = a.out or (DEFAULT_OUT / "scratch" / "smoke" if a.smoke else DEFAULT_OUT)
    return RunConfig(**over), pairs, seeds, names, a.workers, out, a.smoke


def main(argv=None) -> dict:
    base, pairs, seeds, names, workers, out, smoke = parse_args(argv)
    result = sweep(base, pairs, seeds, names, workers)
    result["config"]["smoke"] = smoke
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(result, indent=1))
    report.plot(result, out / "retrieval.png")
    t = result["timing"]
    print(report.table(result))
    print(f"parameters: {result['config']['parameters']}")
    cpu = sum(s for by_m in t["run_cpu_s"].values() for by_s in by_m.values() for s in by_s.values())
    print(f"CPU {cpu:.0f}s over all runs; wall {t['wall_s']:.0f}s with {t['workers']} workers x {t['threads_per_worker']} threads; "
          f"load average {t['loadavg_start'][0]:.2f} -> {t['loadavg_end'][0]:.2f}; "
          f"wrote {out / 'retrieval.json'} and {out / 'retrieval.png'}")
    return result


if __name__ == "__main__":
    main()
