"""Presenting a target's rows (text table, markdown, JSON) and the fingerprints that
say whether committed results still describe the kernels.

Each kernel family of an (arch, dtype) pair has its own fingerprint: a SHA-256 over
the code of the family's launcher module and every project file it imports, however
deeply (``sources``: for the scan, scan.py, scan_ref.py, errors.py and the configs
package), over the report's own planning code (shapes and launch stand-ins), and over
the table entries that family's launchers read (``TABLE_KINDS``), in the pair's arch
family and dtype class, with the family's ``PAD_HEAD_DIM`` classes of those kinds. A
family whose fingerprint differs from the committed file's is stale, and a run
recompiles only the stale families of a pair. The code is the
syntax tree (``code_of``), so comments, docstrings, a table file's prose, another
family's entries and another kernel's source can change and leave a report current.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PLANNING = ("benchmarks/static/plan.py", "benchmarks/static/standin.py", "benchmarks/static/targets.py")
TABLE_FILES = ("sisa_kernels/configs/sm*.py", "sisa_kernels/configs/fp32.py")
# family -> (its launcher module, the table kinds its launchers read)
FAMILY_SOURCES = {
    "attention-fwd": ("sisa_kernels/attention.py", ("fwd",)),
    "attention-bwd": ("sisa_kernels/attention_bwd.py", ("dq", "dkv", "delta")),
    "scan": ("sisa_kernels/scan.py", ("scan",)),
    "decode": ("sisa_kernels/decode.py", ("decode",)),
    "augment": ("sisa_kernels/augment.py", ("augment",)),
    "yardstick-fa2": ("benchmarks/static/yardstick.py", ()),
}


def _is_docstring(node) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _code(node) -> str:
    if isinstance(node, list):
        return "[" + ",".join(_code(x) for x in node if not _is_docstring(x)) + "]"
    if not isinstance(node, ast.AST):
        return repr(node)
    fields = [(k, v) for k, v in ast.iter_fields(node) if v is not None and v != []]
    return type(node).__name__ + "(" + ",".join(f"{k}={_code(v)}" for k, v in fields) + ")"


def code_of(source: str) -> str:
    """A module's code without its comments, docstrings or layout: its syntax tree written
    out field by field (bare string statements, empty and None fields left out, so the
    same code gives the same text on every Python the package supports)."""
    return _code(ast.parse(source))


def _imported(path: Path, root: Path) -> set[Path]:
    """The files under ``root`` that ``path`` imports (relative or absolute imports,
    anywhere in the file, with the ``__init__.py`` of every package on the way)."""
    package = path.parent.relative_to(root).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = base + (tuple(node.module.split(".")) if node.module else ())
            names = [module] + [module + (a.name,) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [tuple(a.name.split(".")) for a in node.names]
        else:
            continue
        for parts in names:
            for i in range(1, len(parts) + 1):
                for f in (root.joinpath(*parts[:i], "__init__.py"), root.joinpath(*parts[:i]).with_suffix(".py")):
                    if f.is_file():
                        found.add(f)
    return found


def sources(family: str, root: Path = ROOT) -> list[Path]:
    """The project files ``family``'s kernels and launchers are made of: its launcher
    module and everything it imports, transitively."""
    seen, todo = set(), [root / FAMILY_SOURCES[family][0]]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += _imported(f, root) - seen
    return sorted(seen)


def fingerprint(arch: str, dtype: str, family: str, root: Path = ROOT) -> str:
    """The fingerprint of ``family``'s rows in the (arch, dtype) pair (see the module docstring)."""
    import torch
    from sisa_kernels import configs
    from .targets import DTYPES, TARGETS
    tables = {f for pattern in TABLE_FILES for f in root.glob(pattern)}
    h = hashlib.sha256()
    for f in sorted(set(sources(family, root)) - tables) + [root / p for p in PLANNING]:
        h.update(str(f.relative_to(root)).encode() + b"\0" + code_of(f.read_text()).encode() + b"\0")
    attention, others = configs.table(TARGETS[arch].family, getattr(torch, DTYPES[dtype]))
    kinds = FAMILY_SOURCES[family][1]
    h.update(repr(sorted((k, v) for k, v in attention.items() if k[0] in kinds)).encode())
    h.update(repr(sorted((k, v) for k, v in others.items() if k in kinds)).encode())
    pads = getattr(configs.TABLES[TARGETS[arch].family], "PAD_HEAD_DIM", ())
    h.update(repr(sorted(p for p in pads if p[0] == configs.dtype_class(getattr(torch, DTYPES[dtype]))
                         and p[1] in kinds)).encode())
    return h.hexdigest()[:16]


