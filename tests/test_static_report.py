"""The committed static reports (``python -m benchmarks.static``, one file per arch
and dtype under benchmarks/results/static/) against the kernels as they are now.

- fast: every (arch, dtype) pair has a full report, each carries the current
  fingerprint of the kernel sources and tables (a stale one fails, naming the command
  that refreshes it), and its rows are within the target's budgets;
- a small sample per arch (one attention compile) is recompiled and must match the
  committed registers, spills and shared memory;
- the report's compile workers do not outlive it, however it is stopped.
The compiles run in subprocesses without TRITON_INTERPRET (conftest sets it for the suite).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.static import report  # noqa: E402
from benchmarks.static.targets import ARCHES, DTYPES, TARGETS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "static"
PAIRS = [(arch, dt) for arch in ARCHES for dt in DTYPES]


def _stem(arch, dt):
    return f"{TARGETS[arch].stem}_{dt}"


def _committed():
    """{(arch, dtype): report} of the committed files (the full report, else the quick
    one); prints the pairs not compiled yet and those with only a quick report."""
    found, missing, quick = {}, [], []
    for arch, dt in PAIRS:
        for suffix in ("", "_quick"):
            path = RESULTS / f"{_stem(arch, dt)}{suffix}.json"
            if path.exists():
                found[arch, dt] = json.loads(path.read_text())
                if suffix:
                    quick.append(_stem(arch, dt))
                break
        else:
            missing.append(_stem(arch, dt))
    if quick:
        print(f"static report: only the --quick report is committed for {', '.join(quick)}")
    if missing:
        print(f"static report: not yet compiled (no committed file): {', '.join(missing)}")
    return found


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SISA_AUTOTUNE")}


def test_every_arch_and_dtype_is_committed():
    """All 18 pairs (6 arches x bf16, fp16, fp32) have a full report: none may go missing."""
    missing = [_stem(arch, dt) for arch, dt in PAIRS if not (RESULTS / f"{_stem(arch, dt)}.json").exists()]
    assert not missing, f"no full static report for {missing}: `nice python -m benchmarks.static --jobs 2`"


def test_committed_reports_are_current():
    stale = [f"{_stem(arch, dt)} ({', '.join(report.stale_families(data['meta'], arch, dt))})"
             for (arch, dt), data in _committed().items() if report.stale_families(data["meta"], arch, dt)]
    assert not stale, (f"static reports older than the kernels or tables: {stale}; rerun `nice python -m "
                       "benchmarks.static --jobs 2` (it recompiles the stale families only)")


def test_a_table_edit_stales_its_family_only(monkeypatch):
    from sisa_kernels.configs import sm90
    before = {(arch, dt): report.fingerprints(arch, dt) for arch in ("sm_90", "sm_80") for dt in ("bf16", "fp32")}
    monkeypatch.setattr(sm90, "ATTENTION", {**sm90.ATTENTION, ("fwd", 64, 16): [(32, 16, 4, 2)]})
    for (arch, dt), fps in before.items():
        changed = {f for f, fp in report.fingerprints(arch, dt).items() if fp != fps[f]}
        assert changed == ({"attention-fwd"} if (arch, dt) == ("sm_90", "bf16") else set()), (arch, dt, changed)


def test_a_kernel_edit_stales_the_families_built_on_it(tmp_path):
    """An edit of scan.py stales the scan and the augment (which imports it), nothing else;
    an edit of the configs package stales every kernel family."""
    for part in ("sisa_kernels", "benchmarks/static"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    before = report.fingerprints("sm_80", "bf16", root=tmp_path)
    assert before == report.fingerprints("sm_80", "bf16")
    for edited, expect in (("sisa_kernels/scan.py", {"scan", "augment"}),
                           ("sisa_kernels/configs/launch.py", set(report.FAMILY_SOURCES) - {"yardstick-fa2"})):
        path = tmp_path / edited
        path.write_text(path.read_text() + "\n_EDITED = 1\n")
        after = report.fingerprints("sm_80", "bf16", root=tmp_path)
        assert {f for f in after if after[f] != before[f]} == expect, edited
        before = after


TABLE_KINDS = r"""
import json, torch
from benchmarks.static.plan import FAMILIES, Shape, launches_of
from benchmarks.static.targets import TARGETS
from sisa_kernels import configs
read, table = set(), configs.table
class Recorded(dict):
    def __getitem__(self, key):
        read.add(key[0] if isinstance(key, tuple) else key)
        return dict.__getitem__(self, key)
configs.table = lambda family, dtype: tuple(Recorded(t) for t in table(family, dtype))
out = {}
for family in FAMILIES:
    read.clear()
    for mode in ("pick", "entries", "autotune"):
        launches_of(family, 64, 16, Shape(), TARGETS["sm_80"], mode)
    out[family] = sorted(read)
