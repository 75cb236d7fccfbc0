"""Whole-model throughput and memory: SISA against the Transformer and the paper's form.

    python -m benchmarks.model --quick                  # a tiny model, under a minute on a CPU
    python -m benchmarks.model                          # CPU: the small config; GPU: the 50M preset
    python -m benchmarks.model --preset 152M --amp bf16 --out /tmp/model

Three models with the same weights (``benchmarks.model_forms``): the parameter-
matched Transformer on the best stock attention, SISA on the package's default
path, and SISA with the paper's attention form swapped in. Measured, per model:

    train    one AdamW step (forward, loss, backward, step) on b x t tokens;
             optionally under --amp bf16 autocast and with --checkpointing;
    prefill  the prompt's forward under no_grad at each prompt length (batch 1);
    decode   one cached step at each cache length, batch 1 and a serving batch
             (tokens/s = batch / step time; the step time is the per-token latency).

First the correctness gate (``benchmarks.model_gate``): a model whose loss, logits,
gradients or cached decoding depart from the float64 judge is reported as
``mismatch`` and never timed. Then, per measurement, rounds alternate between the
models (the order flips every round), so each round gives one ratio to the
Transformer and a slow spell of a shared machine lands on all three; the ratio
reported is the median over rounds. A round times ``inner`` calls of each model,
enough to fill --round-ms. Before the rounds, one untimed call per model (the
warm-up; the gate has run every code path once, and AdamW's state is made when the
step is built) measures peak memory: on CUDA
torch.cuda.max_memory_allocated above the memory allocated before the call; on a
CPU the process's peak RSS above its RSS before the call (VmHWM, reset through
/proc/self/clear_refs, after malloc_trim). Progress goes to stderr, one line per
measurement with an estimate of the time left. Writes model.json, model.md and
model.png to --out (default: benchmarks/results/scratch/model-<device>-<date>/ under the
current directory, as benchmarks.run).

The small config (CPU default): the 50M preset's layer shape (d_model 512, 8 heads,
d_state 16, d_ff 1936 for SISA (sisa.matched_d_ff) and 2048 for the Transformer) with 4 layers and a
vocabulary of 8192 (--vocab): with the preset's 50277 the tied head would be ~60% of
a 4-layer step's FLOPs and pull every ratio toward 1.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import sisa
from sisa.model import PRESETS

from . import model_report
from .model_forms import FORMS, build_models, checkpointing_unsupported, decode_step, prefill_step, train_step
from .model_gate import check_form
from .run import RESULTS, _ints, _slug, machine_info, plot_unavailable
from .timing import peak_memory_mb as cuda_peak_memory_mb, pinned_threads

# name: (SISAConfig fields, Transformer d_ff, train (b, t), prefill t's, decode T's, decode batches)
CONFIGS = {
    "quick": (dict(d_model=128, n_heads=4, n_layers=2, d_state=16, vocab_size=512), 512,
              (2, 128), [64, 256], [64, 256], [1, 4]),
    "small": (dict(d_model=512, n_heads=8, n_layers=4, d_state=16, vocab_size=8192), 2048,
              (2, 1024), [256, 1024], [256, 1024], [1, 4]),
}
for _name, (_d, _h, _layers, _ff) in PRESETS.items():
    CONFIGS[_name] = (dict(d_model=_d, n_heads=_h, n_layers=_layers, d_state=16, vocab_size=50277), _ff,
                      (8, 2048), [512, 2048, 8192, 32768], [1024, 4096, 8192, 16384, 32768], [1, 16])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    p.add_argument("--quick", action="store_true", help="the tiny config, 2 rounds (CI)")
    p.add_argument("--preset", choices=sorted(CONFIGS), help="model (default: small on CPU, 50M on GPU)")
    p.add_argument("--forms", default=",".join(FORMS), help="comma-separated, from: " + ", ".join(FORMS))
    p.add_argument("--phases", default="train,prefill,decode", help="comma-separated: train, prefill, decode")
    p.add_argument("--vocab", type=int, help="vocabulary size (overrides the config's)")
    p.add_argument("--batch", type=int, help="training batch")
    p.add_argument("--seqlen", type=int, help="training sequence length")
    p.add_argument("--prefill", type=_ints, help="comma-separated prompt lengths")
    p.add_argument("--cache-lens", type=_ints, help="comma-separated decode cache lengths")
    p.add_argument("--decode-batches", type=_ints, help="comma-separated decode batches (1 and a serving batch)")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (default: bf16 on GPU, none on CPU)")
    p.add_argument("--no-amp", action="store_true", help="float32 even on a GPU")
    p.add_argument("--checkpointing", action="store_true", help="also time training with gradient checkpointing")
    p.add_argument("--rounds", type=int, help="alternating rounds per measurement (default 5; --quick 2)")
    p.add_argument("--round-ms", type=float, help="each model's share of a round lasts at least this long")
    p.add_argument("--gate-t", type=int, help="tokens of the gate batch (default min(t, 256) CPU, 1024 GPU)")
    p.add_argument("--budget-s", type=float, help="stop timing after this many seconds; the rest are 'skipped'")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 with --quick on CPU)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results/scratch/model-...)")
    args = p.parse_args(argv)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    gpu = args.device.type == "cuda"
    args.preset = args.preset or ("quick" if args.quick else "50M" if gpu else "small")
    fields, t_ff, (b, t), prefill, caches, batches = CONFIGS[args.preset]
    args.config = dict(fields, vocab_size=args.vocab or fields["vocab_size"])
    args.transformer_d_ff = t_ff
    args.batch, args.seqlen = args.batch or b, args.seqlen or t
    args.prefill, args.cache_lens = args.prefill or prefill, args.cache_lens or caches
    args.decode_batches = args.decode_batches or batches
    args.amp = None if args.no_amp else (args.amp or ("bf16" if gpu else None))
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.round_ms = args.round_ms if args.round_ms is not None else (20.0 if args.quick else 200.0)
    args.gate_t = min(args.gate_t or (1024 if gpu else 256), args.seqlen)
    if args.threads is None and args.quick and not gpu:
        args.threads = 1
    args.forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    args.phases = [f.strip() for f in args.phases.split(",") if f.strip()]
    bad = [f for f in args.forms if f not in FORMS] + [f for f in args.phases if f not in model_report.PHASES]
    if bad:
        p.error(f"unknown form/phase: {', '.join(bad)}")
    if "transformer" not in args.forms:
        p.error("--forms must include transformer (the ratios' denominator)")
    return args


def sisa_config(args) -> sisa.SISAConfig:
    c = args.config
    d_ff = sisa.matched_d_ff(c["d_model"], c["n_heads"], c["d_state"], args.transformer_d_ff)
    return sisa.SISAConfig(d_ff=d_ff, **c)


def plan(args) -> list[dict]:
    """The measurements in order: training, then prefill by length, then decode by
    cache length and batch. Each has its phase, batch, t and a cost estimate (tokens)."""
    tasks = []
    if "train" in args.phases:
        tasks.append(dict(phase="train", batch=args.batch, t=args.seqlen, checkpointing=False))
        if args.checkpointing:
            tasks.append(dict(phase="train", batch=args.batch, t=args.seqlen, checkpointing=True))
    if "prefill" in args.phases:
        tasks += [dict(phase="prefill", batch=1, t=t, checkpointing=False) for t in args.prefill]
    if "decode" in args.phases:
        tasks += [dict(phase="decode", batch=b, t=T, checkpointing=False)
                  for T in args.cache_lens for b in args.decode_batches]
    for task in tasks:
        calls = args.rounds + 1
        tokens = task["batch"] * task["t"]
        task["cost"] = {"train": 3 * tokens * calls, "prefill": tokens * calls,
                        "decode": tokens + 64 * task["batch"] * calls}[task["phase"]]
    return tasks


# --- memory --------------------------------------------------------------------------------

def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_memory_mb(fn, device):
    """MiB that one call of fn needs above what is live before it (see the module docstring)."""
    if device.type == "cuda":
        return cuda_peak_memory_mb(fn, device)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")      # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        fn()
        return (_rss_kib("VmHWM") - base) / 1024
    except OSError:                                        # not Linux/glibc: no per-call figure
        fn()
        return None


PEAK_MEMORY_METHOD = ("cuda: torch.cuda.max_memory_allocated during one call minus memory allocated "
                      "before it; cpu: peak RSS (VmHWM reset via /proc/self/clear_refs, after "
                      "malloc_trim) minus RSS before the call")


# --- timing --------------------------------------------------------------------------------

def _timer(device):
    def timed(fn, n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3 / n
    return timed


def alternate(fns: dict, rounds: int, round_ms: float, device, warm: dict) -> dict:
    """fns: {form: callable}, 'transformer' among them, each called once already;
    warm: {form: ms of that call}. ``rounds`` rounds, each timing
    ``inner`` calls of every form, the order flipped every round. Returns {form:
    list of per-round mean ms}."""
    timed = _timer(device)
    inner = {name: max(1, math.ceil(round_ms / max(ms, 1e-3))) for name, ms in warm.items()}
    order, samples = list(fns), {name: [] for name in fns}
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            samples[name].append(timed(fns[name], inner[name]))
    return samples


def _quantiles(values):
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def measure(task, models, args, reasons) -> list[dict]:
    """Rows for one task, one per form (status unsupported/mismatch/error for forms not timed)."""
    device, rows, fns, warm = args.device, {}, {}, {}
    gen = torch.Generator().manual_seed(args.seed + task["t"])
    vocab = args.config["vocab_size"]
    ids = torch.randint(0, vocab, (task["batch"], task["t"]), generator=gen).to(device)
    for name in args.forms:
        form = FORMS[name]
        row = dict(model_report.empty_row(), form=name, phase=task["phase"], batch=task["batch"], t=task["t"],
                   checkpointing=task["checkpointing"], impl=form.impl(device, _compute(args)))
        rows[name] = row
        reason = reasons.get(name)
        if reason is None and task["phase"] == "decode":
            reason = form.decode_unsupported
        if reason is None and task["checkpointing"]:
            reason = checkpointing_unsupported(models[name])
        if reason:
            row.update(status="mismatch" if name in reasons else "unsupported", reason=reason)
            continue
        try:
            model = models[name]
            if task["phase"] == "train":
                fns[name] = train_step(model, form, ids, device, args.amp, checkpointing=task["checkpointing"])
            elif task["phase"] == "prefill":
                fns[name] = prefill_step(model, form, ids, device, args.amp)
            else:
                token = torch.randint(0, vocab, (task["batch"], 1), generator=gen).to(device)
                fns[name] = decode_step(model, form, ids, token, device, args.amp)
            t0 = time.perf_counter()
            row["peak_mem_mb"] = peak_memory_mb(fns[name], device)    # also the warm-up
            warm[name] = (time.perf_counter() - t0) * 1e3
        except Exception as exc:  # OOM, a missing API: record and go on
            fns.pop(name, None)
            row.update(status="error", reason=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
    if "transformer" in fns:
        try:
            samples = alternate(fns, args.rounds, args.round_ms, device, warm)
        except Exception as exc:
            samples = {}
            for name in fns:
                rows[name].update(status="error", reason=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        base = samples.get("transformer")
        for name, ms in samples.items():
            tokens = task["batch"] * (1 if task["phase"] == "decode" else task["t"])
            ratios = [a / b for a, b in zip(ms, base)]
            q1, q3 = _quantiles(ms)
            r1, r3 = _quantiles(ratios)
            rows[name].update(status="ok", ms=statistics.median(ms), ms_q1=q1, ms_q3=q3,
                              tokens_per_s=tokens / (statistics.median(ms) * 1e-3),
                              ratio=statistics.median(ratios), ratio_q1=r1, ratio_q3=r3, rounds_ms=ms)
    else:
        for name in fns:
            rows[name].update(status="error", reason="the transformer (the ratios' denominator) was not timed")
    fns.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())


def _compute(args):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp, torch.float32)


def header(args, machine, config, params, load) -> str:
    where = f"{machine['gpu']} (GPU)" if machine["gpu"] else f"{machine['cpu']} (CPU)"
    threads = machine["cpu_threads"]
    c = config
    return (f"Model benchmark ({args.preset}) on {where}, torch {machine['torch']} on {threads} "
            f"thread{'s' * (threads != 1)}, load average {load[0]:.2f} at start; "
            f"{c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, d_state {c.d_state}, "
            f"vocab {c.vocab_size}, d_ff {c.d_ff} (SISA) / {args.transformer_d_ff} (Transformer), "
            f"{params['sisa'] / 1e6:.1f}M / {params['transformer'] / 1e6:.1f}M parameters; "
            f"{args.amp + ' autocast' if args.amp else 'float32'}; train {args.batch}x{args.seqlen}; "
            f"{args.rounds} alternating rounds of >= {args.round_ms:g} ms")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_plot and plot_unavailable("benchmarks.model"):
        return 2
    with pinned_threads(args.threads):
        return _run(args, argv)


def _run(args, argv=None) -> int:
    start = time.perf_counter()
    load = os.getloadavg()
    machine = machine_info(args.device)
    machine.update(peak_mem_method=PEAK_MEMORY_METHOD, load_average_start=list(load))
    config = sisa_config(args)
    models = build_models(config, args.transformer_d_ff, args.forms, args.device, args.seed)
    params = {name: m.num_parameters() for name, m in models.items()}
    params.setdefault("sisa", sum(p.numel() for p in sisa.SISAModel(config).parameters()))
    setup = header(args, machine, config, params, load)
    out = args.out or RESULTS / "scratch" / f"model-{_slug(machine['gpu'] or machine['cpu'])}-{machine['date']}"
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan(args)
    print(f"benchmarks.model: gate + {len(tasks)} measurements -> {out}\n{setup}", file=sys.stderr, flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    gate_ids = torch.randint(0, config.vocab_size, (1, args.gate_t), generator=gen).to(args.device)
    gate, reasons = [], {}
    for name in args.forms:
        verdict = check_form(name, FORMS[name], models[name], gate_ids, args.device, args.amp,
                             decode="decode" in args.phases)
        gate.append(verdict)
        if not verdict["ok"]:
            reasons[name] = (f"gate: {verdict['worst']} rel err {verdict['err']:.2e} > tol {verdict['tol']:.1e} "
                             "(float64 judge)")
        print(f"gate {name}: {'ok' if verdict['ok'] else 'MISMATCH'} (worst {verdict['worst']}: "
              f"{verdict['err']:.1e} <= {verdict['tol']:.1e}{', ' + verdict['note'] if verdict['note'] else ''})"
              if verdict["ok"] else f"gate {name}: MISMATCH: {reasons[name]}", file=sys.stderr, flush=True)

    rows, total = [], sum(t["cost"] for t in tasks)
    done, t_timing = 0, time.perf_counter()
    for i, task in enumerate(tasks, 1):
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            rows += [dict(model_report.empty_row(), form=n, phase=task["phase"], batch=task["batch"], t=task["t"],
                          checkpointing=task["checkpointing"], status="skipped",
                          reason=f"--budget-s {args.budget_s:g} spent") for n in args.forms]
        else:
            rows += measure(task, models, args, reasons)
        done += task["cost"]
        spent = time.perf_counter() - t_timing
        left = spent / done * (total - done)
        print(f"[{i}/{len(tasks)}] {model_report.describe(rows[-len(args.forms):])} | "
              f"{time.perf_counter() - start:.0f} s, ~{left:.0f} s left", file=sys.stderr, flush=True)

    machine["load_average_end"] = list(os.getloadavg())
    payload = dict(machine=machine, setup=setup, params=params, gate=gate, results=rows,
                   command=" ".join(["python -m benchmarks.model", *(sys.argv[1:] if argv is None else argv)]),
                   config={k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
                   seconds=time.perf_counter() - start)
    (out / "model.json").write_text(json.dumps(payload, indent=1))
    md = model_report.to_markdown(payload)
    (out / "model.md").write_text(md)
    if not args.no_plot:
        model_report.plot(payload, out / "model.png")
    print(md)
    print(f"wrote model.json, model.md{'' if args.no_plot else ', model.png'} in {out} "
          f"({payload['seconds']:.0f} s)", file=sys.stderr)
    return 0 if not reasons and all(r["status"] in ("ok", "unsupported", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
