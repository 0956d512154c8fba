"""The papers' tables from a folder of finished runs: mean ± std over seeds, HM as the papers compute it.

Every run folder holds `metrics.json` (finished), `failed.json` (recorded by `clipadapt sweep`) or
neither (not run yet, or interrupted). A sweep writes `sweep-<name>.json` at its root listing every run it
expects; without it, a run group's expected seeds are all the seeds seen under its protocol. Missing
and failed runs are listed in the report, never averaged over.

How the numbers are combined (CoOp's, MaPLe's and MMA's `parse_test_res.py` and tables):
- per dataset: mean and sample standard deviation (n - 1) over the seeds present; HM is the harmonic
  mean of the seed-averaged base and novel accuracies (not the mean of per-seed HMs);
- the Average row: the mean over datasets of those seed means, and its HM from the averaged base and
  novel; its std is over the per-seed averages of the seeds present for every dataset.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean, stdev

from .errors import ClipadaptError
from .fileio import atomic_path, write_json, write_text
from .references import published_rows
from .registry import NUMBER_NEUTRAL_KEYS, PROTOCOL_ALIASES
from .scoring import harmonic_mean

MANIFESTS = "sweep-*.json"  # one per sweep file run into the folder


@dataclass
class Stat:
    """Mean and sample std of one number over seeds."""

    mean: float
    std: float | None
    n: int
    seeds: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, values: dict[int, float]) -> Stat:
        """Statistics of {seed: value}."""
        xs = [values[s] for s in sorted(values)]
        return cls(mean(xs), stdev(xs) if len(xs) > 1 else None, len(xs), sorted(values))

    def cell(self, with_n: bool = False) -> str:
        """'70.12 ± 0.34' (the std omitted for one seed)."""
        text = f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")
        return text + (f" ({self.n})" if with_n else "")


@dataclass
class RunSet:
    """Finished runs, failed runs and expected-but-absent runs found under a folder."""

    finished: list[dict]
    failed: list[dict]
    missing: list[dict]
    studies: dict = field(
        default_factory=dict
    )  # study id -> its variants, reference, plot, paper numbers


# ---- what defines a row -------------------------------------------------------------------------
ROW_SETTINGS = "_row_settings"  # where find_runs keeps a run's row-defining settings
# config.yaml keys that do not change a run's numbers (or are its row's own key, or its seed): every
# other key (method options, training settings, data settings, backbone and weights) defines the row.
NOT_ROW_DEFINING = {
    *NUMBER_NEUTRAL_KEYS,
    "seed",
    "study",
    "variant",
    "protocol",
    "method",
    "dataset",
    "shots",
}
# What metrics.json records of the same (runs written before config.yaml existed have only these).
FROM_METRICS = (
    "backbone",
    "pretrained",
    "backbone_identity",
    "base_ratio",
    "train_noise_std",
    "eval_noise_std",
    "eval_split",
)
UNKNOWN = "?"  # a setting an older run did not record
# Between rows of different methods only these are compared: each method trains with its own preset, so
# its learning rate or epochs differing from another method's is the comparison, not a defect in it.
COMPARED_ACROSS_METHODS = FROM_METRICS
METHOD_OF_ROW = (
    "_method"  # where find_runs keeps the method a (possibly renamed) row was trained with
)


def run_settings(folder: str, metrics: dict) -> dict[str, str]:
    """The settings that define a run's row, as text: its config.yaml's, and the backbone identity and
    data settings of its metrics.json; a key neither records is absent (unknown)."""
    config: dict = {}
    path = os.path.join(folder, "config.yaml")
    if os.path.isfile(path):
        import yaml

        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, yaml.YAMLError):
            config = {}
    settings = {k: v for k, v in config.items() if k not in NOT_ROW_DEFINING}
    for key in FROM_METRICS:
        if key in metrics and metrics[key] is not None:
            settings.setdefault(key, metrics[key])
    return {k: str(v) for k, v in settings.items()}


def _setting(run: dict, key: str) -> str:
    return run.get(ROW_SETTINGS, {}).get(key, UNKNOWN)


def split_by_settings(runs: list[dict]) -> list[dict]:
    """Runs renamed so that seeds of one row made with different settings are rows of their own.

    Within each (protocol, row name, shots), the keys whose value differs between the seeds of some dataset
    name every run of that row ("coop (lr=0.05)"); settings that differ only between datasets (a preset per
    dataset) do not split it. A key an older run did not record counts as the value '?'."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in runs:
        groups[(r["protocol"], r["method"], int(r.get("shots", -1)))][r["dataset"]].append(r)
    out = []
    for per_dataset in groups.values():
        splitting = set()
        for seeds in per_dataset.values():
            keys = set().union(*(r.get(ROW_SETTINGS, {}) for r in seeds))
            splitting |= {k for k in keys if len({_setting(r, k) for r in seeds}) > 1}
        for seeds in per_dataset.values():
            for r in seeds:
                if splitting:
                    named = ", ".join(f"{k}={_setting(r, k)}" for k in sorted(splitting))
                    name = r["method"]
                    name = f"{name[:-1]}, {named})" if name.endswith(")") else f"{name} ({named})"
                    r = {**r, "method": name}
                out.append(r)
    return out


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