print(json.dumps(out))
"""


def test_each_family_reads_only_the_table_kinds_its_fingerprint_covers():
    pytest.importorskip("triton.backends.nvidia", reason="Triton built without the NVIDIA backend")
    res = subprocess.run([sys.executable, "-c", TABLE_KINDS], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    read = json.loads(res.stdout.splitlines()[-1])
    assert read.keys() == report.FAMILY_SOURCES.keys()
    for family, kinds in read.items():
        assert kinds and set(kinds) <= set(report.FAMILY_SOURCES[family][1]) or family == "yardstick-fa2", (
            family, kinds)


def test_prose_edits_leave_the_fingerprint_and_code_edits_do_not():
    src = 'def f(x):\n    """Shapes: x (b, t)."""\n    return x + 1  # one\n'
    assert report.code_of(src) == report.code_of("def f(x):\n    # reflowed\n    return (x +\n            1)\n")
    assert report.code_of(src) != report.code_of("def f(x):\n    return x + 2\n")
    assert report.code_of(src) != report.code_of('def f(x):\n    return x + 1 if x else "one"\n')


def test_each_target_names_its_family():
    from sisa_kernels.configs import device
    for t in TARGETS.values():
        assert device.family_for(t.major_minor, t.smem_per_block) == t.family, t.arch


def test_committed_reports_are_within_budget():
    """No error, 0 spilled bytes, shared memory within the target's limit, every row of
    every committed pair (the FlashAttention yardstick is a reference, not held to it)."""
    over = {}
    for (arch, dt), data in _committed().items():
        limit = TARGETS[arch].smem_per_block
        for r in data["rows"]:
            assert r["arch"] == arch and r["dtype"] == dt, (arch, dt, r["kernel"])
            if r["family"] == "yardstick-fa2":
                continue
            if r["error"] or r["spilled_bytes"] or r["smem"] > limit:
                over.setdefault(_stem(arch, dt), []).append(
                    (r["kernel"], report.config_str(r), r["head_dims"], r["d_states"], r["error"] or
                     f"{r['spilled_bytes']} B spilled, {r['smem']} B smem"))
    assert not over, over


SAMPLE = r"""
import json, sys
from benchmarks.static.analyse import compile_task, worker_init
from benchmarks.static.plan import Shape, Task
from benchmarks.static.targets import DTYPES
out = []
for arch, dt, row in json.loads(sys.stdin.read()):
    worker_init(Shape())
    task = Task(row["family"], row["kernel"], row["d"], row["n"], row["kwargs"], head_dims=row["head_dims"],
                d_states=row["d_states"], launch=tuple(row.get("launch", ("pick", 0))))
    out.append(compile_task(task, arch, DTYPES[dt]))
