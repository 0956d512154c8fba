"""Tables: the runs aggregated over seeds per protocol (mean, sample std, HM as the papers compute it),
the rows runs belong to, the studies' rows and curves, and the cost each run recorded."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean, stdev

from ..scoring import harmonic_mean
from .collect import METHOD_OF_ROW, ROW_SETTINGS, UNKNOWN, RunSet, run_key


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


def _by_seed(runs: list[dict]) -> dict[tuple, dict[int, dict]]:
    """{(protocol, method, dataset, shots): {seed: metrics}}; a repeated seed keeps the first folder found."""
    grouped: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for run in sorted(runs, key=lambda r: r["dir"]):
        grouped[run_key(run)].setdefault(int(run["seed"]), run)
    return grouped


def ordered(names, preferred: list[str] | None = None) -> list[str]:
    """The names, those given in `preferred` first (in that order), then the rest sorted."""
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
