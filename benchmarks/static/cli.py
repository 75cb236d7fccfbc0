"""The command line: plan every (arch, dtype) pair, compile in one pool, write each
pair's files as soon as its last compile is in, skip pairs already current."""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import torch
import triton

from . import report
from .analyse import compile_task, worker_init
from .lifeline import PARENT_ENV
from .plan import DIMS, FAMILIES, QUICK_DIMS, QUICK_STATES, STATES, Shape, plan
from .targets import ARCHES, DTYPES, TARGETS

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "static"


def _ints(text):
    return tuple(int(x) for x in text.split(",") if x)


def _names(allowed):
    def parse(text):
        names = tuple(x for x in text.split(",") if x)
        bad = [x for x in names if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
        return names
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.static", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=_names(ARCHES), default=ARCHES, help=f"targets (default {','.join(ARCHES)})")
    p.add_argument("--dtypes", type=_names(tuple(DTYPES)), default=tuple(DTYPES), help="data dtypes")
    p.add_argument("--quick", action="store_true", help=f"head dims {QUICK_DIMS}, d_states {QUICK_STATES}")
    p.add_argument("--dims", type=_ints, default=None, help=f"head dims (default {DIMS})")
    p.add_argument("--states", type=_ints, default=None, help=f"d_states (default {STATES})")
    p.add_argument("--families", default=None, help=f"comma-separated subset of {','.join(FAMILIES)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and markdown")
    p.add_argument("--jobs", type=int, default=2, help="compile processes")
    p.add_argument("--force", action="store_true", help="recompile pairs whose files are current")
    p.add_argument("--seqlen", type=int, default=Shape.seqlen)
    p.add_argument("--heads", type=int, default=Shape.heads)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    p.add_argument("--summary", action="store_true",
                   help="print one markdown line per (arch, dtype) of the reports in --out and exit")
    p.add_argument("--device", action="store_true",
                   help="on a GPU: compile for its arch with the real driver and also record the registers "
                        "and spills the driver reports after loading each kernel")
    args = p.parse_args(argv)
    args.dims = args.dims or (QUICK_DIMS if args.quick else DIMS)
    args.states = args.states or (QUICK_STATES if args.quick else STATES)
    return args


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=report.ROOT, capture_output=True,
                              text=True).stdout.strip() or None
    except OSError:
        return None


def stem_of(arch, dt, args):
    """The files' name: ``sm80_fp32``, plus ``_quick``, ``_custom`` (a subset of families,
    other dims, states or shapes: never read as the full report) or ``_device``."""
    default = (tuple(args.dims), tuple(args.states)) in ((DIMS, STATES), (QUICK_DIMS, QUICK_STATES))
    custom = (args.families or not default or args.seqlen != Shape.seqlen or args.heads != Shape.heads
              or args.kv_heads)
    return (TARGETS[arch].stem + f"_{dt}" + ("_quick" if args.quick else "") + ("_custom" if custom else "")
            + ("_device" if args.device else ""))


def _earlier(path: Path, args):
    """The report in ``path`` if it is one of this plan (same head dims, d_states,
    families, shapes, Triton and ptxas) whose rows a run may keep, else None."""
    try:
        data = json.loads(path.read_text())
        meta = data["meta"]
    except (OSError, ValueError, KeyError):
        return None
    same = (meta.get("head_dims") == list(args.dims) and meta.get("d_states") == list(args.states)
            and meta.get("families") == args.families and meta.get("shape") == _shape_meta(args)
            and meta.get("triton") == triton.__version__ and meta.get("ptxas") == _ptxas(TARGETS[meta["arch"]])
            and "fingerprints" in meta)
    return data if same else None


def _shape_meta(args):
    return dict(batch=1, seqlen=args.seqlen, heads=args.heads, kv_heads=args.kv_heads or args.heads)


def _ptxas(target):
    from triton.backends.nvidia.compiler import get_ptxas_version
    return get_ptxas_version(target.capability).strip().splitlines()[-1]


