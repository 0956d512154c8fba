"""One renderer per part of the report: base-to-novel, cross-dataset and domain generalization, few-shot,
each study, the cost tables and the runs left out. Each returns a `Section`: its markdown, its CSV rows
and its JSON entries, made from the same numbers in one place."""

from __future__ import annotations

from collections import defaultdict

from ..references import published_rows
from .collect import RunSet
from .rendering import (
    Section,
    cost_cells,
    csv_row,
    markdown_table,
    rows_of,
    short_name,
    varying_settings,
)
from .tables import (
    COST_COLUMNS,
    Stat,
    base2novel_table,
    cost_of,
    fewshot_table,
    ordered,
    transfer_table,
)

COST_NOTE = (
    "Cost, as each run records it (mean over the runs): params = trainable parameters; step ms/img = "
    "time inside optimizer steps (forward, loss, backward, update; no data loading) per training image; "
    "epoch ms/img = wall time of whole training epochs per training image (waiting for batches and the "
    "one pass that caches frozen tokens included; runs recorded before the two were told apart show "
    "here); train s/run = the sum of those epochs; run s = the whole run's wall time (data, training, "
    "evaluation); peak MB = the CUDA allocator's peak during the run on a GPU, on the CPU the process's "
    "resident-memory peak since it started (a sweep running several runs in one process reports the "
    "largest so far); eval img/s = test images read, transformed and classified per second."
)


def render_base2novel(
    runs: list[dict],
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    references: bool = False,
) -> Section:
    """Base-to-novel tables per shots: the Average, then each dataset; base, novel, HM and seeds."""
    out = Section()
    for shots, table in sorted(base2novel_table(runs).items()):
        order = ordered(table, methods)
        names = [
            "Average",
            *ordered({d for m in table.values() for d in m if d != "Average"}, datasets),
        ]
        out.markdown += [
            f"## Base-to-novel generalization ({shots} shots)",
            "",
            "Accuracy (%) on the base and novel classes, mean ± std over seeds (n = seeds); HM from the "
            "seed-averaged base and novel. Average: mean over datasets, HM of the averaged base and novel.",
            "",
        ]
        for dataset in names:
            body = []
            for method in order:
                r = table[method].get(dataset)
                if not r:
                    continue
                body.append(
                    [
                        method,
                        r["base_stat"].cell(),
                        r["novel_stat"].cell(),
                        f"{r['hm']:.2f}",
                        str(r["n"]),
                    ]
                )
                hm = Stat(r["hm"], None, r["n"], r["seeds"])
                out.csv_rows += [
                    csv_row("base2novel", method, dataset, shots, column, stat)
                    for column, stat in (
                        ("base", r["base_stat"]),
                        ("novel", r["novel_stat"]),
                        ("hm", hm),
                    )
                ]
            if (
                references
            ):  # under the Average and each dataset the runs cover, where a source prints one
                body += _published_rows(dataset)
            if dataset == "Average":
                incomplete = [
                    m for m in order if len(table[m]["Average"]["datasets"]) < len(names) - 1
                ]
                if incomplete:
                    body.append(
                        [
                            f"(averages of {', '.join(incomplete)} cover fewer datasets)",
                            "",
                            "",
                            "",
                            "",
                        ]
                    )
            out.markdown += [
                f"**{dataset}**",
                "",
                *markdown_table(["method", "base", "novel", "HM", "n"], body),
                varying_settings(
                    rows_of(
                        runs, "base2novel", shots, order, None if dataset == "Average" else dataset
                    )
                ),
                "",
            ]
        out.summary[f"base2novel/{shots}"] = {
            m: {d: {k: v for k, v in r.items() if not k.endswith("_stat")} for d, r in t.items()}
            for m, t in table.items()
        }
    return out


def _published_rows(dataset: str) -> list[list[str]]:
    """The papers' published base-to-novel rows for a dataset (or the Average), in italics."""
    return [
        [
            f"*{name} (published)*",
            f"{ref['base']:.2f}" if ref.get("base") else "",
            f"{ref['novel']:.2f}" if ref.get("novel") else "",
            f"{ref['hm']:.2f}",
            ref["source"],
        ]
        for name, ref in published_rows("base2novel", dataset).items()
    ]


