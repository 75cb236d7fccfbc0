"""Presenting benchmark rows: a printed table, a markdown file and a plot.

A row is a dict (see ``benchmarks.run``); attention rows have ``tflops`` and
``ratio_to_plain``, scan rows ``gbps`` and ``pct_peak_bw``.
"""
from __future__ import annotations

from pathlib import Path

PROVIDER_ORDER = ["plain", "naive", "sdpa-paper", "sdpa", "triton", "scan-naive", "scan-triton"]

LEGEND = (
    "ms: median wall time of one call (p20-p80 beside it); fwd is an inference forward (no_grad), "
    "fwd+bwd a forward plus backward for all inputs. TFLOP/s: the standard attention count "
    "4*b*h*t^2*d/2 (causal), x3.5 for fwd+bwd; the SSM term is not counted, so SISA and plain "
    "rows are comparable. x_plain = ms / plain's ms at the same shape, dtype and mode "
    "(plain = causal attention without the SSM term; lower is better, 1.0 = no overhead). "
    "GB/s (scan): bytes the scan must read and write / time; %bw: of the GPU's HBM bandwidth. "
    "mem MB: {mem}. status: ok, mismatch (failed the float64 correctness gate; not timed), "
    "unsupported, error, skipped (time budget)."
)


def _order(row):
    return (row["dtype"], row["mode"] != "fwd", row["d_head"] or 0, row["seqlen"], row["d_state"] or 0,
            PROVIDER_ORDER.index(row["provider"]) if row["provider"] in PROVIDER_ORDER else 99,
            row["provider"])


def _fmt(value, spec, none="-"):
    return none if value is None else format(value, spec)


def _cells(row, scan):
    ms = _fmt(row["ms"], ".3f")
    spread = "-" if row["ms"] is None else f"{row['ms_p20']:.3f}-{row['ms_p80']:.3f}"
    note = row["reason"] or ""
    if row["status"] == "ok" and row.get("gate_err") is not None:
        note = f"gate err {row['gate_err']:.1e}"
    shape = [row["provider"], row["mode"], str(row["seqlen"])]
    shape += [str(row["d_state"])] if scan else [str(row["d_head"]), _fmt(row["d_state"], "d")]
    shape += [row["dtype"], f"{row['batch']}x{row['heads']}", row["status"], ms, spread]
    if scan:
        shape += [_fmt(row["gbps"], ".3g"), _fmt(row["pct_peak_bw"], ".1f")]
    else:
        shape += [_fmt(row["tflops"], ".3g"), _fmt(row["ratio_to_plain"], ".2f")]
    return shape + [_fmt(row["peak_mem_mb"], ".0f"), note]


def _headers(scan):
    head = ["provider", "mode", "t"] + (["n"] if scan else ["d", "n"])
    head += ["dtype", "bxh", "status", "ms", "p20-p80"]
    head += ["GB/s", "%bw"] if scan else ["TFLOP/s", "x_plain"]
    return head + ["mem MB", "note"]


def _split(rows):
    rows = sorted(rows, key=_order)
    return ([r for r in rows if r["kind"] != "scan"], [r for r in rows if r["kind"] == "scan"])


def format_table(rows) -> str:
    """Fixed-width text: an attention table and a scan table."""
    out = []
    for title, part, scan in zip(("attention", "scan"), _split(rows), (False, True)):
        if not part:
            continue
        cells = [_headers(scan)] + [_cells(r, scan) for r in part]
        widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
        out.append(f"== {title} ==")
        for c in cells:
            out.append("  ".join(x.rjust(w) if i > 1 else x.ljust(w) for i, (x, w) in enumerate(zip(c, widths)))
                       + "  " + c[-1])
    return "\n".join(out)


def to_markdown(machine: dict, rows, config: dict, header: str = "") -> str:
    """results.md: the header (the setup in words), machine, sweep, legend, then the tables."""
    lines = ["# SISA microbenchmarks", ""]
    if header:
        lines += ["**" + header.replace("\n", "**\n\n**") + "**", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += [f"- sweep: {config}", "", LEGEND.format(mem=machine.get("peak_mem_method", "")), ""]
    for title, part, scan in zip(("Attention", "Scan"), _split(rows), (False, True)):
        if not part:
            continue
        head = _headers(scan)
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r, scan)) + " |" for r in part]
        lines.append("")
    return "\n".join(lines)


def _headline(rows):
    """The configuration the plot shows: first dtype, largest d_head, smallest d_state."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    dtype = sorted({r["dtype"] for r in ok})[0]
    ds = [r["d_head"] for r in ok if r["dtype"] == dtype and r["d_head"] is not None]
    ns = [r["d_state"] for r in ok if r["dtype"] == dtype and r["d_state"] is not None]
    return dtype, (max(ds) if ds else None), (min(ns) if ns else None)


# The plot's columns, one row of panels per mode: (row key, y label, scan rows?, log y).
PANELS = [("ms", "time (ms)", False, True),
          ("ratio_to_plain", "ratio to plain (ms / plain's ms)", False, True),
          ("tflops", "TFLOP/s (attention count)", False, False),
          ("gbps", "scan GB/s", True, False)]


def figure(rows, title: str = ""):
    """The results figure: PANELS against t (log2), one row per mode, one legend below
    all panels. None when no row was timed."""
    head = _headline(rows)
    if head is None:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain_numbers = FuncFormatter(lambda v, _: f"{v:g}")   # no mathtext: much faster to draw

    dtype, d, n = head
    names = PROVIDER_ORDER + sorted({r["provider"] for r in rows} - set(PROVIDER_ORDER))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(len(modes), len(PANELS), figsize=(5 * len(PANELS), 4.2 * len(modes) + 1.2),
                             squeeze=False, layout="constrained")
    for axrow, mode in zip(axes, modes):
        for name in names:
            sel = [r for r in rows if r["provider"] == name and r["mode"] == mode and r["status"] == "ok"
                   and r["dtype"] == dtype]
            # the headline slice: the scan has no d_head, plain no d_state
            sel = [r for r in sel if r["d_state"] in (n, None) and (r["kind"] == "scan" or r["d_head"] == d)]
            for ax, (key, _, scan, _) in zip(axrow, PANELS):
                pts = sorted((r["seqlen"], r[key]) for r in sel if (r["kind"] == "scan") == scan
                             and r[key] is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=name, color=colors[name])
        for ax, (_, label, _, log_y) in zip(axrow, PANELS):
            ax.set_xscale("log", base=2)
            if log_y:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(plain_numbers)
                axis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("sequence length t")
            ax.set_ylabel(label)
            ax.set_title(f"{mode}: {label}")
            ax.grid(True, alpha=0.3)
            if not ax.lines:
                ax.text(0.5, 0.5, "no timed rows", transform=ax.transAxes, ha="center", color="gray")
    # One legend for the figure, below the panels, so it never covers a line.
    handles = {line.get_label(): line for ax in axes.flat for line in ax.lines}
    labels = [name for name in names if name in handles]
    fig.legend([handles[x] for x in labels], labels, loc="outside lower center", ncol=len(labels))
    fig.suptitle(f"{title + chr(10) if title else ''}{dtype}, d_head={d}, d_state={n} "
                 "(timed rows only: mismatch/unsupported/error rows are absent)", fontsize=11)
    return fig


def plot(rows, path: Path, title: str = "") -> bool:
    """Write figure(rows, title) to path (results.png). Returns False (and writes
    nothing) when no row was timed."""
    fig = figure(rows, title)
    if fig is None:
        return False
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