def _rows_of(
    runs: list[dict], protocol: str, shots: int, names, dataset: str | None = None
) -> dict:
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


def _key(run: dict) -> tuple:
    protocol = PROTOCOL_ALIASES.get(run["protocol"], run["protocol"])
    return protocol, run["method"], run["dataset"], int(run.get("shots", -1))


def find_runs(root: str) -> RunSet:
    """Every run under `root`: finished ones (metrics.json), failed ones (failed.json), and missing ones."""
    if not os.path.isdir(root):
        raise ClipadaptError(f"report folder '{root}' does not exist")
    finished, failed, seen_dirs = [], [], set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        if "metrics.json" in files:
            with open(os.path.join(folder, "metrics.json")) as f:
                m = json.load(f)
            if "protocol" in m and "method" in m and "dataset" in m:
                finished.append(
                    {
                        **m,
                        "protocol": PROTOCOL_ALIASES.get(m["protocol"], m["protocol"]),
                        "dir": rel,
                        ROW_SETTINGS: run_settings(folder, m),
                        METHOD_OF_ROW: m["method"],
                    }
                )
                seen_dirs.add(rel)
        elif "failed.json" in files:
            with open(os.path.join(folder, "failed.json")) as f:
                failed.append({**json.load(f), "dir": rel})
            seen_dirs.add(rel)
    if not finished and not failed:
        raise ClipadaptError(
            f"no runs under '{root}': no metrics.json or failed.json in it or its sub-folders"
        )
    missing, studies = [], {}
    manifests = sorted(glob.glob(os.path.join(root, MANIFESTS)))
    if manifests:
        for manifest in manifests:
            with open(manifest) as f:
                listed = json.load(f)
            if listed.get("study"):
                studies[listed["study"]["study"]] = listed["study"]
            for run in listed["runs"]:
                if run["dir"] not in seen_dirs and run not in missing:
                    missing.append(run)
    else:  # expected seeds: every seed seen under the protocol
        seeds = defaultdict(set)
        groups = defaultdict(set)
        for run in finished + [r for r in failed if "protocol" in r]:
            seeds[run["protocol"]].add(int(run["seed"]))
            groups[_key(run)].add(int(run["seed"]))
        for key, present in sorted(groups.items()):
            for seed in sorted(seeds[key[0]] - present):
                missing.append(
                    {
                        "protocol": key[0],
                        "method": key[1],
                        "dataset": key[2],
                        "shots": key[3],
                        "seed": seed,
                        "dir": "?",
                    }
                )
    return RunSet(finished, failed, missing, studies)


def _by_seed(runs: list[dict]) -> dict[tuple, dict[int, dict]]:
    """{(protocol, method, dataset, shots): {seed: metrics}}; a repeated seed keeps the first folder found."""
    grouped: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for run in sorted(runs, key=lambda r: r["dir"]):
        grouped[_key(run)].setdefault(int(run["seed"]), run)
    return grouped