TRANSFER_TITLES = {
    "cross_dataset": "Cross-dataset transfer",
    "domain_generalization": "Domain generalization",
}


def render_transfer(runs: list[dict], protocol: str, methods: list[str] | None = None) -> Section:
    """Cross-dataset or domain generalization tables, one per source and shots: source, targets, average."""
    out = Section()
    for (source, shots), entry in sorted(transfer_table(runs, protocol).items()):
        targets = entry["targets"]
        order = ordered(entry["methods"], methods)
        body = []
        for method in order:
            cols = entry["methods"][method]
            body.append(
                [
                    method,
                    *(cols[c].cell() for c in ["source", *targets, "average"]),
                    str(cols["source"].n),
                ]
            )
            out.csv_rows += [
                csv_row(protocol, method, source, shots, c, stat) for c, stat in cols.items()
            ]
        out.markdown += [
            f"## {TRANSFER_TITLES[protocol]}: source {source} ({shots} shots)",
            "",
            "Accuracy (%), mean ± std over seeds; average over the targets; n = seeds.",
            "",
            *markdown_table(["method", source, *map(short_name, targets), "average", "n"], body),
            varying_settings(rows_of(runs, protocol, shots, order, source)),
            "",
        ]
        out.summary[f"{protocol}/{source}/{shots}"] = {
            m: {c: vars(s) for c, s in cols.items()} for m, cols in entry["methods"].items()
        }
    return out


def render_fewshot(
    runs: list[dict], methods: list[str] | None = None, datasets: list[str] | None = None
) -> Section:
    """Few-shot tables: the Average, then each dataset; accuracy per K with its seeds."""
    out = Section()
    few = fewshot_table(runs)
    if not few:
        return out
    ks = sorted({k for m in few.values() for d in m.values() for k in d})
    names = ["Average", *ordered({d for m in few.values() for d in m if d != "Average"}, datasets)]
    out.markdown += [
        "## Few-shot classification",
        "",
        "Accuracy (%) per number of shots K, mean ± std over seeds.",
        "",
    ]
    for dataset in names:
        body = []
        shown = [m for m in ordered(few, methods) if few[m].get(dataset)]
        for method in shown:
            per_k = few[method][dataset]
            body.append([method, *(per_k[k].cell(with_n=True) if k in per_k else "—" for k in ks)])
            out.csv_rows += [
                csv_row("fewshot", method, dataset, k, "accuracy", stat)
                for k, stat in per_k.items()
            ]
        table_runs = {
            m: [
                r
                for r in runs
                if r["protocol"] == "fewshot"
                and r["method"] == m
                and (dataset == "Average" or r["dataset"] == dataset)
            ]
            for m in shown
        }
        out.markdown += [
            f"**{dataset}**",
            "",
            *markdown_table(["method", *(f"K={k} (n)" for k in ks)], body),
            varying_settings(table_runs),
            "",
        ]
    out.summary["fewshot"] = {
        m: {d: {k: vars(s) for k, s in per_k.items()} for d, per_k in t.items()}
        for m, t in few.items()
    }
    return out


def render_cost(runs: list[dict], methods: list[str] | None = None) -> Section:
    """One cost table per protocol and shots: a row per method, averaged over its datasets and seeds."""
    groups: dict = defaultdict(list)
    for r in runs:
        groups[(r["protocol"], int(r.get("shots", -1)))].append(r)
    out = Section()
    for (protocol, shots), group in sorted(groups.items()):
        by_method = defaultdict(list)
        for r in group:
            by_method[r["method"]].append(r)
        body = [
            [m, *cost_cells(cost_of(by_method[m])), str(len(by_method[m]))]
            for m in ordered(by_method, methods)
        ]
        out.markdown += [
            f"## Cost: {protocol} ({shots} shots)",
            "",
            COST_NOTE,
            "",
            *markdown_table(["method", *(name for _, name, _ in COST_COLUMNS), "runs"], body),
        ]
    return out