print(json.dumps(out, default=str))
"""


def test_a_sample_per_arch_recompiles_as_committed():
    """One attention row per committed arch (the forward's default at the smallest
    width), compiled again: the same registers, spills and shared memory (the report's
    Triton; with another Triton the figures may move, so only the budgets are held)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests compile and run every kernel for it")
    pytest.importorskip("triton.backends.nvidia", reason="Triton built without the NVIDIA backend (no ptxas)")
    import triton
    sample, seen, versions = [], set(), {}
    for (arch, dt), data in sorted(_committed().items(), key=lambda kv: kv[0][1] != "bf16"):
        rows = [r for r in data["rows"] if r["kernel"] == "_sisa_fwd_kernel" and r["pick"] and not r["error"]]
        if arch not in seen and rows and "attention-fwd" not in report.stale_families(data["meta"], arch, dt):
            seen.add(arch)
            sample.append((arch, dt, min(rows, key=lambda r: (min(r["head_dims"]), min(r["d_states"])))))
            versions[arch] = data["meta"]["triton"]
    if not sample:
        pytest.skip("no current committed static report to compare with")
    res = subprocess.run([sys.executable, "-c", SAMPLE], input=json.dumps(sample), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    for (arch, dt, old), new in zip(sample, json.loads(res.stdout.splitlines()[-1])):
        assert new["error"] is None, (arch, new["error"])
        same_triton = versions[arch] == triton.__version__
        keys = ("regs", "spilled_bytes", "smem") if same_triton else ("spilled_bytes",)
        assert {k: new[k] for k in keys} == {k: old[k] for k in keys}, (arch, dt, old["kwargs"])


def test_a_spill_below_255_registers_recompiles_uncapped():
    """A forward row whose table entry carries a register cap (fp32.py), compiled without
    it: ptxas holds it below 255 registers and spills, and the report's second compile
    with .maxnreg 255 in the PTX (``analyse._uncapped``) needs more registers and spills
    nothing, the evidence each cap rests on."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests compile and run every kernel for it")
    pytest.importorskip("triton.backends.nvidia", reason="Triton built without the NVIDIA backend (no ptxas)")
    found = None
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        rows = [r for r in data["rows"] if r["kernel"] == "_sisa_fwd_kernel" and r["kwargs"].get("maxnreg")]
        if rows:
            row = rows[0]
            found = (data["meta"]["arch"], data["meta"]["dtype"],
                     {**row, "kwargs": {k: v for k, v in row["kwargs"].items() if k != "maxnreg"}})
            break
    if found is None:
        pytest.skip("no committed report has a forward row with a register cap")
    res = subprocess.run([sys.executable, "-c", SAMPLE], input=json.dumps([found]), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    new = json.loads(res.stdout.splitlines()[-1])[0]
    assert new["spilled_bytes"] > 0 and new["regs"] < 255, (found[:2], new["regs"], new["spilled_bytes"])
    assert new["uncapped_spilled_bytes"] == 0 and new["uncapped_regs"] > new["regs"], found[:2]


def test_a_rerun_recompiles_only_the_stale_families(tmp_path):
    """The second run of the same report keeps the rows of the current families (marked
    here) and recompiles the one whose committed fingerprint no longer matches."""
    pytest.importorskip("triton.backends.nvidia", reason="Triton built without the NVIDIA backend (no ptxas)")
    cmd = [sys.executable, "-m", "benchmarks.static", "--arch", "sm_90", "--dtypes", "bf16", "--families",
           "scan,augment", "--dims", "64", "--states", "16", "--jobs", "1", "--out", str(tmp_path)]
    first = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    path = tmp_path / "sm90_bf16_custom.json"
    data = json.loads(path.read_text())
    assert {r["family"] for r in data["rows"]} == {"scan", "augment"}
    data["meta"]["fingerprints"]["scan"] = "0" * 16
    for r in data["rows"]:
        r["marker"] = True
    path.write_text(json.dumps(data))
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "recompiling the stale families scan," in again.stderr, again.stderr[-4000:]
    rows = json.loads(path.read_text())["rows"]
    assert {r["family"] for r in rows if r.get("marker")} == {"augment"}
    assert sorted(r["kernel"] for r in rows) == sorted(r["kernel"] for r in data["rows"])
    third = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert "is current; skipped" in third.stderr, third.stderr[-4000:]


def _survivors(tag):
    """Processes (other than this one) whose environment carries ``tag``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if tag.encode() in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_compile_worker_outlives_the_report(how, tmp_path):
    """`timeout` stops the report with SIGTERM, a test's timeout with SIGKILL: either
    way its pool workers end within seconds (they used to compile on, orphaned)."""
    pytest.importorskip("triton.backends.nvidia", reason="Triton built without the NVIDIA backend (no ptxas)")
    tag = f"SISA_STATIC_TEST_TAG={os.getpid()}-{how}"
    env = {**_env(), tag.split("=")[0]: tag.split("=")[1]}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.static", "--arch", "sm_90", "--dtypes", "fp32",
                             "--families", "attention-fwd", "--dims", "256", "--states", "128", "--jobs", "2",
                             "--force", "--out", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while len(_survivors(tag)) < 3 and time.time() < deadline:      # the report and its two workers
        assert proc.poll() is None, "the report ended before its workers started"
        time.sleep(0.5)
    assert len(_survivors(tag)) >= 3, "the workers never started"
    time.sleep(2)
    proc.send_signal(how)
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while _survivors(tag) and time.time() < deadline:
        time.sleep(0.5)
    left = _survivors(tag)
    for pid in left:                                   # do not leave them to the machine either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"compile workers outlived the report: {left}"


def test_committed_tensor_core_paths():
    """16-bit attention tiles of 64+ rows take wgmma on sm_90 (Hopper's tensor-core path); on
    the mma.sync arches every 16-bit attention row uses mma.sync; float32 rows use none."""
    for (arch, dt), data in _committed().items():
        for r in data["rows"]:
            if r["error"] or r["kernel"] not in ("_sisa_fwd_kernel", "_sisa_bwd_dq_kernel", "_sisa_bwd_dkv_kernel"):
                continue
            rows = r["kwargs"].get("BLOCK_M", r["kwargs"].get("BLOCK_OUT"))
            where = (arch, dt, r["kernel"], report.config_str(r))
            if dt == "fp32":           # exact IEEE products: FMA, no tensor-core instruction
                assert r["wgmma"] == 0 and r["mma_sync"] == 0, where
            elif arch == "sm_90" and rows >= 64:
                assert r["wgmma"] > 0, where
            elif arch in ("sm_80", "sm_86", "sm_89", "sm_120"):
                assert r["mma_sync"] > 0 and r["wgmma"] == 0, where