def _sort_key(row):
    return (list(FAMILIES).index(row["family"]), row["kernel"], min(row["head_dims"] or [0]),
            min(row["d_states"] or [0]), not row["pick"], row["order"])


def _cost(task):          # longest first (attention kernels, widest tiles) so the pool ends together
    return (task.family.startswith("attention"), max(task.head_dims or [0]) + max(task.d_states or [0]))


def _device_arch():
    major, minor = torch.cuda.get_device_capability(0)
    cc = 10 * major + minor
    return min(ARCHES, key=lambda a: abs(TARGETS[a].capability - cc))


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated(f"signal {signum}")


def _stop(pool):
    """End the pool's workers now (not after their current compile)."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        if proc.is_alive():
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        print(report.summary(args.out, [(a, d) for a in args.arch for d in args.dtypes]))
        return 0
    from triton.runtime.jit import JITFunction
    from .yardstick import _fa2_causal_fwd
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or not isinstance(_fa2_causal_fwd, JITFunction):
        print("benchmarks.static: TRITON_INTERPRET=1 in this process; run `python -m benchmarks.static` "
              "without it (the kernels must compile, not be interpreted)", file=sys.stderr)
        return 2
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError as e:
        print(f"benchmarks.static: Triton's NVIDIA backend is missing ({e})", file=sys.stderr)
        return 2
    arches = (_device_arch(),) if args.device else args.arch
    sh = Shape(seqlen=args.seqlen, heads=args.heads, kv_heads=args.kv_heads or args.heads)
    families = args.families.split(",") if args.families else None
    pairs, tasks, fps, kept = [], {}, {}, {}
    for arch in arches:
        for dt in args.dtypes:
            stem = stem_of(arch, dt, args)
            fps[stem] = report.fingerprints(arch, dt, families)
            earlier = None if args.force or args.device else _earlier(args.out / f"{stem}.json", args)
            redo = [f for f, fp in fps[stem].items() if earlier is None or earlier["meta"]["fingerprints"].get(f) != fp]
            if not redo:
                print(f"benchmarks.static: {stem} is current; skipped", file=sys.stderr)
                continue
            kept[stem] = ([r for r in earlier["rows"] if r["family"] not in redo], earlier["meta"]) if earlier else ([], None)
            if earlier:
                print(f"benchmarks.static: {stem}: recompiling the stale families {','.join(redo)}, keeping the "
                      "other rows", file=sys.stderr)
            pairs.append((arch, dt, stem))
            tasks[stem] = sorted(plan(args.dims, args.states, Shape(**{**asdict(sh), "dtype": DTYPES[dt]}),
                                      TARGETS[arch], set(redo)), key=_cost, reverse=True)
    total = sum(len(t) for t in tasks.values())
    print(f"benchmarks.static: {total} compiles for {len(pairs)} (arch, dtype) pairs on {args.jobs} processes",
          file=sys.stderr, flush=True)
    tmp_cache = None
    if not os.environ.get("TRITON_CACHE_DIR"):
        tmp_cache = tempfile.mkdtemp(prefix="sisa-static-triton-")
        os.environ["TRITON_CACHE_DIR"] = tmp_cache
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    errors, pool = 0, None
    os.environ[PARENT_ENV] = str(os.getpid())      # the workers' lifeline (``lifeline.die_with_parent``)
    try:
        pool = ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=worker_init, initargs=(sh, args.device))
        futures = {}
        for arch, dt, stem in pairs:
            for task in tasks[stem]:
                futures[pool.submit(compile_task, task, arch, DTYPES[dt])] = stem
        rows = {stem: [] for _, _, stem in pairs}
        started = {stem: time.perf_counter() for _, _, stem in pairs}
        for i, fut in enumerate(as_completed(futures), 1):
            stem = futures[fut]
            r = fut.result()
            rows[stem].append(r)
            what = (f"{r['error']}" if r["error"] else
                    f"{r['regs']} regs, {r['spilled_bytes']} B spilled, {r['smem']} B smem, "
                    f"{r['blocks_per_sm']} blk/SM{' ' + ','.join(r['violations']) if r['violations'] else ''}")
            print(f"[{i}/{total}] {r['compile_s']:6.1f}s {stem} {r['kernel']} {report.config_str(r)} "
                  f"d={r['head_dims'] or '-'} n={r['d_states'] or '-'}: {what}", file=sys.stderr, flush=True)
            if len(rows[stem]) == len(tasks[stem]):
                arch, dt = next((a, d) for a, d, s in pairs if s == stem)
                errors += _finish(args, arch, dt, stem, rows[stem], kept[stem], fps[stem],
                                  time.perf_counter() - started[stem], argv)
    except (KeyboardInterrupt, _Terminated) as exc:
        print(f"benchmarks.static: interrupted ({exc or 'Ctrl-C'}); the finished pairs' files are written",
              file=sys.stderr)
        interrupted = True
    else:
        interrupted = False
    finally:
        if pool is not None:
            _stop(pool)
        signal.signal(signal.SIGTERM, old_term)
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)
            os.environ.pop("TRITON_CACHE_DIR", None)
    if interrupted:       # not the pool's exit handler: it can wait on the workers just killed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 1 if errors else 0


def _finish(args, arch, dt, stem, new_rows, kept, fps, elapsed, argv):
    """Print and write one pair's report (its new rows and those ``kept`` from the
    earlier report, with that report's meta); returns its number of failed compiles."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability
    target = TARGETS[arch]
    given = argv if argv is not None else sys.argv[1:]
    kept_rows, earlier = kept
    commit, date = _git_commit(), datetime.datetime.now().isoformat(timespec="seconds")
    compiled = {f: (earlier["compiled"][f] if earlier and any(r["family"] == f for r in kept_rows)
                    else dict(commit=commit, date=date)) for f in fps}
    rows = sorted(kept_rows + new_rows, key=_sort_key)
    meta = dict(fingerprints=fps, compiled=compiled, commit=commit,
                command=" ".join(["python -m benchmarks.static", *given]), date=date, triton=triton.__version__,
                torch=torch.__version__, ptxas=_ptxas(target),
                arch=arch, target=f"cuda {sm_arch_from_capability(target.capability)}, 32 threads/warp",
                limits=asdict(target), dtype=dt, shape=_shape_meta(args),
                head_dims=list(args.dims), d_states=list(args.states), families=args.families,
                quick=args.quick, jobs=args.jobs, cpu=platform.processor() or platform.machine(),
                compiles=len(rows), compiled_now=len(new_rows), elapsed_s=round(elapsed, 1))
    print(f"\n== {stem} ==\n" + report.text_table(rows, args.dims, args.states))
    bad = report.over_budget(rows)
    print(f"{len(rows)} compiles; {len(bad)} rows of the project's kernels over budget" + (":" if bad else "."))
    for r in bad:
        print("  " + report.violation_line(r, args.dims, args.states))
    if args.device:
        differ = [r for r in rows if not r["error"] and (r.get("driver_regs") != r["regs"]
                                                         or bool(r.get("driver_spills")) != bool(r["spilled_bytes"]))]
        meta["device"] = torch.cuda.get_device_name(0)
        print(f"driver vs ptxas on {meta['device']}: {len(rows) - len(differ)} rows agree, {len(differ)} differ"
              + (":" if differ else "."))
        for r in differ:
            print(f"  {r['kernel']} {report.config_str(r)}: ptxas {r['regs']} regs / {r['spilled_bytes']} B "
                  f"spilled, driver {r.get('driver_regs')} regs / {r.get('driver_spills')} B local")
    path = report.write(args.out, stem, meta, rows, target, args.dims, args.states)
    print(f"wrote {path} and .md", file=sys.stderr, flush=True)
    return sum(1 for r in rows if r["error"])
