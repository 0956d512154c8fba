"""Wall time of `clipadapt report` over a folder of 300 runs, in fresh processes, next to `import torch`.

300 base-to-novel runs (10 methods x 10 datasets x 3 seeds, generated metrics.json files). Each round
times, interleaved in fresh processes: `clipadapt report DIR` (tables, csv, json and the chart) and
`python -c "import torch"`, what the report would pay if it still loaded the training stack.

    python benchmarks/report_runs.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = [
    "zeroshot",
    "clip_adapter",
    "coop",
    "maple",
    "mmrl",
    "clip_lora",
    "mma",
    "mma_pp",
    "rmadapter",
    "rmma",
]
DATASETS = [
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
]
SEEDS = (1, 2, 3)


def write_runs(root: Path) -> int:
    """Generated base-to-novel run folders under `root`; returns how many."""
    rng = random.Random(0)
    count = 0
    for method in METHODS:
        for dataset in DATASETS:
            for seed in SEEDS:
                base, novel = rng.uniform(60, 95), rng.uniform(50, 90)
                folder = root / "base2novel" / method / dataset / "shots16" / f"seed{seed}"
                folder.mkdir(parents=True)
                metrics = {
                    "protocol": "base2novel",
                    "method": method,
                    "dataset": dataset,
                    "shots": 16,
                    "seed": seed,
                    "base": base,
                    "novel": novel,
                    "hm": 2 * base * novel / (base + novel),
                }
                (folder / "metrics.json").write_text(json.dumps(metrics))
                count += 1
    return count


def seconds(command: list[str]) -> float:
    """Wall time of one fresh process."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def modules_loaded(root: Path, out: Path) -> list[str]:
    """The heavy packages a report run imports."""
    code = (
        "import sys; from clipadapt.cli import main; main(['-q', 'report', sys.argv[1], '--out', sys.argv[2]]); "
        "print(' '.join(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split("\n")[-2].split()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "runs", Path(tmp) / "report"
        n = write_runs(root)
        report = [sys.executable, "-m", "clipadapt", "-q", "report", str(root), "--out", str(out)]
        torch_import = [sys.executable, "-c", "import torch"]
        times: dict[str, list[float]] = {"report": [], "import torch": []}
        for _ in range(args.rounds):
            times["report"].append(seconds(report))
            times["import torch"].append(seconds(torch_import))
        print(f"{n} runs, median of {args.rounds} interleaved rounds, fresh processes")
        for what, values in times.items():
            print(
                f"{what:<14} {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})"
            )
        ratio = statistics.median(times["report"]) / statistics.median(times["import torch"])
        print(f"report / import torch: {ratio:.2f}")
        print(f"heavy packages a report imports: {modules_loaded(root, out) or 'none'}")
        print(f"files written: {', '.join(sorted(p.name for p in out.iterdir()))}")
