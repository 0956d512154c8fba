"""What every renderer shares: one rendered part of the report (markdown, CSV rows and JSON together),
markdown tables, the CSV row of one statistic, the settings line under a table, the cost cells."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .collect import COMPARED_ACROSS_METHODS, METHOD_OF_ROW, ROW_SETTINGS
from .tables import COST_COLUMNS, Stat

CSV_HEADER = ["protocol", "method", "dataset", "shots", "column", "mean", "std", "n_seeds", "seeds"]


@dataclass
class Section:
    """One part of the report in its three forms: markdown lines, CSV rows and JSON entries."""

    markdown: list[str] = field(default_factory=list)
    csv_rows: list[list] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def add(self, other: Section) -> None:
        """Append another section's markdown, rows and entries to this one."""
        self.markdown += other.markdown
        self.csv_rows += other.csv_rows
        self.summary.update(other.summary)


def csv_row(protocol: str, method: str, dataset: str, shots: int, column: str, stat: Stat) -> list:
    """One report.csv row: a column's mean, std (empty for one seed), seed count and seeds."""
    return [
        protocol,
        method,
        dataset,
        shots,
        column,
        round(stat.mean, 4),
        "" if stat.std is None else round(stat.std, 4),
        stat.n,
        " ".join(map(str, stat.seeds)),
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, the first column left-aligned and the others right-aligned, then a blank line."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def short_name(name: str) -> str:
    """A dataset's name in a column header or a title: the synthetic world's without its prefix."""
    return name.replace("syn_", "")


def cost_cells(cost: dict[str, float]) -> list[str]:
    """The cost columns of one row ('—' where nothing was recorded)."""
    return [fmt.format(cost[key]) if key in cost else "—" for key, _, fmt in COST_COLUMNS]


def varying_settings(rows: dict[str, list[dict]]) -> str:
    """The line under a table: each setting with different values between two of its rows, and each row's
    value (several where it differs between datasets), or 'none'.

    Rows of one method are compared on every setting; rows of different methods on the backbone and data
    settings only (COMPARED_ACROSS_METHODS), since each method has its own training settings."""
    values: dict = defaultdict(dict)
    method_of: dict = {}
    for name, runs in rows.items():
        for r in runs:
            method_of[name] = r.get(METHOD_OF_ROW, r["method"])
            for key, value in r.get(ROW_SETTINGS, {}).items():
                values[key].setdefault(name, set()).add(value)
    parts = []
    for key in sorted(values):
        per_row = values[key]
        groups = (
            [per_row]
            if key in COMPARED_ACROSS_METHODS
            else [
                {n: v for n, v in per_row.items() if method_of[n] == m}
                for m in dict.fromkeys(method_of.values())
            ]
        )
        varying = {
            n: v
            for g in groups
            if len(g) >= 2 and len({frozenset(v) for v in g.values()}) > 1
            for n, v in g.items()
        }
        if varying:
            shown = "; ".join(f"{name}: {'|'.join(sorted(v))}" for name, v in varying.items())
            parts.append(f"{key} ({shown})")
    return "Settings that vary between the rows: " + (", ".join(parts) if parts else "none") + "."


def rows_of(runs: list[dict], protocol: str, shots: int, names, dataset: str | None = None) -> dict:
    """{row name: its runs} of one table (dataset None: every dataset, for an Average table)."""
    return {
        n: [
            r
            for r in runs
            if r["protocol"] == protocol
            and r["method"] == n
            and int(r.get("shots", -1)) == shots
            and (dataset is None or r["dataset"] == dataset)
        ]
        for n in names
    }


def scored_text(metrics: dict) -> str:
    """What a result line says each accuracy was measured on: 'base 83.20 % (120 images, 5 classes); ...'."""
    parts = []
    for key, counts in (metrics.get("scored") or {}).items():
        if isinstance(counts, dict) and isinstance(metrics.get(key), (int, float)):
            parts.append(
                f"{key} {metrics[key]:.2f} % ({counts.get('images', '?')} images, "
                f"{counts.get('classes', '?')} classes)"
            )
    return "; ".join(parts)
