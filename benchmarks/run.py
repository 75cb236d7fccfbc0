"""The benchmark sweep and its command line.

    python -m benchmarks.run --quick                      # ~40 s on a 2-core CPU
    python -m benchmarks.run                              # the default sweep for this device
    python -m benchmarks.run --seqlens 1024,4096 --d-head 128 --d-state 16 \
        --dtype bf16 --providers plain,sdpa,triton --modes fwd --out /tmp/bench

For every (d_state, d_head, dtype, t, mode) and provider: check support, make one
untimed call at the full shape (compilation, autotuning), run the correctness gate
(``benchmarks.gate``), and only if it passes, time it. Rows stream to
``results.json`` as they finish (a killed sweep keeps what it measured); at the
end ``results.md`` and ``results.png`` are written and the table is printed.
Progress goes to stderr, one line per measurement. The table and results.md start
with a header line stating the setup (machine, torch threads, heads, batch x t,
dtype, d_head, d_state, quick or not).

Batch size is tokens // t (at least 1), so every t moves roughly the same number
of tokens (16K on a GPU, 2K on a CPU); heads default to 8. The full GPU sweep is
~900 measurements: bound it with --budget-s (benchmarks/gpu_check.sh does).

--quick on a CPU is the shape of the README's table (8 heads, b*t = 2048, fp32,
d_head 64, d_state 16) at t = 256, 512, 1024, timed more briefly (--rep-ms 40) and on
ONE torch thread (the README's table used 2: pass --threads 2 to match). One thread
because a shared machine's other load wrecks multi-threaded timings: on a 2-core CPU
at load ~5, sdpa's ratio to plain came out 1.6-8.8x on 2 threads against 1.2-2.3x on
1 (README: 1.3-1.75x), and the sweep took 82 s on 2 threads against 39 s on 1.
--quick takes 35-45 s on a 2-core CPU (measured, all providers; naive is half of it).

Without --out, results go to a new folder: benchmarks/results/<machine>-<date>/
(--quick: benchmarks/results/scratch/quick-<machine>-<date>/), with -2, -3, ...
appended when that folder exists, so a rerun never overwrites an earlier one. An
explicit --out is used as given (a warning is printed when it overwrites results).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from . import gate, report
from .providers import PROVIDERS, Shape, attention_flops, make_inputs, scan_bytes, timed_callable
from .timing import PEAK_MEMORY_METHOD, measure_ms, peak_memory_mb, pinned_threads

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
MODES = ("fwd", "fwd+bwd")

# Defaults per device; --quick and the axis flags narrow them.
SWEEPS = {
    "cpu": dict(seqlens=[128, 256, 512, 1024, 2048], d_head=[64, 128], d_state=[16, 32, 64],
                dtype=["float32"], tokens=2048, heads=8, warmup_ms=0.0, rep_ms=150.0),
    "cuda": dict(seqlens=[512, 1024, 2048, 4096, 8192, 16384, 32768], d_head=[64, 128],
                 d_state=[16, 32, 64], dtype=["bfloat16", "float16"], tokens=16384, heads=8,
                 warmup_ms=10.0, rep_ms=40.0),
}
QUICK = {   # CPU: the README table's shapes (README_TABLE) at its three shortest t, 1 thread
    "cpu": dict(seqlens=[256, 512, 1024], d_head=[64], d_state=[16], dtype=["float32"], tokens=2048,
                heads=8, warmup_ms=0.0, rep_ms=40.0, threads=1),
    "cuda": dict(seqlens=[1024, 4096, 16384], d_head=[128], d_state=[16], dtype=["bfloat16"],
                 tokens=16384, heads=8, warmup_ms=5.0, rep_ms=25.0),
}
# The setup of the README's results table and the command that made it, named in the
# header of a --quick run (keep in step with README.md's "Results" section).
README_TABLE = ("AMD EPYC, 2 torch threads, heads 8/kv heads 8, b*t = 2048 at t = 256-2048, float32, "
                "d_head 64, d_state 16, --rep-ms 150",
                "python -m benchmarks.run --seqlens 256,512,1024,2048 --d-head 64 --d-state 16 "
                "--providers plain,sdpa,sdpa-paper,naive,scan-naive")
# Relative to the current directory (a checkout's root: the committed folder), never
# inside an installed package.
RESULTS = Path("benchmarks") / "results"

# HBM bandwidth (bytes/s) by GPU name; the first substring that matches wins.
GPU_BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                 ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
                 ("L40S", 0.864e12), ("L4", 0.3e12), ("RTX 4090", 1.008e12)]


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def _names(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="sisa-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    p.add_argument("--quick", action="store_true", help="a small sweep (3 seqlens, both modes, all providers)")
    p.add_argument("--seqlens", type=_ints, help="comma-separated t values")
    p.add_argument("--d-head", type=_ints, help="comma-separated head dims")
    p.add_argument("--d-state", type=_ints, help="comma-separated d_state values (even)")
    p.add_argument("--dtype", type=_names, help="comma-separated: float32/fp32, bfloat16/bf16, float16/fp16")
    p.add_argument("--providers", type=_names, default=list(PROVIDERS),
                   help="comma-separated, from: " + ", ".join(PROVIDERS))
    p.add_argument("--modes", type=_names, default=list(MODES), help="comma-separated: fwd, fwd+bwd")
    p.add_argument("--tokens", type=int, help="tokens per batch: batch = max(1, tokens // t)")
    p.add_argument("--heads", type=int, help="query heads (default 8)")
    p.add_argument("--kv-heads", type=int, help="key/value heads (default: --heads)")
    p.add_argument("--naive-max-t", type=int, default=1024, help="longest t the naive provider runs at")
    p.add_argument("--gate-full-t", type=int, default=1024,
                   help="up to this t the gate checks every query row against sisa.naive")
    p.add_argument("--decay-bias", type=float, default=-5.0,
                   help="log_alpha = -softplus(bias + 0.5 N(0,1)); -5 is the paper's init (~0.0076 "
                        "nats/token: the paper's clamp breaks past ~2900 tokens)")
    p.add_argument("--warmup-ms", type=float, help="warm-up time per measurement (GPU default 10, CPU one call)")
    p.add_argument("--rep-ms", type=float, help="timed repetitions fill this long (at least 3 on a CPU)")
    p.add_argument("--budget-s", type=float, help="stop timing after this many seconds; the rest are 'skipped'")
    p.add_argument("--no-plot", action="store_true", help="skip results.png")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default torch's; 1 with --quick on CPU, which keeps a "
                        "shared machine's timings sane)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output folder, used as given (default: a new "
                   "benchmarks/results/<machine>-<date>[-2, -3, ...]/; with --quick "
                   "benchmarks/results/scratch/quick-<machine>-<date>[-N]/)")
    args = p.parse_args(argv)

    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    defaults = (QUICK if args.quick else SWEEPS)["cuda" if args.device.type == "cuda" else "cpu"]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.kv_heads = args.kv_heads or args.heads
    unknown = [x for x in args.providers if x not in PROVIDERS] + [x for x in args.modes if x not in MODES] \
        + [x for x in args.dtype if x not in DTYPES]
    if unknown:
        p.error(f"unknown provider/mode/dtype: {', '.join(unknown)}")
    if args.heads % args.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    if any(n % 2 for n in args.d_state):
        p.error("--d-state values must be even")
    args.dtype = [str(DTYPES[x]).removeprefix("torch.") for x in args.dtype]
    return args


def batch_size(args, t):
    return max(1, args.tokens // t)


def plan(args):
    """The ordered list of (provider, mode, Shape). Loops, outer first: d_state, d_head,
    dtype, t, mode, so a --budget-s cut keeps whole curves over t for the first
    d_state (list the headline value first). plain-kind providers do not depend on
    d_state (run with the first one), the scan not on d_head (run with the first one)."""
    plains = [n for n in args.providers if PROVIDERS[n].kind == "plain"]
    attention = [n for n in args.providers if PROVIDERS[n].kind == "sisa"]
    scans = [n for n in args.providers if PROVIDERS[n].kind == "scan"]
    tasks = []
    for i_n, n in enumerate(args.d_state):
        for i_d, d in enumerate(args.d_head):
            for dt in args.dtype:
                for t in args.seqlens:
                    b = batch_size(args, t)

                    def shape(d_head, d_state):
                        return Shape(b, t, args.heads, args.kv_heads, d_head, d_state, DTYPES[dt])
                    for mode in args.modes:
                        if i_n == 0:
                            tasks += [(name, mode, shape(d, None)) for name in plains]
                        tasks += [(name, mode, shape(d, n)) for name in attention]
                        if i_d == 0:
                            tasks += [(name, mode, shape(None, n)) for name in scans]
    return tasks


def _seed(args, shape):
    return args.seed + 7 * shape.seqlen + 131 * (shape.d_head or 0) + 977 * (shape.d_state or 0)


def empty_row(name, mode, shape, **fields):
    """A result row with every key present (None where not measured)."""
    row = dict(provider=name, kind=PROVIDERS[name].kind, impl=None, mode=mode, seqlen=shape.seqlen,
               d_head=shape.d_head, d_state=shape.d_state, dtype=str(shape.dtype).removeprefix("torch."),
               batch=shape.batch, heads=shape.heads, kv_heads=shape.kv_heads, ms=None, ms_p20=None,
               ms_p80=None, tflops=None, gbps=None, pct_peak_bw=None, peak_mem_mb=None,
               ratio_to_plain=None, status=None, reason=None, gate_err=None, gate_tol=None, gate_rows=None)
    row.update(fields)
    return row


def measure(name, mode, shape, args, bandwidth=None):
    """One row: support check, an untimed full-shape call, the gate, then timing.
    Never raises: exceptions (OOM, compile failures, a missing API) become status 'error'."""
    provider = PROVIDERS[name]
    row = empty_row(name, mode, shape, impl=provider.impl(args.device, shape.dtype))
    reason = provider.unsupported(shape, args.device, args.naive_max_t)
    if reason:
        row.update(status="unsupported", reason=reason)
        return row
    inputs = fn = None
    try:
        inputs = make_inputs(provider.kind, shape, args.device, _seed(args, shape), args.decay_bias)
        fn = timed_callable(provider, inputs, mode)
        # One untimed call at the full shape before the gate, so that Triton compiles and
        # autotunes for this shape (its autotune key has t but not batch or heads, and
        # would otherwise keep the config it picked for the gate's small slice).
        fn()
        verdict = gate.check(provider, inputs, mode, full_t=args.gate_full_t, seed=args.seed)
        row.update(gate_err=verdict.err, gate_tol=verdict.tol, gate_rows=verdict.rows)
        if not verdict.ok:
            row.update(status="mismatch", reason=f"{verdict.worst}: rel err {verdict.err:.2e} > tol "
                                                  f"{verdict.tol:.0e} (float64 judge, rows {verdict.rows})")
            return row
        ms, p20, p80 = measure_ms(fn, args.device, args.warmup_ms, args.rep_ms)
        for x in inputs.values():
            x.grad = None
        row.update(ms=ms, ms_p20=p20, ms_p80=p80, peak_mem_mb=peak_memory_mb(fn, args.device), status="ok")
        if provider.kind == "scan":
            with torch.no_grad():
                outs = provider.run(inputs, False)
            row["gbps"] = scan_bytes(inputs, outs, mode) / (ms * 1e-3) / 1e9
            if bandwidth:
                row["pct_peak_bw"] = 100 * row["gbps"] * 1e9 / bandwidth
        else:
            row["tflops"] = attention_flops(shape, mode) / (ms * 1e-3) / 1e12
    except Exception as exc:  # record and go on with the sweep
        msg = str(exc).strip().splitlines()
        row.update(status="error", reason=f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300])
    finally:
        inputs = fn = None                     # free device memory before the next shape
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def fill_ratios(rows):
    """ratio_to_plain = ms / plain's ms at the same shape, dtype and mode."""
    key = lambda r: (r["mode"], r["seqlen"], r["d_head"], r["dtype"], r["batch"], r["heads"], r["kv_heads"])
    plain = {key(r): r["ms"] for r in rows if r["provider"] == "plain" and r["status"] == "ok"}
    for r in rows:
        if r["kind"] != "scan" and r["ms"] is not None and key(r) in plain:
            r["ratio_to_plain"] = r["ms"] / plain[key(r)]


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device):
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    bandwidth = next((bw for key, bw in GPU_BANDWIDTH if gpu and key in gpu), None)
    return dict(cpu=_cpu_model(), cpu_threads=torch.get_num_threads(), gpu=gpu,
                gpu_hbm_tb_s=bandwidth / 1e12 if bandwidth else None, torch=torch.__version__,
                triton=triton_version, cuda=torch.version.cuda, python=platform.python_version(),
                date=datetime.date.today().isoformat(),
                time=datetime.datetime.now().isoformat(timespec="seconds"),
                peak_mem_method=PEAK_MEMORY_METHOD)


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def header(args, machine) -> str:
    """The setup in words: the first line of the printed table and of results.md."""
    where = f"{machine['gpu']} (GPU)" if machine["gpu"] else f"{machine['cpu']} (CPU)"
    shapes = ", ".join(f"{batch_size(args, t)}x{t}" for t in args.seqlens)
    threads = machine["cpu_threads"]
    line = (f"{'Quick sweep' if args.quick else 'Sweep'} on {where}, torch {machine['torch']} on "
            f"{threads} thread{'s' * (threads != 1)}; heads {args.heads}/kv heads {args.kv_heads}; batch x t "
            f"{shapes}; dtype {','.join(args.dtype)}; d_head {_csv(args.d_head)}; "
            f"d_state {_csv(args.d_state)}; --rep-ms {args.rep_ms:g}")
    if args.quick:
        setup, command = README_TABLE
        line += (f"\nNot the README's Results table: that was a different run ({setup}); "
                 f"to reproduce it, run `{command}`")
    return line


