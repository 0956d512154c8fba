"""Base-to-novel results aggregated over seeds, as the papers' first table (markdown) and a chart (PNG)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from statistics import mean

from .fileio import atomic_path, write_text
from .protocols import harmonic_mean


def collect(run_dirs: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {dataset: {base, novel, hm}}} from base2novel runs, averaged over seeds."""
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in run_dirs:
        path = os.path.join(run, "metrics.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            m = json.load(f)
        if m.get("protocol") == "base2novel":
            grouped[(m["method"], m["dataset"])].append(m)
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (method, dataset), runs in grouped.items():
        base, novel = mean(r["base"] for r in runs), mean(r["novel"] for r in runs)
        table[method][dataset] = {"base": base, "novel": novel, "hm": harmonic_mean(base, novel), "seeds": len(runs),
                                  "trainable_params": runs[0]["trainable_params"]}
    return table


def with_average(table: dict, datasets: list[str]) -> dict:
    """Add an 'Average' column: mean base and novel over datasets, HM of those means (as the papers)."""
    out = {}
    for method, rows in table.items():
        present = [d for d in datasets if d in rows]
        if not present:
            continue
        base, novel = mean(rows[d]["base"] for d in present), mean(rows[d]["novel"] for d in present)
        out[method] = {"Average": {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}, **rows}
    return out


def markdown(table: dict, datasets: list[str], methods: list[str]) -> str:
    """One small table per dataset (Average first), methods as rows, Base / Novel / HM as columns."""
    table = with_average(table, datasets)
    lines = []
    for dataset in ["Average", *datasets]:
        lines += [f"**{dataset}**", "", "| method | base | novel | HM |", "| --- | ---: | ---: | ---: |"]
        for method in methods:
            row = table.get(method, {}).get(dataset)
            if row:
                lines.append(f"| {method} | {row['base']:.2f} | {row['novel']:.2f} | {row['hm']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def summary(table: dict, datasets: list[str], methods: list[str]) -> str:
    """A compact plain-text table: per method, HM per dataset and the average base/novel/HM."""
    table = with_average(table, datasets)
    short = [d.replace("syn_", "") for d in datasets]
    header = f"{'method':<14}" + "".join(f"{s[:9]:>10}" for s in short) + f"{'avg base':>10}{'avg novel':>10}{'avg HM':>9}"
    lines = ["HM per dataset, and the average over datasets:", header]
    for method in methods:
        rows = table.get(method)
        if not rows:
            continue
        cells = "".join(f"{rows[d]['hm']:>10.2f}" if d in rows else f"{'-':>10}" for d in datasets)
        avg = rows["Average"]
        lines.append(f"{method:<14}{cells}{avg['base']:>10.2f}{avg['novel']:>10.2f}{avg['hm']:>9.2f}")
    return "\n".join(lines)


def chart(table: dict, datasets: list[str], methods: list[str], path: str) -> None:
    """Grouped bars: HM per dataset and method, plus the average base and novel accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = with_average(table, datasets)
    present = [m for m in methods if m in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1.3]})
    width = 0.8 / max(1, len(present))
    names = ["Average", *datasets]
    for i, method in enumerate(present):
        values = [table[method].get(d, {}).get("hm", 0.0) for d in names]
        left.bar([x + i * width for x in range(len(names))], values, width, label=method)
        avg = table[method]["Average"]
        right.scatter(avg["base"], avg["novel"], s=60, label=method)
        right.annotate(method, (avg["base"], avg["novel"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    left.set_xticks([x + width * (len(present) - 1) / 2 for x in range(len(names))])
    left.set_xticklabels([n.replace("syn_", "") for n in names], rotation=20)
    left.set_ylabel("harmonic mean of base and novel accuracy (%)")
    left.set_title("Base-to-novel generalization")
    left.legend(fontsize=7, ncol=2)
    right.set_xlabel("average base accuracy (%)")
    right.set_ylabel("average novel accuracy (%)")
    right.set_title("Trade-off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(run_dirs: list[str], datasets: list[str], methods: list[str], out_dir: str, header: str = "") -> str:
    """report.md, report.png and report.json in out_dir; returns the plain-text summary."""
    table = collect(run_dirs)
    write_text(os.path.join(out_dir, "report.md"),
               header + markdown(table, datasets, methods) + "\n![chart](report.png)\n")
    with atomic_path(os.path.join(out_dir, "report.json")) as tmp, open(tmp, "w") as f:
        json.dump(with_average(table, datasets), f, indent=2)
    chart(table, datasets, methods, os.path.join(out_dir, "report.png"))
    return summary(table, datasets, methods)
