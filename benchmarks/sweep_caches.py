"""Wall time of a base-to-novel sweep on the synthetic world with the frozen-work caches on and off.

Every run of the sweep file (methods x datasets x seeds) is run twice in this process, once with the
caches on and once off, alternating which goes first, so that the machine's load falls on both alike.
"On" shares one fresh feature-cache folder across all its runs: the first image-frozen run of a
dataset writes the test images' features, every later seed and image-frozen method reads them.
Each run's time is split, from its metrics.json, into:

    data      training batches waited for (train_data_seconds: decoding and transforms)
    train     the rest of the training epochs (train_seconds - train_data_seconds)
    eval      test evaluation, its image loading included (eval_seconds)
    other     the rest of the run's wall time (datasets, model and text setup, checkpoints, validation)

and the cache column says what the run's test evaluation did: `write` N (features computed and stored),
`read` N (test splits whose image features came from the cache, no image decoded), `-` (not applicable).

    python benchmarks/sweep_caches.py                                   # the whole sweep: hours on 2 cores
    python benchmarks/sweep_caches.py --methods zeroshot coop clip_adapter mma_attn mma \\
        --datasets syn_shapes syn_colours --seeds 1 2 3 epochs=2        # the reduced run of the README

`--on` / `--off` are each variant's run-API settings, `key=value` as on `clipadapt train` plus
`feature_cache=DIR|false` (default: the feature cache on in a fresh folder and the prefix caches at
their default budget / `feature_cache=false prefix_cache_mb=0`); key=value settings after the options
apply to every run of both variants.

Runs go seed by seed (seed 1 of every dataset and method first), so a stopped benchmark has whole seeds.
Each finished run is appended to OUT/rows.jsonl; started again with the same --out, the benchmark skips
the runs logged there and reruns an interrupted one from scratch. Two processes may share one --out with
disjoint --datasets (each with --threads 1 on 2 cores); `--summary` prints the tables of everything logged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from clipadapt.data import build_dataset
from clipadapt.runconfig import parse_overrides
from clipadapt.sweep import execute_in_process, read_sweep

SWEEP = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "clipadapt"
    / "sweeps"
    / "synthetic_base2novel.yaml"
)
PARTS = ("data", "train", "eval", "other")


def split_times(metrics: dict, wall: float) -> dict[str, float]:
    """The run's wall time split into data loading, training, evaluation and the rest."""
    train, data = metrics.get("train_seconds", 0.0), metrics.get("train_data_seconds", 0.0)
    evaluation = metrics.get("eval_seconds", 0.0)
    return {
        "data": data,
        "train": train - data,
        "eval": evaluation,
        "other": wall - train - evaluation,
        "wall": wall,
    }


def cache_note(metrics: dict) -> str:
    """What the run's evaluation did with the feature cache."""
    reads, writes = metrics.get("feature_cache_reads", 0), metrics.get("feature_cache_writes", 0)
    return " ".join(f"{word} {n}" for word, n in (("read", reads), ("write", writes)) if n) or "-"