def _csv(values):
    return ",".join(map(str, values))


def fresh_folder(base: Path) -> Path:
    """Create and return base, or base-2, base-3, ...: the first that does not exist yet."""
    for i in itertools.count(1):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue


def output_folder(args, machine):
    """(folder, whether it already holds results): --out as given, else a fresh default folder."""
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        return args.out, (args.out / "results.json").exists()
    name = f"{_slug(machine['gpu'] or machine['cpu'])}-{machine['date']}"
    # --quick writes to the ignored scratch folder, so it never touches a committed sweep.
    return fresh_folder(RESULTS / ("scratch/quick-" + name if args.quick else name)), None


def _write_json(path: Path, payload):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401  (the [bench] extra)
    except ImportError:
        return False
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_plot and not _have_matplotlib():
        print("sisa-bench: the plot needs matplotlib, from the [bench] extra: pip install 'sisa[bench]' "
              "(or pip install -e '.[bench]' in a checkout), or pass --no-plot", file=sys.stderr)
        return 2
    with pinned_threads(args.threads):
        return _sweep(args)


def _sweep(args) -> int:
    machine = machine_info(args.device)
    bandwidth = machine["gpu_hbm_tb_s"] * 1e12 if machine["gpu_hbm_tb_s"] else None
    out, overwrite = output_folder(args, machine)
    config = {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()}
    setup = header(args, machine)
    tasks = plan(args)
    rows, start = [], time.perf_counter()
    print(f"sisa-bench: {len(tasks)} measurements -> {out}\n{setup}", file=sys.stderr, flush=True)
    if overwrite:
        print(f"sisa-bench: overwriting the results in {out} (--out given)", file=sys.stderr, flush=True)
    for i, (name, mode, shape) in enumerate(tasks, 1):
        elapsed = time.perf_counter() - start
        if args.budget_s is not None and elapsed > args.budget_s:
            row = empty_row(name, mode, shape, status="skipped", reason=f"--budget-s {args.budget_s:g} spent")
        else:
            row = measure(name, mode, shape, args, bandwidth)
        rows.append(row)
        fill_ratios(rows)
        _write_json(out / "results.json", {"machine": machine, "config": config, "results": rows})
        print(f"[{i}/{len(tasks)}] {_describe(row)}", file=sys.stderr, flush=True)

    (out / "results.md").write_text(report.to_markdown(machine, rows, config, setup))
    plotted = not args.no_plot and report.plot(rows, out / "results.png",
                                                 "SISA microbenchmarks. " + setup.splitlines()[0])
    print(setup + "\n" + report.format_table(rows))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "mismatch", "unsupported", "error", "skipped")}
    plot_note = ", results.png" if plotted else " (no plot: --no-plot)" if args.no_plot else " (no plot: nothing timed)"
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f"\nwrote results.json, results.md{plot_note}{' (overwrote the previous ones)' if overwrite else ''}"
          + f"\noutput folder: {out}")
    return 0


def _describe(row):
    dash = lambda v: "-" if v is None else v
    shape = f"{row['provider']} {row['mode']} t={row['seqlen']} d={dash(row['d_head'])} " \
            f"n={dash(row['d_state'])} {row['dtype']} {row['batch']}x{row['heads']}"
    if row["status"] != "ok":
        return f"{shape}: {row['status']} ({row['reason']})"
    rate = f"{row['gbps']:.1f} GB/s" if row["gbps"] is not None else f"{row['tflops']:.3g} TFLOP/s"
    return f"{shape}: ok {row['ms']:.3f} ms, {rate}, gate err {row['gate_err']:.1e}"


if __name__ == "__main__":
    sys.exit(main())
