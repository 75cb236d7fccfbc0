"""Summaries of an associative-recall sweep: steps to accuracy thresholds, the
stdout table and the plot. ``result`` is what ``benchmarks.retrieval`` writes:
``result["runs"][setting][model][seed] = list of evaluation records``.
"""
from __future__ import annotations

from pathlib import Path

THRESHOLDS = (0.5, 0.9, 0.95)


def steps_to(records: list[dict], threshold: float) -> int | None:
    """The first evaluated step whose held-out accuracy is >= threshold (None: never)."""
    return next((r["step"] for r in records if r["accuracy"] >= threshold), None)


def summarize(runs_by_seed: dict[str, list[dict]]) -> dict:
    """Over seeds, for each threshold: per-seed steps, how many reached it, and the
    mean / min / max over the seeds that did (None where none did)."""
    out = {}
    for th in THRESHOLDS:
        per_seed = {seed: steps_to(recs, th) for seed, recs in runs_by_seed.items()}
        hit = [s for s in per_seed.values() if s is not None]
        out[f"{th:g}"] = {"per_seed": per_seed, "reached": len(hit), "seeds": len(per_seed),
                          "mean": sum(hit) / len(hit) if hit else None,
                          "min": min(hit) if hit else None, "max": max(hit) if hit else None}
    out["final_accuracy"] = {seed: recs[-1]["accuracy"] for seed, recs in runs_by_seed.items()}
    out["last_step"] = {seed: recs[-1]["step"] for seed, recs in runs_by_seed.items()}
    return out


def _cell(s: dict) -> str:
    if not s["reached"]:
        return f"never (0/{s['seeds']})"
    txt = f"{s['mean']:.0f} [{s['min']}-{s['max']}]"
    return txt if s["reached"] == s["seeds"] else f"{txt} ({s['reached']}/{s['seeds']})"


def table(result: dict) -> str:
    """Steps to 50/90/95 % held-out accuracy: mean [min-max] over seeds."""
    head = f"{'setting':>10} | {'model':>11} | " + " | ".join(f"{'to ' + format(t, '.0%'):>20}" for t in THRESHOLDS) \
        + " | final acc per seed"
    lines = [head, "-" * len(head)]
    for setting, by_model in result["summary"].items():
        for model, s in by_model.items():
            finals = ", ".join(f"{a:.3f}@{s['last_step'][k]}" for k, a in s["final_accuracy"].items())
            lines.append(f"{setting:>10} | {model:>11} | "
                         + " | ".join(f"{_cell(s[f'{t:g}']):>20}" for t in THRESHOLDS) + f" | {finals}")
    return "\n".join(lines)


def plot(result: dict, path: Path):
    """One accuracy panel per setting (every seed a line), then steps to 95 % per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(result["runs"])
    colors = {"sisa": "tab:blue", "transformer": "tab:orange"}
    fig, axes = plt.subplots(1, len(settings) + 1, figsize=(4.6 * (len(settings) + 1), 4))
    params = result["config"]["parameters"]
    for ax, setting in zip(axes, settings):
        n_facts = result["config"]["settings"][setting]["n_facts"]
        for model, by_seed in result["runs"][setting].items():
            for i, recs in enumerate(by_seed.values()):
                ax.plot([r["step"] for r in recs], [r["accuracy"] for r in recs], color=colors[model],
                        alpha=0.8, lw=1.2, label=f"{model} ({params[setting][model] / 1e3:.0f}K)" if i == 0 else None)
        ax.axhline(1 / n_facts, color="grey", ls=":", lw=1, label=f"1/{n_facts}")
        ax.axhline(0.95, color="grey", ls="--", lw=0.8)
        ax.set(title=f"MQAR, {setting}", xlabel="training step", ylabel="held-out accuracy", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    xs = list(range(len(settings)))
    for j, model in enumerate(colors):
        means, lo, hi, x_hit = [], [], [], []
        for x, setting in zip(xs, settings):
            s = result["summary"][setting].get(model, {}).get("0.95")
            if s and s["reached"]:
                x_hit.append(x + (j - 0.5) * 0.1)
                means.append(s["mean"])
                lo.append(s["mean"] - s["min"])
                hi.append(s["max"] - s["mean"])
        if means:
            ax.errorbar(x_hit, means, yerr=[lo, hi], fmt="o", color=colors[model], capsize=4, label=model)
    reached = [", ".join(f"{m[:5]} {result['summary'][s][m]['0.95']['reached']}/{result['summary'][s][m]['0.95']['seeds']}"
                         for m in colors if m in result["summary"][s]) for s in settings]
    ax.set_xticks(xs, [f"{s}\n(reached: {r})" for s, r in zip(settings, reached)], fontsize=8)
    ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set(title="steps to 95 % (mean, range over seeds)", ylabel="training step",
           ylim=(0, None))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    run = result["config"]["run"]
    fig.suptitle(f"d_model {run['d_model']}, {run['n_layers']} layers, {run['n_heads']} heads, batch "
                 f"{run['batch_size']}, lr {run['lr']:g}; a seed missing from the right panel never reached 95 %",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