def fingerprints(arch: str, dtype: str, families=None, root: Path = ROOT) -> dict:
    """{family: fingerprint} of the pair, for ``families`` (default: every family)."""
    return {f: fingerprint(arch, dtype, f, root) for f in (families or FAMILY_SOURCES)}


def stale_families(meta: dict, arch: str, dtype: str) -> list[str]:
    """The families of a report (its ``meta``) whose fingerprint is not the current one."""
    committed = meta.get("fingerprints") or {}
    now = fingerprints(arch, dtype, meta.get("families") and meta["families"].split(","))
    return [f for f, fp in now.items() if committed.get(f) != fp]


def config_str(row):
    kw = row["kwargs"]
    blocks = " ".join(f"{k[len('BLOCK_'):] or 'B'}{v}" for k, v in kw.items()
                      if k.startswith("BLOCK") and not isinstance(v, bool))
    warps = row.get("num_warps") or kw.get("num_warps", "?")
    stages = row.get("num_stages") or kw.get("num_stages", "?")
    cap = f" r{kw['maxnreg']}" if kw.get("maxnreg") else ""
    return f"{blocks} w{warps} s{stages}{cap}".strip()


def _dims_str(values, every):
    if not values:
        return "-"
    if len(values) > 1 and sorted(values) == sorted(every):
        return "*"
    return ",".join(map(str, sorted(values)))


COLUMNS = ["kernel", "config", "arch", "dtype", "d", "n", "regs", "spill B", "smem B", "blk/SM", "mma", "cp.async",
           "TMA", "flags"]


def table_cells(row, dims, states):
    flags = ("*" if row["pick"] else "") + ("t" if row["tuned"] else "")
    head = [row["kernel"], config_str(row), row["arch"], row["dtype"], _dims_str(row["head_dims"], dims),
            _dims_str(row["d_states"], states)]
    if row.get("error"):
        return head + ["-"] * 7 + [f"{flags} ERROR"]
    viol = ",".join(row["violations"])
    mma = (f"wgmma {row['wgmma']}" if row["wgmma"] else f"tcgen05 {row['tcgen05']}" if row.get("tcgen05")
           else f"mma.sync {row['mma_sync']}" if row["mma_sync"] else "-")
    return head + [str(row["regs"]), str(row["spilled_bytes"]), str(row["smem"]),
                   f"{row['blocks_per_sm']} ({row['limit']})", mma, f"{row['cp_async']}/{row['ldgsts']}",
                   f"{row['tma']}/{row['utmaldg']}", (flags + (" " + viol if viol else "")).strip()]


