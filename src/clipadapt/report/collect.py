"""Collecting runs: every run folder under a root read once (finished, failed, missing), with the
settings that define its row in the tables."""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

import yaml

from ..errors import ClipadaptError
from ..registry import NUMBER_NEUTRAL_KEYS, PROTOCOL_ALIASES

MANIFESTS = "sweep-*.json"  # one per sweep file run into the folder


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


def run_key(run: dict) -> tuple:
    """(protocol, method, dataset, shots): the group a run's seeds are averaged in."""
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
            groups[run_key(run)].add(int(run["seed"]))
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
