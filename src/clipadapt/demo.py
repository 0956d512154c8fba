"""`make demo`: the base-to-novel benchmark on the synthetic world, every method, no download."""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .checks import check_writable
from .errors import ClipadaptError
from .fileio import write_text
from .report import base2novel_summary, write_report
from .runconfig import find_preset, load_preset
from .sweep import read_sweep, run_sweep
from .synthetic_weights import SHIPPED_WEIGHTS

DEMO_SWEEP = (
    Path(__file__).resolve().parent / "sweeps" / "synthetic_base2novel.yaml"
)  # package data
log = logging.getLogger(__name__)


def _demo_methods() -> list[str]:
    with open(DEMO_SWEEP) as f:
        return list(yaml.safe_load(f)["methods"])


DEMO_METHODS = _demo_methods()


def synthetic_preset(method: str) -> tuple[str, dict]:
    """The shipped preset a method runs with on the synthetic world (presets/synthetic/), its name and settings."""
    name = find_preset(
        method, "base2novel", "synthetic"
    )  # a missing preset is an error, never a fallback
    return name, load_preset(name, method)


def machine() -> str:
    """A line naming the machine the demo ran on."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def demo_sweep(out: str, quick: bool) -> str:
    """The sweep file the demo runs (the package's sweeps/synthetic_base2novel.yaml), cut down with --quick."""
    with open(DEMO_SWEEP) as f:
        data = yaml.safe_load(f)
    if quick:
        data.update(
            datasets=data["datasets"][:2],
            methods=["zeroshot", "mma"],
            shots=[4],
            overrides={"epochs": 1},
        )
    if not SHIPPED_WEIGHTS.exists():
        # Until the pretrained tiny CLIP ships, show the pipeline working and say plainly what it is.
        data["pretrained"] = "none"
        log.warning(
            "the pretrained synthetic CLIP is not in this checkout (src/clipadapt/weights/); the demo runs "
            "with RANDOM weights, so its accuracies are near chance and show only that the pipeline works. "
            "`clipadapt pretrain-synthetic --install` makes the weights (51 minutes on 2 cores)."
        )
    path = os.path.join(out, "demo-sweep.yaml")
    write_text(
        path,
        f"# written by `clipadapt demo` from {DEMO_SWEEP}\n"
        + yaml.safe_dump(data, sort_keys=False),
    )
    return path


@dataclass
class DemoResult:
    """The demo's summary table and where its report is, and the runs that failed (folder: error)."""

    text: str
    failed: dict[str, str]


def run_demo(out: str, quick: bool = False, overwrite: bool = False) -> DemoResult:
    """Base-to-novel for every method on the synthetic datasets through `sweep` and `report`: the table."""
    check_writable(out, "dir")
    if os.path.exists(os.path.join(out, "report.md")) and not overwrite:
        raise ClipadaptError(
            f"'{out}' already holds a finished demo (report.md); pass --overwrite or another --out"
        )
    try:  # the chart is drawn last: find out now, not after every run, that it cannot be
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ClipadaptError(
            f"the demo's chart needs matplotlib, a dependency of clipadapt that this environment "
            f"lacks ({err}); reinstall with `pip install clipadapt` or `pip install matplotlib`"
        ) from None
    os.makedirs(out, exist_ok=True)
    sweep = read_sweep(demo_sweep(out, quick))
    runs = os.path.join(out, "runs")
    start = time.time()
    result = run_sweep(
        sweep, runs, data_root=os.path.join(out, "data")
    )  # finished runs of an earlier demo are kept
    elapsed = time.time() - start
    shots, seeds = sweep.runs[0].shots, sorted({r.seed for r in sweep.runs})
    weights = (
        "shipped pretrained weights"
        if sweep.pretrained == "shipped"
        else "RANDOM weights: numbers near chance"
    )
    header = (
        f"# clipadapt demo: base-to-novel on the synthetic world\n\n"
        f"{shots} shots, seed {', '.join(map(str, seeds))}, backbone: the tiny CLIP `--backbone synthetic` "
        f"({weights}). Made by `clipadapt sweep {os.path.join(out, 'demo-sweep.yaml')}` and `clipadapt report` "
        f"in {elapsed / 60:.1f} minutes on {machine()}. Settings per method: the shipped presets clipadapt/presets/synthetic/.\n\n"
    )
    methods = list(dict.fromkeys(r.method for r in sweep.runs))
    datasets = list(dict.fromkeys(r.dataset for r in sweep.runs))
    write_report(runs, out, methods, datasets, header=header)
    text = (
        base2novel_summary(runs, methods, datasets)
        + f"\n\nreport: {os.path.join(out, 'report.md')} (tables), {os.path.join(out, 'report.csv')}, "
        f"{os.path.join(out, f'base2novel_{shots}shots.png')} (chart); {elapsed / 60:.1f} minutes"
    )
    return DemoResult(text, result.failed)