def text_table(rows, dims, states):
    cells = [COLUMNS] + [table_cells(r, dims, states) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def legend(target):
    return (
        "d / n: head dim / d_state (`*`: the same compile for every value, `-`: not an input of the kernel). "
        "config: block sizes (BLOCK_ prefix dropped), wN = num_warps, sN = num_stages. regs: per thread (ptxas). "
        "spill B: spill stores + loads in bytes. smem B: shared memory per block. blk/SM: "
        f"min({target.regs_per_sm} // (regs*32*warps), {target.smem_per_sm} // smem, "
        f"{target.max_warps_per_sm} // warps, {target.max_blocks_per_sm}) and the limiting resource. "
        "mma: tensor-core instructions in the PTX (wgmma.mma_async, tcgen05.mma or mma.sync); cp.async: "
        "cp.async.{ca,cg}.shared in PTX / LDGSTS in SASS; TMA: cp.async.bulk.tensor in PTX / UTMALDG in SASS. "
        "flags: `*` the launcher's default pick, `t` kept by its autotuner's pruner (SISA_AUTOTUNE=1); "
        f"violations: spill (spilled bytes > 0), smem (> {target.smem_per_block} B, cannot launch), occupancy "
        "(registers allow 1 block/SM where shared memory and warps allow >= 2). An over-budget spill where ptxas "
        "used fewer than 255 registers also gives the registers and spills the same PTX needs with .maxnreg 255.")


def over_budget(rows):
    """Rows of the project's kernels with a spill, smem or error violation (the
    yardstick is a reference, not a budget; occupancy is reported, not a budget)."""
    return [r for r in rows if set(r["violations"]) - {"occupancy"} and r["family"] != "yardstick-fa2"]


def violation_line(r, dims, states):
    where = (f"{r['kernel']} {config_str(r)} {r['dtype']} d={_dims_str(r['head_dims'], dims)} "
             f"n={_dims_str(r['d_states'], states)}")
    if r.get("error"):
        return f"{where}: {r['error']}"
    uncapped = (f"; with .maxnreg 255: {r['uncapped_regs']} regs, {r['uncapped_spilled_bytes']} B spilled"
                if r.get("uncapped_regs") is not None else "")
    return (f"{where}: {','.join(r['violations'])} (regs {r['regs']}, spilled {r['spilled_bytes']} B, "
            f"smem {r['smem']} B, {r['blocks_per_sm']} blk/SM by {r['limit']}{uncapped})")


def _fingerprint_text(meta):
    compiled = meta.get("compiled", {})
    return ", ".join(f"{f} {fp}" + (f" (rows from {compiled[f]['commit']}, {compiled[f]['date']})"
                                    if f in compiled and compiled[f]["commit"] != meta["commit"] else "")
                     for f, fp in meta["fingerprints"].items())


def markdown(rows, meta, target, dims, states):
    m = meta
    out = [f"# Static report: {target.arch} ({target.gpu}), {m['dtype']}", "",
           f"`{m['command']}`: {m['date']}, Triton {m['triton']}, {m['ptxas']}, target {m['target']}, limits: "
           f"{target.max_regs_per_thread} registers per thread, {target.smem_per_block} B shared memory per block; "
           f"shapes b={m['shape']['batch']} t={m['shape']['seqlen']} h={m['shape']['heads']} "
           f"hk={m['shape']['kv_heads']}, {m['compiles']} compiles ({m.get('compiled_now', m['compiles'])} in this "
           f"run, {m['elapsed_s']:.0f} s on {m['jobs']} processes); kernel fingerprints {_fingerprint_text(m)}.",
           "", legend(target), "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in table_cells(r, dims, states)) + " |" for r in rows]
    out += ["", "## Over budget (project kernels: spills, shared memory, errors)", ""]
    bad = over_budget(rows)
    out += [f"- {violation_line(r, dims, states)}" for r in bad] or ["None."]
    return "\n".join(out) + "\n"


def write(out_dir: Path, stem: str, meta: dict, rows: list, target, dims, states) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text('{"meta": ' + json.dumps(meta, default=str) + ',\n "rows": [\n'    # one row per line
                   + ",\n".join(json.dumps(r, default=str) for r in rows) + "\n]}\n")
    (out_dir / f"{stem}.md").write_text(markdown(rows, meta, target, dims, states))
    tmp.replace(path)                       # the JSON last: a file present is a finished report
    return path


def summary(results: Path, pairs) -> str:
    """A markdown table, one line per (arch, dtype) of ``pairs``: whether a report is
    committed and current, its compiles, the project rows over budget (and how many of
    them only spill because ptxas held the registers down: none with .maxnreg 255), the
    largest spill and shared memory against the target's limit."""
    from .targets import TARGETS
    out = ["| arch | dtype | report | compiles | rows over budget | of them, 0 B at .maxnreg 255 | most spilled B "
           "| most smem B (limit) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arch, dt in pairs:
        path = results / f"{TARGETS[arch].stem}_{dt}.json"
        if not path.exists():
            path = path.with_name(path.stem + "_quick.json")
        if not path.exists():
            out.append(f"| {arch} | {dt} | not yet compiled | - | - | - | - | - |")
            continue
        data = json.loads(path.read_text())
        rows = [r for r in data["rows"] if r["family"] != "yardstick-fa2" and not r["error"]]
        stale = stale_families(data["meta"], arch, dt)
        state = f"stale ({', '.join(stale)})" if stale else "current"
        state += ", --quick" if data["meta"].get("quick") else ""
        bad = over_budget(data["rows"])
        traded = sum(1 for r in bad if r["violations"] == ["spill"] and r.get("uncapped_spilled_bytes") == 0)
        out.append(f"| {arch} | {dt} | {state} | {data['meta']['compiles']} | {len(bad)} | {traded} | "
                   f"{max((r['spilled_bytes'] or 0 for r in rows), default=0)} | "
                   f"{max((r['smem'] for r in rows), default=0)} ({TARGETS[arch].smem_per_block}) |")
    return "\n".join(out)
