"""What a sweep is and what it does with each run: the grid's runs, the run-API call each one is, and
the plan (skip, rerun or start) read from the run folders. Writes nothing.

The sweep's `Run` and everything that turns one into a run-API call live here, in one module, so that
the one typed run object can take their place in one edit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..adapters import FILE_NAME as ADAPTER_FILE
from ..errors import ClipadaptError
from ..registry import method_argument
from ..run import changed_settings


@dataclass(frozen=True)
class Run:
    """One run of the grid: what `clipadapt train` gets, and the folder it writes."""

    protocol: str
    method: str
    dataset: str
    shots: int
    seed: int
    preset: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    adapters_from: str | None = (
        None  # a protocol whose run folder holds this run's trained source adapter
    )
    study: str | None = (
        None  # a study's runs: the study (its sweep file's name) and the variant (its row)
    )
    variant: str | None = None

    @property
    def dir(self) -> str:
        """The run's folder, relative to the sweep's output folder."""
        middle = f"{self.study}/{self.variant}" if self.variant else self.method
        return f"{self.protocol}/{middle}/{self.dataset}/shots{self.shots}/seed{self.seed}"

    def record(self) -> dict:
        """What sweep-<name>.json and failed.json say about the run."""
        extra = {"study": self.study, "variant": self.variant} if self.variant else {}
        return {
            "protocol": self.protocol,
            "method": self.method,
            "dataset": self.dataset,
            "shots": self.shots,
            "seed": self.seed,
            **extra,
            "dir": self.dir,
        }


@dataclass
class Sweep:
    """A validated sweep file."""

    path: str
    protocol: str
    runs: list[Run]
    backbone: str
    pretrained: str
    data_root: str | None
    device: str = "cpu"
    settings: dict = field(default_factory=dict)
    study: dict | None = (
        None  # a study's variants, reference, plot and paper numbers (None: a plain grid)
    )
    feature_cache: Any = (
        True  # every run's feature cache: True the default folder, a folder, False none
    )

    def run_call(
        self, run: Run, out: str, data_root: str, device: str | None = None, overwrite: bool = False
    ) -> tuple[str, dict]:
        """The run API function a run is (`train`, or `transfer` for one that reuses an adapter) and its arguments;
        `overwrite` reruns a finished one in place."""
        common = {
            "data_root": data_root,
            "out": os.path.join(out, run.dir),
            "device": device or self.device,
            "feature_cache": self.feature_cache,
        }
        if run.adapters_from:
            source_dir = os.path.join(out, run.dir.replace(run.protocol, run.adapters_from, 1))
            return "transfer", {
                "checkpoint": os.path.join(source_dir, ADAPTER_FILE),
                "protocol": run.protocol,
                **common,
            }
        kwargs = {
            "method": method_argument(run.method),  # a method loaded by class path: that path
            "dataset": run.dataset,
            **common,
            "protocol": run.protocol,
            "shots": run.shots,
            "seed": run.seed,
            "backbone": self.backbone,
            "pretrained": self.pretrained,
        }
        if run.preset:
            kwargs["config"] = run.preset
        if run.variant:
            kwargs.update(study=run.study, variant=run.variant)
        if overwrite:
            kwargs["overwrite"] = True
        return "train", {**kwargs, **dict(run.overrides)}


# The flag of each run-API argument on the command line (`--dry-run` prints a run as its command).
FLAGS = {
    "checkpoint": "--checkpoint",
    "method": "--method",
    "dataset": "--dataset",
    "data_root": "--data-root",
    "shots": "--shots",
    "seed": "--seed",
    "protocol": "--protocol",
    "backbone": "--backbone",
    "pretrained": "--pretrained",
    "device": "--device",
    "out": "--out",
    "config": "--config",
    "study": "--study",
    "variant": "--variant",
}
# Arguments of the run API that a sweep sets itself: a setting of that name would collide with them.
RUN_ARGUMENTS = {*FLAGS, "feature_cache", "overwrite", "progress"}


def command_line(kind: str, kwargs: dict) -> list[str]:
    """The `clipadapt` command that does what run.<kind>(**kwargs) does."""
    argv = [kind]
    for key, value in kwargs.items():
        if key in FLAGS:
            argv += [FLAGS[key], str(value)]
        elif key == "overwrite":
            argv += ["--overwrite"] if value else []
        elif key == "feature_cache":
            argv += (
                []
                if value is True
                else ["--no-feature-cache"]
                if value is False
                else ["--feature-cache", str(value)]
            )
        else:
            argv.append(f"{key}={json.dumps(value)}")  # JSON values read back as YAML
    return argv


@dataclass(frozen=True)
class PlannedRun:
    """What a sweep does with one run: skip it (finished, same settings), rerun it (finished or interrupted
    with other settings; only with --rerun-changed) or start it (new, interrupted or failed), and why."""

    run: Run
    action: str  # "skip" | "rerun" | "start"
    why: str


def _describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(
        f"{key} {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"
        for key, old, new in changes
    )


def plan_sweep(
    sweep: Sweep, out: str, data_root: str, device: str | None = None
) -> list[PlannedRun]:
    """Each run's action, from its folder: a finished or interrupted run's config.yaml is compared with the one
    the run API would record now (`clipadapt.run.changed_settings`); writes nothing."""
    plan = []
    for run in sweep.runs:
        run_dir = os.path.join(out, run.dir)
        finished = os.path.exists(os.path.join(run_dir, "metrics.json"))
        interrupted = not finished and os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
        changes = None
        if (
            finished or interrupted
        ) and not run.adapters_from:  # a transfer run records no settings of its own
            kind, kwargs = sweep.run_call(run, out, data_root, device)
            changes = changed_settings(**kwargs)
        if changes:
            plan.append(PlannedRun(run, "rerun", f"settings changed: {_describe_changes(changes)}"))
        elif finished:
            plan.append(
                PlannedRun(
                    run,
                    "skip",
                    "finished with the same settings" if changes is not None else "finished",
                )
            )
        elif interrupted:
            plan.append(PlannedRun(run, "start", "interrupted: resumes from its last checkpoint"))
        elif os.path.exists(os.path.join(run_dir, "failed.json")):
            plan.append(PlannedRun(run, "start", "failed before: tried again"))
        else:
            plan.append(PlannedRun(run, "start", "not run yet"))
    return plan


def check_changed(plan: list[PlannedRun], out: str) -> None:
    """Refuse, in one line, a sweep whose finished runs were made with other settings (without --rerun-changed)."""
    changed = [p for p in plan if p.action == "rerun"]
    if changed:
        more = (
            f" (and {len(changed) - 1} more run(s) with changed settings)"
            if len(changed) > 1
            else ""
        )
        raise ClipadaptError(
            f"'{os.path.join(out, changed[0].run.dir)}' was run with other settings "
            f"({changed[0].why.removeprefix('settings changed: ')}){more}; pass --rerun-changed "
            "to rerun them, or another --out to keep both"
        )
