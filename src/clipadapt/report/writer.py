"""The report of a folder of runs: the renderers' sections joined into report.md, report.csv and
report.json, the plots beside them, and the compact summary the demo prints."""

from __future__ import annotations

import csv
import io
import os

from ..fileio import write_json, write_text
from .collect import RunSet, find_runs
from .plots import write_plots
from .renderers import (
    TRANSFER_TITLES,
    render_absent_runs,
    render_base2novel,
    render_cost,
    render_fewshot,
    render_study,
    render_transfer,
)
from .rendering import CSV_HEADER, Section, short_name
from .tables import base2novel_table, ordered, study_tables, table_rows


def render(
    run_set: RunSet,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    references: bool = False,
) -> tuple[str, list[list], dict]:
    """Markdown text, CSV rows and a JSON-able summary of every protocol present."""
    runs = table_rows(run_set)
    study_runs = [r for r in run_set.finished if r.get("variant")]
    report = Section(csv_rows=[list(CSV_HEADER)])
    report.add(render_base2novel(runs, methods, datasets, references))
    for protocol in TRANSFER_TITLES:
        report.add(render_transfer(runs, protocol, methods))
    report.add(render_fewshot(runs, methods, datasets))
    for study, per_shots in sorted(study_tables(study_runs, run_set.studies).items()):
        mine = [r for r in study_runs if r["study"] == study]
        report.add(render_study(study, per_shots, mine, run_set.studies.get(study)))
    if runs:
        report.add(render_cost(runs, methods))
    report.add(render_absent_runs(run_set))
    return "\n".join(report.markdown), report.csv_rows, report.summary


def write_report(
    root: str,
    out_dir: str | None = None,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    references: bool = False,
    header: str = "",
) -> str:
    """report.md, report.csv, report.json and PNG plots of the runs under `root`; returns the markdown."""
    out_dir = out_dir or root
    run_set = find_runs(root)
    text, rows, summary = render(run_set, methods, datasets, references)
    plots = write_plots(run_set.finished, out_dir, methods, run_set.studies)
    images = "".join(f"![{os.path.basename(p)}]({os.path.relpath(p, out_dir)})\n" for p in plots)
    write_text(
        os.path.join(out_dir, "report.md"), header + text + ("\n" + images if images else "")
    )
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    write_text(os.path.join(out_dir, "report.csv"), buf.getvalue())
    write_json(os.path.join(out_dir, "report.json"), summary)
    return text


def base2novel_summary(
    root: str, methods: list[str] | None = None, datasets: list[str] | None = None
) -> str:
    """A compact plain-text table per shots: HM per dataset and the average base / novel / HM of each method."""
    lines = []
    for shots, table in sorted(base2novel_table(table_rows(find_runs(root))).items()):
        names = ordered({d for m in table.values() for d in m if d != "Average"}, datasets)
        width = max(
            14, *(len(m) + 2 for m in table)
        )  # a row split by settings is named "coop (lr=0.05)"
        lines += [
            f"HM per dataset, and the average over datasets ({shots} shots):",
            f"{'method':<{width}}"
            + "".join(f"{short_name(d)[:9]:>10}" for d in names)
            + f"{'avg base':>10}{'avg novel':>10}{'avg HM':>9}",
        ]
        for method in ordered(table, methods):
            rows = table[method]
            cells = "".join(f"{rows[d]['hm']:>10.2f}" if d in rows else f"{'-':>10}" for d in names)
            avg = rows["Average"]
            lines.append(
                f"{method:<{width}}{cells}{avg['base']:>10.2f}{avg['novel']:>10.2f}{avg['hm']:>9.2f}"
            )
    return "\n".join(lines)