def _order(names, preferred: list[str] | None = None) -> list[str]:
    names = set(names)
    first = [n for n in preferred or [] if n in names]
    return first + sorted(names - set(first))


# ---- aggregation per protocol ------------------------------------------------------------------
def base2novel_table(runs: list[dict]) -> dict:
    """{shots: {method: {dataset | 'Average': {base, novel, hm (float), base_stat, novel_stat, n}}}}."""
    out: dict = defaultdict(dict)
    grouped = _by_seed([r for r in runs if r["protocol"] == "base2novel"])
    per_method: dict = defaultdict(dict)
    for (_, method, dataset, shots), seeds in grouped.items():
        per_method[(shots, method)][dataset] = seeds
    for (shots, method), datasets in per_method.items():
        rows = {}
        for dataset, seeds in datasets.items():
            b = Stat.of({s: r["base"] for s, r in seeds.items()})
            n = Stat.of({s: r["novel"] for s, r in seeds.items()})
            rows[dataset] = {
                "base": b.mean,
                "novel": n.mean,
                "hm": harmonic_mean(b.mean, n.mean),
                "base_stat": b,
                "novel_stat": n,
                "n": b.n,
                "seeds": b.seeds,
            }
        base = mean(rows[d]["base"] for d in rows)
        novel = mean(rows[d]["novel"] for d in rows)
        common = set.intersection(*(set(seeds) for seeds in datasets.values()))
        per_seed_b = {s: mean(datasets[d][s]["base"] for d in datasets) for s in common}
        per_seed_n = {s: mean(datasets[d][s]["novel"] for d in datasets) for s in common}
        b_std = Stat.of(per_seed_b).std if common else None
        n_std = Stat.of(per_seed_n).std if common else None
        rows["Average"] = {
            "base": base,
            "novel": novel,
            "hm": harmonic_mean(base, novel),
            "base_stat": Stat(base, b_std, len(common), sorted(common)),
            "novel_stat": Stat(novel, n_std, len(common), sorted(common)),
            "n": len(common),
            "seeds": sorted(common),
            "datasets": sorted(datasets),
        }
        out[shots][method] = rows
    return dict(out)


def transfer_table(runs: list[dict], protocol: str) -> dict:
    """{(source, shots): {'targets': [...], 'methods': {method: {column: Stat}}}} for cross_dataset or DG."""
    out: dict = {}
    for (_, method, source, shots), seeds in _by_seed(
        [r for r in runs if r["protocol"] == protocol]
    ).items():
        first = next(iter(seeds.values()))
        targets = list(first.get("targets") or [k for k in first if k not in _NOT_TARGETS])
        entry = out.setdefault((source, shots), {"targets": targets, "methods": {}})
        columns = {"source": Stat.of({s: r["source"] for s, r in seeds.items()})}
        for t in targets:
            columns[t] = Stat.of({s: r[t] for s, r in seeds.items() if t in r})
        columns["average"] = Stat.of({s: mean(r[t] for t in targets) for s, r in seeds.items()})
        entry["methods"][method] = columns
    return out


_NOT_TARGETS = {
    "source",
    "target_average",
    "targets",
    "trainable_params",
    "train_seconds",
    "train_ms_per_image",
    "train_step_ms_per_image",
    "train_epoch_ms_per_image",
    "total_seconds",
    "protocol",
    "method",
    "dataset",
    "shots",
    "seed",
    "backbone",
    "pretrained",
    "backbone_identity",
    "settings",
    "dir",
    "checkpoint",
    "scored",
    ROW_SETTINGS,
    METHOD_OF_ROW,
}


