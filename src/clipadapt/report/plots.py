"""Plots of the report (PNG): base against novel per method, accuracy against K, and each study's HM
against its plotted settings. Drawn with matplotlib's object API when matplotlib is installed."""

from __future__ import annotations

import os

from ..fileio import atomic_path
from .rendering import short_name
from .tables import base2novel_table, fewshot_table, ordered, study_curves, study_tables


def write_plots(
    runs: list[dict], out_dir: str, methods: list[str] | None, studies: dict | None = None
) -> list[str]:
    """base vs novel per method (base-to-novel averages), K-shot curves and the studies' HM curves; returns the
    files written."""
    try:
        # Deferred: matplotlib is optional and slow to import. The object API draws without pyplot, so
        # no backend is chosen for the caller's process.
        from matplotlib.figure import Figure
    except ImportError:
        return []

    written = []
    study_runs = [r for r in runs if r.get("variant")]
    runs = [r for r in runs if not r.get("variant")]
    for study, per_shots in sorted(study_tables(study_runs, studies or {}).items()):
        for (key, shots), lines in sorted(
            study_curves(study, per_shots, (studies or {}).get(study, {})).items()
        ):
            fig = Figure(figsize=(5, 3.6))
            ax = fig.subplots()
            for label, points in lines.items():
                ax.plot(
                    [x for x, _ in points],
                    [y for _, y in points],
                    marker="o",
                    label=label or "(defaults)",
                )
            ax.set_xlabel("base : novel classes (B/N)" if key == "base_ratio" else key)
            ax.set_ylabel("HM (%)")
            ax.set_title(f"{study}: HM against {key} ({shots} shots)", fontsize=9)
            ax.legend(fontsize=7)
            fig.tight_layout()
            written.append(
                _save(fig, os.path.join(out_dir, f"study_{study}_{key}_{shots}shots.png"))
            )
    for shots, table in sorted(base2novel_table(runs).items()):
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        for method in ordered(table, methods):
            avg = table[method]["Average"]
            ax.scatter(avg["base"], avg["novel"], s=50)
            ax.annotate(
                method,
                (avg["base"], avg["novel"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("average base accuracy (%)")
        ax.set_ylabel("average novel accuracy (%)")
        ax.set_title(f"Base vs novel, {shots} shots")
        written.append(_save(fig, os.path.join(out_dir, f"base2novel_{shots}shots.png")))
    few = fewshot_table(runs)
    if few:
        names = ["Average", *sorted({d for m in few.values() for d in m if d != "Average"})]
        cols = min(4, len(names))
        n_rows = (len(names) + cols - 1) // cols
        fig = Figure(figsize=(3.2 * cols, 2.8 * n_rows))
        axes = fig.subplots(n_rows, cols, squeeze=False)
        for ax, dataset in zip(axes.flat, names, strict=True):
            for method in ordered(few, methods):
                per_k = few[method].get(dataset, {})
                ks = sorted(per_k)
                if ks:
                    ax.errorbar(
                        ks,
                        [per_k[k].mean for k in ks],
                        yerr=[per_k[k].std or 0 for k in ks],
                        marker="o",
                        label=method,
                        capsize=2,
                    )
            ax.set_xscale("log", base=2)
            ax.set_title(short_name(dataset), fontsize=9)
            ax.set_xlabel("shots per class")
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        axes.flat[0].set_ylabel("accuracy (%)")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, os.path.join(out_dir, "fewshot.png")))
    return written


def _save(fig, path: str) -> str:
    """Write a figure as PNG atomically; its path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path