def summarize(rows: list[dict]) -> None:
    """Print the on/off totals of the logged runs and whether every pair scored the same."""
    pairs = {}
    for row in rows:
        pairs.setdefault((row["method"], row["dataset"], row["seed"]), {})[row["variant"]] = row
    complete = [pair for pair in pairs.values() if len(pair) == 2]
    print(
        f"\n{len(complete)} runs with both variants logged"
        f" ({len(pairs) - len(complete)} with one only, left out)"
    )
    print(
        "\n| variant | runs | data s | train s | eval s | other s | wall s |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    totals = {}
    for variant in ("on", "off"):
        totals[variant] = {k: sum(pair[variant][k] for pair in complete) for k in (*PARTS, "wall")}
        print(
            f"| {variant} | {len(complete)} | "
            + " | ".join(f"{totals[variant][k]:.1f}" for k in (*PARTS, "wall"))
            + " |"
        )
    ratio = {
        k: totals["on"][k] / totals["off"][k] for k in (*PARTS, "wall") if totals["off"][k] > 0
    }
    print(
        "| on/off | | "
        + " | ".join(f"{ratio[k]:.2f}" if k in ratio else "-" for k in (*PARTS, "wall"))
        + " |"
    )
    same = all(pair["on"]["hm"] == pair["off"]["hm"] for pair in complete)
    print(f"\nsame HM with caches on and off in every run: {same}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sweep", default=str(SWEEP), help="sweep file (default: the demo's synthetic base2novel)"
    )
    parser.add_argument("--methods", nargs="*", help="subset of the sweep's methods")
    parser.add_argument("--datasets", nargs="*", help="subset of the sweep's datasets")
    parser.add_argument(
        "--seeds", nargs="*", type=int, default=[1, 2, 3], help="seeds (default 1 2 3)"
    )
    parser.add_argument(
        "--out", help="folder of the runs and their log (default: a temporary folder)"
    )
    parser.add_argument(
        "--data-root", help="synthetic world folder (default: OUT/data, rendered on first use)"
    )
    parser.add_argument("--on", nargs="*", default=None, help="run settings with the caches on")
    parser.add_argument(
        "--off",
        nargs="*",
        default=["feature_cache=false", "prefix_cache_mb=0"],
        help="run settings with them off",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads of this process (default: torch's)"
    )
    parser.add_argument(
        "--summary", action="store_true", help="print the tables of OUT/rows.jsonl and stop"
    )
    parser.add_argument("--json", help="also write the per-run numbers here")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings for every run (e.g. epochs=2)"
    )
    args = parser.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="sweep-caches-"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "rows.jsonl"
    logged = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if args.summary:
        summarize(logged)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    done = {(r["variant"], r["method"], r["dataset"], r["seed"]) for r in logged}
    data_root = os.path.abspath(args.data_root or out / "data")
    variant_settings = {
        "on": parse_overrides(
            args.on if args.on is not None else [f"feature_cache={out / 'feature-cache'}"]
        ),
        "off": parse_overrides(args.off),
    }
    sweep = read_sweep(args.sweep, parse_overrides(args.overrides))
    chosen = {
        (r.method, r.dataset, r.shots): r
        for r in sweep.runs
        if (not args.methods or r.method in args.methods)
        and (not args.datasets or r.dataset in args.datasets)
    }
    runs = [dataclasses.replace(r, seed=seed) for r in chosen.values() for seed in args.seeds]
    # Seeds outermost: seed 1 of every dataset writes the test features that seeds 2 and 3 read, and a
    # stopped benchmark holds whole seeds.
    runs.sort(key=lambda r: (r.seed, r.dataset, r.method))
    for dataset in sorted({r.dataset for r in runs}):  # rendered before any timing
        build_dataset(dataset, data_root, -1, 1, "all")
    print(
        f"{len(runs)} runs x 2 variants ({len(done)} logged already); out {out}; load {os.getloadavg()}",
        file=sys.stderr,
    )
    rows = []
    for i, run in enumerate(runs):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        for variant in order:
            if (variant, run.method, run.dataset, run.seed) in done:
                continue
            kind, kwargs = sweep.run_call(run, str(out / variant), data_root)
            kwargs = {
                **kwargs,
                **variant_settings[variant],
                "overwrite": True,
            }  # overwrite: an interrupted try
            start = time.perf_counter()
            error = execute_in_process(kind, kwargs, run.record(), str(out / variant / run.dir))
            wall = time.perf_counter() - start
            if error:
                print(f"FAILED {variant} {run.dir}: {error}", file=sys.stderr)
                return 1
            metrics = json.loads((out / variant / run.dir / "metrics.json").read_text())
            row = {
                "variant": variant,
                "method": run.method,
                "dataset": run.dataset,
                "seed": run.seed,
                "cache": cache_note(metrics),
                "hm": metrics.get("hm"),
                **{k: round(v, 2) for k, v in split_times(metrics, wall).items()},
            }
            rows.append(row)
            with log.open(
                "a"
            ) as f:  # one short line per write: safe for two processes sharing the log
                f.write(json.dumps(row) + "\n")
            print(
                f"{variant:3s} {run.dataset:12s} {run.method:12s} seed {run.seed}  "
                + "  ".join(f"{k} {row[k]:6.2f}" for k in (*PARTS, "wall"))
                + f"  hm {row['hm']}  cache {row['cache']}",
                flush=True,
            )
    summarize([json.loads(line) for line in log.read_text().splitlines()])
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