def fewshot_table(runs: list[dict]) -> dict:
    """{method: {dataset | 'Average': {shots: Stat}}}; Average over the datasets a method has at that K."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for (_, method, dataset, shots), seeds in _by_seed(
        [r for r in runs if r["protocol"] == "fewshot"]
    ).items():
        out[method][dataset][shots] = Stat.of({s: r["accuracy"] for s, r in seeds.items()})
    for method, datasets in out.items():
        ks = sorted({k for per_k in datasets.values() for k in per_k})
        avg = {}
        for k in ks:
            having = [d for d in datasets if k in datasets[d]]
            common = set.intersection(*(set(datasets[d][k].seeds) for d in having))
            value = mean(datasets[d][k].mean for d in having)
            per_seed = {s: mean(_seed_value(runs, method, d, k, s) for d in having) for s in common}
            avg[k] = Stat(
                value, Stat.of(per_seed).std if common else None, len(common), sorted(common)
            )
        datasets["Average"] = avg
    return {m: dict(d) for m, d in out.items()}


def _seed_value(runs, method, dataset, shots, seed) -> float:
    for r in runs:
        if (r["protocol"], r["method"], r["dataset"], int(r.get("shots", -1)), int(r["seed"])) == (
            "fewshot",
            method,
            dataset,
            shots,
            seed,
        ):
            return r["accuracy"]
    raise KeyError((method, dataset, shots, seed))


# ---- rendering ---------------------------------------------------------------------------------
def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _short(name: str) -> str:
    return name.replace("syn_", "")


# ---- cost beside accuracy ----------------------------------------------------------------------
# What each run records about its cost (protocols.run_protocol), and how the report names it.
COST_COLUMNS = (
    ("trainable_params", "params", "{:,.0f}"),
    (
        "train_step_ms_per_image",
        "step ms/img",
        "{:.2f}",
    ),  # optimizer steps only: forward, loss, backward, update
    (
        "train_epoch_ms_per_image",
        "epoch ms/img",
        "{:.2f}",
    ),  # whole epochs: data waits and the cache pass too
    ("train_seconds", "train s/run", "{:.1f}"),  # the sum of those epochs over the run
    ("total_seconds", "run s", "{:.1f}"),  # the whole run: reading data, training, evaluating
    (
        "peak_memory_mb",
        "peak MB",
        "{:.0f}",
    ),  # CUDA: allocator peak of the run; CPU: the process's resident peak
    (
        "eval_images_per_s",
        "eval img/s",
        "{:.0f}",
    ),  # test images read, transformed and classified per second
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
# Runs recorded before steps and epochs were timed apart: their one figure timed whole epochs.
_LEGACY_COST = {"train_epoch_ms_per_image": "train_ms_per_image"}


def cost_of(runs: list[dict]) -> dict[str, float]:
    """Mean of each recorded cost over `runs` (a cost no run recorded is left out)."""
    out = {}
    for key, _, _ in COST_COLUMNS:
        recorded = [r.get(key, r.get(_LEGACY_COST.get(key, key))) for r in runs]
        values = [
            float(v) for v in recorded if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if values:
            out[key] = mean(values)
    return out


def cost_cells(cost: dict[str, float]) -> list[str]:
    """The cost columns of one row ('—' where nothing was recorded)."""
    return [fmt.format(cost[key]) if key in cost else "—" for key, _, fmt in COST_COLUMNS]


def _cost_section(runs: list[dict], methods: list[str] | None) -> list[str]:
    """One cost table per protocol and shots: a row per method, averaged over its datasets and seeds."""
    groups: dict = defaultdict(list)
    for r in runs:
        groups[(r["protocol"], int(r.get("shots", -1)))].append(r)
    md = []
    for (protocol, shots), group in sorted(groups.items()):
        by_method = defaultdict(list)
        for r in group:
            by_method[r["method"]].append(r)
        body = [
            [m, *cost_cells(cost_of(by_method[m])), str(len(by_method[m]))]
            for m in _order(by_method, methods)
        ]
        md += [
            f"## Cost: {protocol} ({shots} shots)",
            "",
            COST_NOTE,
            "",
            *_markdown_table(["method", *(name for _, name, _ in COST_COLUMNS), "runs"], body),
        ]
    return md


# ---- studies -----------------------------------------------------------------------------------
def _settings_text(spec: dict) -> str:
    return (
        ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("method", "preset"))
        or "(defaults)"
    )


def study_tables(runs: list[dict], studies: dict) -> dict:
    """{study: {shots: {variant: base2novel Average row}}}: each variant's base / novel / HM over the study's datasets."""
    out: dict = {}
    by_study = defaultdict(list)
    for r in runs:
        by_study[r["study"]].append({**r, "method": r["variant"], "_method": r["method"]})
    for study, group in by_study.items():
        out[study] = {
            shots: {v: rows["Average"] for v, rows in table.items()}
            for shots, table in base2novel_table(group).items()
        }
    return out


def _study_section(
    study: str, per_shots: dict, runs: list[dict], meta: dict | None
) -> tuple[list[str], list[list]]:
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
            f"Base / novel accuracy (%) and HM averaged over the study's datasets ({', '.join(map(_short, datasets))}):"
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
            for column in ("base", "novel"):
                stat = avg[f"{column}_stat"]
                rows.append(
                    [
                        f"study:{study}",
                        v,
                        "Average",
                        shots,
                        column,
                        round(stat.mean, 4),
                        "" if stat.std is None else round(stat.std, 4),
                        stat.n,
                        " ".join(map(str, stat.seeds)),
                    ]
                )
            rows.append(
                [
                    f"study:{study}",
                    v,
                    "Average",
                    shots,
                    "hm",
                    round(avg["hm"], 4),
                    "",
                    avg["n"],
                    " ".join(map(str, avg["seeds"])),
                ]
            )
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
        md += _markdown_table(header, body)
        short = [v for v in order if len(table[v]["datasets"]) < len(datasets)]
        if short:
            md += [f"(the averages of {', '.join(short)} cover fewer datasets)", ""]
    return md, rows


def _plot_value(key: str, value) -> float:
    """A setting's value on a plot's x axis: B:N ratios as B/N."""
    if key == "base_ratio":
        b, n = str(value).split(":")
        return int(b) / int(n)
    return float(value)


def study_curves(study: str, per_shots: dict, meta: dict) -> dict:
    """{(key, shots): {line label: [(x, HM), ...]}}: for each plotted setting, one line per group of variants
    that differ only in it (same method, same other settings)."""
    variants = meta.get("variants") or {}
    values = meta.get("plotted_values") or {}
    plot_keys = list(meta.get("plot") or [])
    curves: dict = {}
    for key in plot_keys:
        for shots, table in per_shots.items():
            lines: dict = defaultdict(list)
            for v, spec in variants.items():
                value = (values.get(v) or {}).get(key, spec.get(key))
                if v not in table or value is None:
                    continue
                rest = {
                    "method": spec["method"],
                    **{k: (values.get(v) or {}).get(k) for k in plot_keys if k != key},
                    **{
                        k: val
                        for k, val in spec.items()
                        if k not in plot_keys and k not in ("method", "preset")
                    },
                }
                label = ", ".join(
                    f"{k}={val}" if k != "method" else str(val) for k, val in rest.items()
                )
                lines[label].append((_plot_value(key, value), table[v]["hm"]))
            lines = {k: sorted(pts) for k, pts in lines.items() if len(pts) >= 2}
            if lines:
                curves[(key, shots)] = lines
    return curves


def _row_name(run: dict) -> str:
    """The method's name, plus the data settings that differ from the standard protocol."""
    extra = []
    if run.get("base_ratio", "1:1") != "1:1":
        extra.append(f"base:new {run['base_ratio']}")
    for key, word in (("train_noise_std", "train noise σ"), ("eval_noise_std", "test noise σ")):
        if run.get(key):
            extra.append(f"{word} {run[key]}")
    if run.get("eval_split", "test") != "test":  # never averaged with test-split runs
        extra.append(f"scored on {run['eval_split']}")
    return run["method"] + (f" ({', '.join(extra)})" if extra else "")


