"""`make demo`: the base-to-novel benchmark on the synthetic world, every method, no download."""

from __future__ import annotations

import os
import platform
import time

import torch
from tqdm import tqdm

from .data.synthetic import BENCHMARK
from .errors import ClipadaptError
from .fileio import write_json
from .methods import METHODS
from .protocols import RunSpec, run_protocol
from .report import write_report
from .runconfig import find_preset, load_preset, resolve
from .synthetic_weights import SHIPPED_WEIGHTS

DEMO_METHODS = ["zeroshot", "clip_adapter", "coop", "mma", "mma_pp", "rmadapter", "rmma", "mma_attn"]


def synthetic_preset(method: str) -> tuple[str, dict]:
    """The shipped preset a method runs with on the synthetic world (presets/synthetic/), its name and settings."""
    name = find_preset(method, "base2novel", "synthetic")  # a missing preset is an error, never a fallback
    return name, load_preset(name)


def machine() -> str:
    """A line naming the machine the demo ran on."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def run_demo(out: str, quick: bool = False, overwrite: bool = False, seed: int = 1, shots: int = 16) -> int:
    """Run base-to-novel for every method on the synthetic datasets; write and print the report."""
    datasets = BENCHMARK[:2] if quick else BENCHMARK
    methods = ["zeroshot", "mma"] if quick else [m for m in DEMO_METHODS if m in METHODS]
    if os.path.exists(os.path.join(out, "report.md")) and not overwrite:
        raise ClipadaptError(f"'{out}' already holds a finished demo (report.md); pass --overwrite or another --out")
    try:  # the chart is drawn last: find out now, not after every run, that it cannot be
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ClipadaptError(f"the demo's chart needs matplotlib, a dependency of clipadapt that this environment "
                             f"lacks ({err}); reinstall with `pip install clipadapt` or `pip install matplotlib`") from None
    pretrained = "shipped"
    if not SHIPPED_WEIGHTS.exists():
        # Until the pretrained tiny CLIP ships, show the pipeline working and say plainly what it is.
        pretrained = "none"
        print("NOTE: the pretrained synthetic CLIP is not in this checkout (src/clipadapt/weights/); the demo runs "
              "with RANDOM weights, so its accuracies are near chance and show only that the pipeline works. "
              "`clipadapt pretrain-synthetic --install` makes the weights (51 minutes on 2 cores).")
    data_root = os.path.join(out, "data")
    jobs = [(d, m) for d in datasets for m in methods]
    start = time.time()
    run_dirs = []
    bar = tqdm(jobs, desc="demo", unit="run")
    for dataset, method in bar:
        bar.set_postfix_str(f"{dataset} / {method}")
        run_dir = os.path.join(out, "runs", dataset, method)
        run_dirs.append(run_dir)
        metrics_path = os.path.join(run_dir, "metrics.json")
        if os.path.exists(metrics_path) and not overwrite:
            continue  # finished in an earlier, interrupted demo
        preset_name, preset = synthetic_preset(method)
        overrides = {"epochs": 1} if quick and method != "zeroshot" else {}
        method_cfg, train_cfg, resolved = resolve(method, preset, overrides)
        train_cfg.seed = seed
        spec = RunSpec(method, dataset, data_root, 4 if quick else shots, seed, "synthetic", pretrained, run_dir,
                       progress=False)
        metrics = run_protocol("base2novel", spec, method_cfg.to_dict(), train_cfg)
        write_json(metrics_path, {**metrics, "preset": preset_name, "settings": resolved})
    elapsed = time.time() - start
    header = (f"# clipadapt demo: base-to-novel on the synthetic world\n\n"
              f"{'16' if not quick else '4'} shots, seed {seed}, backbone: the tiny CLIP `--backbone synthetic` "
              f"({'shipped pretrained weights' if pretrained == 'shipped' else 'RANDOM weights: numbers near chance'}). "
              f"Accuracies in percent on the test split of the base and of the novel classes; HM is their harmonic "
              f"mean; Average is the mean over datasets (HM of the mean base and novel). Settings per method: "
              f"the shipped presets clipadapt/presets/synthetic/. Produced by `make demo` in {elapsed / 60:.1f} "
              f"minutes on {machine()}.\n\n")
    text = write_report(run_dirs, datasets, methods, out, header)
    print(text)
    print(f"\nreport: {os.path.join(out, 'report.md')} (table), {os.path.join(out, 'report.png')} (chart); "
          f"{elapsed / 60:.1f} minutes")
    return 0