def render_absent_runs(run_set: RunSet) -> Section:
    """The failed and missing runs, listed (never averaged over)."""
    out = Section()
    if run_set.failed or run_set.missing:
        out.markdown += ["## Runs not in the tables", ""]
        for r in run_set.failed:
            out.markdown.append(f"- FAILED `{r['dir']}`: {r.get('error', 'no error recorded')}")
        for r in run_set.missing:
            out.markdown.append(
                f"- missing `{r['dir']}` ({r['protocol']}, {r['method']}, {r['dataset']}, "
                f"{r['shots']} shots, seed {r['seed']})"
            )
        out.markdown.append("")
    out.summary["failed"] = [{k: r.get(k) for k in ("dir", "error")} for r in run_set.failed]
    out.summary["missing"] = run_set.missing
    return out


def _settings_text(spec: dict) -> str:
    """A variant's own settings as text (its method and preset are columns of their own)."""
    return (
        ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("method", "preset"))
        or "(defaults)"
    )


def render_study(study: str, per_shots: dict, runs: list[dict], meta: dict | None) -> Section:
    """A study's tables per shots: each variant's base / novel / HM over the study's datasets, the
    paper's HM beside it where the sweep file gives one, and its cost."""
    meta = meta or {}
    variants = meta.get("variants") or {}
    reference, paper = meta.get("reference"), meta.get("paper") or {}
    md, rows = [], []
    for shots, table in sorted(per_shots.items()):
        order = [v for v in variants if v in table] + sorted(set(table) - set(variants))
        datasets = sorted({d for v in table.values() for d in v["datasets"]})
        md += [f"## Study: {meta.get('name', study)} ({shots} shots)", ""]
        if meta.get("description"):
            md += [str(meta["description"]).strip(), ""]
        splits = sorted(
            {r.get("eval_split", "test") for r in runs if int(r.get("shots", -1)) == shots}
        )
        if splits != ["test"]:
            md += [
                f"**Scored on the {' and '.join(splits)} split{'s' if len(splits) > 1 else ''}** "
                "(eval_split), not only the test split.",
                "",
            ]
        md += [
            f"Base / novel accuracy (%) and HM averaged over the study's datasets ({', '.join(map(short_name, datasets))}):"
            " mean ± std over seeds (std of the per-seed averages), n = seeds; HM of the averaged base and novel."
            + (f" ◆ marks the reference variant ({reference})." if reference else "")
            + (" paper: the paper's HM for the variant." if paper else "")
            + " "
            + COST_NOTE,
            "",
        ]
        body = []
        for v in order:
            avg = table[v]
            mine = [r for r in runs if r["variant"] == v and int(r.get("shots", -1)) == shots]
            method = mine[0]["method"] if mine else variants.get(v, {}).get("method", "?")
            name = f"◆ **{v}**" if v == reference else v
            cells = [
                name,
                method,
                _settings_text(variants.get(v, {})),
                avg["base_stat"].cell(),
                avg["novel_stat"].cell(),
                f"{avg['hm']:.2f}",
                str(avg["n"]),
            ]
            if paper:
                cells.append(
                    f"{paper[v]['hm']:.2f}" if v in paper and paper[v].get("hm") is not None else ""
                )
            body.append(cells + cost_cells(cost_of(mine)))
            hm = Stat(avg["hm"], None, avg["n"], avg["seeds"])
            rows += [
                csv_row(f"study:{study}", v, "Average", shots, column, stat)
                for column, stat in (
                    ("base", avg["base_stat"]),
                    ("novel", avg["novel_stat"]),
                    ("hm", hm),
                )
            ]
        header = [
            "variant",
            "method",
            "settings",
            "base",
            "novel",
            "HM",
            "n",
            *(["paper"] if paper else []),
            *(name for _, name, _ in COST_COLUMNS),
        ]
        md += markdown_table(header, body)
        short = [v for v in order if len(table[v]["datasets"]) < len(datasets)]
        if short:
            md += [f"(the averages of {', '.join(short)} cover fewer datasets)", ""]
    summary = {
        f"study/{study}": {
            shots: {
                v: {k: val for k, val in row.items() if not k.endswith("_stat")}
                for v, row in table.items()
            }
            for shots, table in per_shots.items()
        }
    }
    return Section(md, rows, summary)