def table_rows(run_set: RunSet) -> list[dict]:
    """The finished runs outside studies, each named by the row it belongs to in the protocol tables."""
    # A study's runs are in its own tables; a run off the standard data (another base:new ratio, noisy
    # images) or trained with other settings gets a row of its own, named after what differs, rather than
    # being averaged with the others.
    return split_by_settings(
        [{**r, "method": _row_name(r)} for r in run_set.finished if not r.get("variant")]
    )


def render(
    run_set: RunSet,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    references: bool = False,
) -> tuple[str, list[list], dict]:
    """Markdown text, CSV rows and a JSON-able summary of every protocol present."""
    runs = table_rows(run_set)
    study_runs = [r for r in run_set.finished if r.get("variant")]
    md, rows, summary = (
        [],
        [["protocol", "method", "dataset", "shots", "column", "mean", "std", "n_seeds", "seeds"]],
        {},
    )

    def add_csv(protocol, method, dataset, shots, column, stat: Stat):
        rows.append(
            [
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
        )

    b2n = base2novel_table(runs)
    for shots, table in sorted(b2n.items()):
        order = _order(table, methods)
        names = [
            "Average",
            *_order({d for m in table.values() for d in m if d != "Average"}, datasets),
        ]
        md += [
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
                if r:
                    body.append(
                        [
                            method,
                            r["base_stat"].cell(),
                            r["novel_stat"].cell(),
                            f"{r['hm']:.2f}",
                            str(r["n"]),
                        ]
                    )
                    add_csv("base2novel", method, dataset, shots, "base", r["base_stat"])
                    add_csv("base2novel", method, dataset, shots, "novel", r["novel_stat"])
                    rows.append(
                        [
                            "base2novel",
                            method,
                            dataset,
                            shots,
                            "hm",
                            round(r["hm"], 4),
                            "",
                            r["n"],
                            " ".join(map(str, r["seeds"])),
                        ]
                    )
            if (
                references
            ):  # under the Average and under each dataset the runs cover, where a source prints one
                for name, ref in published_rows("base2novel", dataset).items():
                    body.append(
                        [
                            f"*{name} (published)*",
                            f"{ref['base']:.2f}" if ref.get("base") else "",
                            f"{ref['novel']:.2f}" if ref.get("novel") else "",
                            f"{ref['hm']:.2f}",
                            ref["source"],
                        ]
                    )
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
            md += [
                f"**{dataset}**",
                "",
                *_markdown_table(["method", "base", "novel", "HM", "n"], body),
                varying_settings(
                    _rows_of(
                        runs, "base2novel", shots, order, None if dataset == "Average" else dataset
                    )
                ),
                "",
            ]
        summary[f"base2novel/{shots}"] = {
            m: {d: {k: v for k, v in r.items() if not k.endswith("_stat")} for d, r in t.items()}
            for m, t in table.items()
        }

    for protocol, title in (
        ("cross_dataset", "Cross-dataset transfer"),
        ("domain_generalization", "Domain generalization"),
    ):
        for (source, shots), entry in sorted(transfer_table(runs, protocol).items()):
            targets = entry["targets"]
            md += [
                f"## {title}: source {source} ({shots} shots)",
                "",
                "Accuracy (%), mean ± std over seeds; average over the targets; n = seeds.",
                "",
            ]
            body = []
            for method in _order(entry["methods"], methods):
                cols = entry["methods"][method]
                body.append(
                    [
                        method,
                        *(cols[c].cell() for c in ["source", *targets, "average"]),
                        str(cols["source"].n),
                    ]
                )
                for c, stat in cols.items():
                    add_csv(protocol, method, source, shots, c, stat)
            md += _markdown_table(["method", source, *map(_short, targets), "average", "n"], body)
            md += [
                varying_settings(
                    _rows_of(runs, protocol, shots, _order(entry["methods"], methods), source)
                ),
                "",
            ]
            summary[f"{protocol}/{source}/{shots}"] = {
                m: {c: vars(s) for c, s in cols.items()} for m, cols in entry["methods"].items()
            }

    few = fewshot_table(runs)
    if few:
        ks = sorted({k for m in few.values() for d in m.values() for k in d})
        names = [
            "Average",
            *_order({d for m in few.values() for d in m if d != "Average"}, datasets),
        ]
        md += [
            "## Few-shot classification",
            "",
            "Accuracy (%) per number of shots K, mean ± std over seeds.",
            "",
        ]
        for dataset in names:
            body = []
            for method in _order(few, methods):
                per_k = few[method].get(dataset, {})
                if per_k:
                    body.append(
                        [method, *(per_k[k].cell(with_n=True) if k in per_k else "—" for k in ks)]
                    )
                    for k, stat in per_k.items():
                        add_csv("fewshot", method, dataset, k, "accuracy", stat)
            md += [
                f"**{dataset}**",
                "",
                *_markdown_table(["method", *(f"K={k} (n)" for k in ks)], body),
            ]
            shown = [m for m in _order(few, methods) if few[m].get(dataset)]
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
            md += [varying_settings(table_runs), ""]
        summary["fewshot"] = {
            m: {d: {k: vars(s) for k, s in per_k.items()} for d, per_k in t.items()}
            for m, t in few.items()
        }

    for study, per_shots in sorted(study_tables(study_runs, run_set.studies).items()):
        mine = [r for r in study_runs if r["study"] == study]
        text, study_rows = _study_section(study, per_shots, mine, run_set.studies.get(study))
        md += text
        rows += study_rows
        summary[f"study/{study}"] = {
            shots: {
                v: {k: val for k, val in row.items() if not k.endswith("_stat")}
                for v, row in table.items()
            }
            for shots, table in per_shots.items()
        }
    if runs:
        md += _cost_section(runs, methods)

    if run_set.failed or run_set.missing:
        md += ["## Runs not in the tables", ""]
        for r in run_set.failed:
            md.append(f"- FAILED `{r['dir']}`: {r.get('error', 'no error recorded')}")
        for r in run_set.missing:
            md.append(
                f"- missing `{r['dir']}` ({r['protocol']}, {r['method']}, {r['dataset']}, "
                f"{r['shots']} shots, seed {r['seed']})"
            )
        md.append("")
    summary["failed"] = [{k: r.get(k) for k in ("dir", "error")} for r in run_set.failed]
    summary["missing"] = run_set.missing
    return "\n".join(md), rows, summary


def _plots(
    runs: list[dict], out_dir: str, methods: list[str] | None, studies: dict | None = None
) -> list[str]:
    """base vs novel per method (base-to-novel averages), K-shot curves and the studies' HM curves; returns the
    files written."""
    try:
        # The object API draws without pyplot, so no backend is chosen for the caller's process.
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
        for method in _order(table, methods):
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
            for method in _order(few, methods):
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
            ax.set_title(_short(dataset), fontsize=9)
            ax.set_xlabel("shots per class")
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        axes.flat[0].set_ylabel("accuracy (%)")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, os.path.join(out_dir, "fewshot.png")))
    return written


def _save(fig, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


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
    plots = _plots(run_set.finished, out_dir, methods, run_set.studies)
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
        names = _order({d for m in table.values() for d in m if d != "Average"}, datasets)
        width = max(
            14, *(len(m) + 2 for m in table)
        )  # a row split by settings is named "coop (lr=0.05)"
        lines += [
            f"HM per dataset, and the average over datasets ({shots} shots):",
            f"{'method':<{width}}"
            + "".join(f"{_short(d)[:9]:>10}" for d in names)
            + f"{'avg base':>10}{'avg novel':>10}{'avg HM':>9}",
        ]
        for method in _order(table, methods):
            rows = table[method]
            cells = "".join(f"{rows[d]['hm']:>10.2f}" if d in rows else f"{'-':>10}" for d in names)
            avg = rows["Average"]
            lines.append(
                f"{method:<{width}}{cells}{avg['base']:>10.2f}{avg['novel']:>10.2f}{avg['hm']:>9.2f}"
            )
    return "\n".join(lines)
