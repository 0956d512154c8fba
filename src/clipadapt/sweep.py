"""Grids of runs: methods × datasets × seeds × shots under one protocol, one folder per run.

A sweep file (YAML) names the grid; every run is one call of the run API (`clipadapt.run.train`, the
function behind `clipadapt train`) with those settings, in OUT/<protocol>/<method>/<dataset>/shots<K>/seed<S>/. A finished run (metrics.json) is skipped when its
config.yaml records the settings it would get now; one recorded with other settings stops the sweep
before anything is written, unless `rerun_changed` (`--rerun-changed`) reruns it; the results it
reruns over wait in the run's .replaced/ until the rerun finishes (a failed rerun loses nothing). An
interrupted one resumes from its checkpoint, a failing one is recorded in its folder (failed.json,
with the error) and the others go on. OUT/sweep-<file name>.json lists every run the sweep expects, so that
`clipadapt report OUT` can name the ones that are missing. Cross-dataset and domain
generalization share their source adapters: a sweep with `adapters_from: cross_dataset` evaluates
the adapters the cross-dataset sweep trained in the same OUT (`clipadapt.run.transfer`), training nothing.

The paper and study sweeps ship inside the package (clipadapt/sweeps/, `clipadapt sweep --list`), so
`clipadapt sweep base2novel` works from a wheel install; a checkout's configs/sweeps/ points there.

A study (configs/sweeps/studies/) lists `variants` instead of `methods`: each is a method and the
settings that make one row of the paper's table; its runs go to
OUT/<protocol>/<study>/<variant>/<dataset>/shots<K>/seed<S>/ and the manifest carries the study's
variants, reference, plotted settings and paper numbers for `clipadapt report`.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .adapters import FILE_NAME as ADAPTER_FILE
from .errors import ClipadaptError
from .fileio import write_json

PACKAGE_PRESETS = Path(__file__).resolve().parent / "presets"
PACKAGE_SWEEPS = (
    Path(__file__).resolve().parent / "sweeps"
)  # the paper and study sweeps (package data)
LAUNCHERS = ("local", "slurm", "submitit-local")
KEYS = {
    "name": "a name for the sweep (free text)",
    "description": "what the sweep reproduces (free text)",
    "protocol": "base2novel | fewshot | cross_dataset | domain_generalization (dg)",
    "methods": "list of method names",
    "datasets": "list of dataset names (for cross_dataset / domain_generalization: the sources)",
    "seeds": "list of seeds (default [1, 2, 3])",
    "shots": "list of shots per class (default [16])",
    "backbone": "open_clip model name or 'synthetic' (default synthetic)",
    "pretrained": "weights tag or file (default: shipped for synthetic, openai otherwise)",
    "data_root": "folder of the datasets (the --data-root option overrides it)",
    "device": "torch device of every run (default cpu)",
    "presets": "{method: preset file, or {dataset: file, default: file}}",
    "overrides": "{setting: value} for every run",
    "method_overrides": "{method: {setting: value}}",
    "dataset_overrides": "{method: {dataset: {setting: value}}} (an official per-dataset table)",
    "adapters_from": "cross_dataset | domain_generalization: evaluate the source adapters that protocol's sweep "
    "trained in the same --out, instead of training again",
    "variants": "a study: {variant name: {method: NAME, preset: FILE (optional), setting: value, ...}}, "
    "one report row each (instead of 'methods')",
    "reference": "a study: the variant the paper's method is (marked in the report)",
    "plot": "a study: settings to plot HM against (e.g. [base_ratio] or [latent_dim, alpha, lambda_sep])",
    "paper": "a study: the paper's numbers, {variant: {base: x, novel: y, hm: z}}, shown beside ours",
}
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")  # a folder name
# Settings of the data, not of training: a zero-shot run keeps them (they change what it is tested on).
DATA_SETTINGS = ("base_ratio", "train_noise_std", "eval_noise_std", "eval_split")


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
            "method": run.method,
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


def _as_list(data: dict, key: str, default=None) -> list:
    value = data.get(key, default)
    if value is None:
        raise ClipadaptError(f"sweep file: '{key}' is required ({KEYS[key]})")
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _int_list(path: str, data: dict, key: str, default: list[int]) -> list[int]:
    """A list of whole numbers (seeds, shots); anything else is one line naming the file, key and value."""
    values = _as_list(data, key, default)
    out = []
    for value in values:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClipadaptError(
                f"sweep file '{path}': '{key}' must be a list of whole numbers, got {value!r} "
                f"(e.g. {key}: {default})"
            )
        out.append(value)
    return out


def _mapping(path: str, data: dict, key: str, what: str) -> dict:
    """A sweep file's mapping section ({} when absent); another type is one line naming the file and key."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClipadaptError(f"sweep file '{path}': '{key}' maps {what}; got {value!r}")
    return value


def locate_preset_file(name: str, sweep_dir: str) -> str:
    """The file of a preset a sweep names: beside the sweep file, else among the package's presets."""
    for folder in (sweep_dir, PACKAGE_PRESETS, PACKAGE_PRESETS / "synthetic"):
        path = Path(folder) / os.path.expanduser(name)
        if path.is_file():
            return str(path.resolve())
    raise ClipadaptError(
        f"sweep file: preset '{name}' not found beside the sweep file or in {PACKAGE_PRESETS}"
    )


def shipped_sweeps() -> dict[str, Path]:
    """The sweep files shipped in the package, by name ('base2novel', 'studies/rmma_ablation')."""
    files = sorted(PACKAGE_SWEEPS.glob("*.yaml")) + sorted(PACKAGE_SWEEPS.glob("studies/*.yaml"))
    return {str(f.relative_to(PACKAGE_SWEEPS).with_suffix("")): f for f in files}


def locate_sweep_file(name: str) -> str:
    """A sweep file by path, else a shipped sweep by name (with or without .yaml and studies/)."""
    if os.path.exists(os.path.expanduser(name)):
        return os.path.expanduser(name)
    shipped = shipped_sweeps()
    key = name.removesuffix(".yaml")
    for candidate in (key, f"studies/{key}"):
        if candidate in shipped:
            return str(shipped[candidate])
    close = difflib.get_close_matches(key, list(shipped), n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ClipadaptError(
        f"sweep file '{name}' does not exist and is not a shipped sweep{hint}; "
        "`clipadapt sweep --list` lists them"
    )


def describe_sweeps() -> list[tuple[str, str]]:
    """(name, one-line description) of every shipped sweep, for `clipadapt sweep --list`."""
    import yaml

    out = []
    for name, path in shipped_sweeps().items():
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        text = " ".join(str(data.get("name") or data.get("description") or "").split())
        out.append((name, text))
    return out


def read_sweep(path: str, extra_overrides: dict | None = None) -> Sweep:
    """Read and check a sweep file: unknown keys, protocols, methods, datasets and settings fail before any run."""
    from .data import known_datasets
    from .methods import METHODS
    from .protocols import TRANSFER_TARGETS
    from .registry import canonical_protocol
    from .runconfig import NO_PRESET, choose_preset, read_preset, read_yaml_mapping, resolve
    from .synthetic_weights import is_shipped

    data = read_yaml_mapping(path, "sweep file", f"keys ({', '.join(KEYS)})")
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ClipadaptError(
                f"sweep file '{path}': unknown key '{key}'{hint}; known keys: {', '.join(KEYS)}"
            )
    protocols = _as_list(data, "protocol")
    if len(protocols) != 1:
        raise ClipadaptError(f"sweep file '{path}': one protocol per sweep file, got {protocols}")
    protocol = canonical_protocol(str(protocols[0]))
    variants = _read_variants(path, data)
    if variants and "methods" in data:
        raise ClipadaptError(
            f"sweep file '{path}': a study lists 'variants' (each names its method), not 'methods'"
        )
    methods = (
        [str(m) for m in _as_list(data, "methods")]
        if not variants
        else list(dict.fromkeys(v["method"] for v in variants.values()))
    )
    for m in methods:
        if m not in METHODS:
            raise ClipadaptError(
                f"sweep file '{path}': unknown method '{m}'; known methods: {', '.join(METHODS)}"
            )
    datasets = [str(d) for d in _as_list(data, "datasets")]
    for d in datasets:
        if d not in known_datasets():
            raise ClipadaptError(
                f"sweep file '{path}': unknown dataset '{d}'; known datasets: "
                f"{', '.join(known_datasets())}"
            )
        if protocol in TRANSFER_TARGETS and d not in TRANSFER_TARGETS[protocol]:
            raise ClipadaptError(
                f"sweep file '{path}': '{d}' is not a {protocol} source; sources: "
                f"{', '.join(TRANSFER_TARGETS[protocol])}"
            )
    seeds = _int_list(path, data, "seeds", [1, 2, 3])
    shots = _int_list(path, data, "shots", [16])
    for key in ("backbone", "pretrained", "data_root", "device", "adapters_from"):
        if isinstance(data.get(key), (list, dict)):
            raise ClipadaptError(f"sweep file '{path}': '{key}' is one name, got {data[key]!r}")
    backbone = str(data.get("backbone", "synthetic"))
    pretrained = str(data.get("pretrained") or ("shipped" if is_shipped(backbone) else "openai"))
    presets = _mapping(path, data, "presets", "method names to preset files")
    method_overrides = _mapping(path, data, "method_overrides", "method names to {setting: value}")
    dataset_overrides = _mapping(
        path, data, "dataset_overrides", "method names to {dataset: {setting: value}}"
    )
    for name, section in (
        ("presets", presets),
        ("method_overrides", method_overrides),
        ("dataset_overrides", dataset_overrides),
    ):
        for m in [m for m in section if m not in METHODS]:  # a hybrid (a+b) is known too
            raise ClipadaptError(
                f"sweep file '{path}': '{name}' names unknown method '{m}'; known methods: "
                f"{', '.join(METHODS)}"
            )
    for m, section in method_overrides.items():
        if section is not None and not isinstance(section, dict):
            raise ClipadaptError(
                f"sweep file '{path}': method_overrides of '{m}' maps settings to values; "
                f"got {section!r}"
            )
    for m, preset in presets.items():
        if not isinstance(preset, (str, dict)):
            raise ClipadaptError(
                f"sweep file '{path}': the preset of '{m}' is a file name (or {{dataset: file}}); "
                f"got {preset!r}"
            )
    from .registry import dataset_names

    known_datasets = dataset_names()
    for method, tables in dataset_overrides.items():
        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise ClipadaptError(
                f"sweep file '{path}': dataset_overrides of '{method}' maps dataset names to "
                f"{{setting: value}}; got {tables!r}"
            )
        for d in sorted(
            set(tables) - set(known_datasets)
        ):  # a known dataset the sweep does not run: unused
            close = difflib.get_close_matches(str(d), known_datasets, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ClipadaptError(
                f"sweep file '{path}': dataset_overrides of '{method}' names '{d}', which is not a "
                f"dataset{hint}"
            )
    per_dataset = [t for tables in dataset_overrides.values() for t in tables.values()]
    overrides = {
        **_mapping(path, data, "overrides", "settings to values"),
        **(extra_overrides or {}),
    }
    for section in (
        overrides,
        *(v for v in method_overrides.values() if isinstance(v, dict)),
        *per_dataset,
        *variants.values(),
    ):
        for key in set(section) & RUN_ARGUMENTS - {"method"}:
            raise ClipadaptError(
                f"sweep file '{path}': '{key}' is not a setting; the sweep sets it for each run "
                "(its own key, or a sweep option)"
            )
    adapters_from = data.get("adapters_from")
    if adapters_from is not None:
        adapters_from = canonical_protocol(str(adapters_from))
        if (
            protocol not in TRANSFER_TARGETS
            or adapters_from not in TRANSFER_TARGETS
            or adapters_from == protocol
        ):
            raise ClipadaptError(
                f"sweep file '{path}': adapters_from reuses the source adapters of one transfer "
                "protocol (cross_dataset, domain_generalization) for the other"
            )
    sweep_dir = os.path.dirname(os.path.abspath(path))
    study_id = Path(path).stem
    runs, plotted = [], {}
    rows = (
        [(v["method"], name, v) for name, v in variants.items()]
        if variants
        else [(m, None, {}) for m in methods]
    )
    for (method, variant, variant_settings), dataset in itertools.product(rows, datasets):
        variant_settings = dict(variant_settings)
        variant_settings.pop("method", None)
        preset = variant_settings.pop("preset", None) or presets.get(method)
        if isinstance(preset, dict):
            preset = preset.get(dataset, preset.get("default"))
        # As `train`: no preset named means the shipped one for the method, protocol and backbone
        # (named explicitly in the run's command); `none` means the method's own defaults.
        if adapters_from:
            preset, settings = None, {}
        elif preset is None:
            chosen, settings = choose_preset(None, method, protocol, backbone)
            preset = chosen.split(":", 1)[1]
        elif str(preset).lower() == NO_PRESET:
            preset, settings = NO_PRESET, {}
        else:
            preset = locate_preset_file(str(preset), sweep_dir)
            settings = read_preset(preset)
        # The command line's key=value wins over every section of the file (a smoke run's epochs=1).
        table = (dataset_overrides.get(method) or {}).get(dataset, {})
        merged = {
            **overrides,
            **(method_overrides.get(method) or {}),
            **table,
            **variant_settings,
            **(extra_overrides or {}),
        }
        if method == "zeroshot":  # nothing trains: training settings do not apply, and are dropped
            from .engine import TrainConfig

            merged = {
                k: v
                for k, v in merged.items()
                if k not in TrainConfig.field_names() or k in DATA_SETTINGS
            }
        try:
            resolved = resolve(method, settings, merged)[2]
            if variant:  # the plotted settings' values, the method's defaults included
                plotted.setdefault(variant, {k: resolved.get(k) for k in (data.get("plot") or [])})
        except ClipadaptError as err:
            what = f"variant '{variant}' (method '{method}')" if variant else f"method '{method}'"
            raise ClipadaptError(f"sweep file '{path}', {what}: {err}") from None
        for k, s in itertools.product(shots, seeds):
            runs.append(
                Run(
                    protocol,
                    method,
                    dataset,
                    k,
                    s,
                    preset,
                    tuple(sorted(merged.items())),
                    adapters_from,
                    study_id if variant else None,
                    variant,
                )
            )
    study = None
    if variants:
        study = {
            "study": study_id,
            "name": str(data.get("name") or study_id),
            "description": data.get("description"),
            "reference": data.get("reference"),
            "plot": list(data.get("plot") or []),
            "paper": data.get("paper") or {},
            "variants": variants,
            "plotted_values": plotted,
        }
    return Sweep(
        path,
        protocol,
        runs,
        backbone,
        pretrained,
        data.get("data_root"),
        str(data.get("device", "cpu")),
        data,
        study,
    )


def _read_variants(path: str, data: dict) -> dict[str, dict]:
    """A study's variants in file order, checked: names are folder names, each names a known method; the
    reference, the plotted settings and the paper's numbers name variants that exist."""
    from .methods import METHODS

    variants = data.get("variants")
    study_keys = [k for k in ("reference", "plot", "paper") if k in data]
    if variants is None:
        if study_keys:
            raise ClipadaptError(
                f"sweep file '{path}': '{study_keys[0]}' belongs to a study, which lists 'variants'"
            )
        return {}
    if not isinstance(variants, dict) or not variants:
        raise ClipadaptError(
            f"sweep file '{path}': 'variants' maps variant names to {{method: NAME, setting: value}}"
        )
    out = {}
    for name, spec in variants.items():
        name = str(name)
        if not VARIANT_NAME.match(name):
            raise ClipadaptError(
                f"sweep file '{path}': variant name '{name}' must be a folder name (letters, digits, "
                "and _ . + = -)"
            )
        if not isinstance(spec, dict) or "method" not in spec:
            raise ClipadaptError(
                f"sweep file '{path}': variant '{name}' needs 'method: NAME' and its settings"
            )
        if spec["method"] not in METHODS:
            raise ClipadaptError(
                f"sweep file '{path}': variant '{name}' names unknown method '{spec['method']}'; "
                f"known methods: {', '.join(METHODS)}"
            )
        out[name] = dict(spec)
    plot, paper = data.get("plot"), data.get("paper")
    if plot is not None and not (isinstance(plot, list) and all(isinstance(k, str) for k in plot)):
        raise ClipadaptError(
            f"sweep file '{path}': 'plot' is a list of setting names (e.g. plot: [base_ratio]); "
            f"got {plot!r}"
        )
    if paper is not None and not (
        isinstance(paper, dict) and all(isinstance(v, dict) for v in paper.values())
    ):
        raise ClipadaptError(
            f"sweep file '{path}': 'paper' maps variant names to {{base: x, novel: y, hm: z}}; "
            f"got {paper!r}"
        )
    check_variant_names(path, [data["reference"]] if data.get("reference") is not None else [], out)
    check_variant_names(path, list(data.get("paper") or {}), out)
    return out


def check_variant_names(where: str, names: list, variants: dict) -> None:
    """Every name must be one of the study's variants; otherwise one line listing them."""
    for name in names:
        if str(name) not in variants:
            close = difflib.get_close_matches(str(name), list(variants), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ClipadaptError(
                f"{where}: unknown variant '{name}'{hint}; variants: {', '.join(variants)}"
            )


def select_variants(sweep: Sweep, names: list[str]) -> Sweep:
    """The sweep restricted to some of its study's variants (`clipadapt sweep --variants a,b`)."""
    if not sweep.study:
        raise ClipadaptError(
            f"--variants: sweep file '{sweep.path}' is not a study (it has no 'variants')"
        )
    check_variant_names(f"--variants of '{sweep.path}'", names, sweep.study["variants"])
    sweep.runs = [r for r in sweep.runs if r.variant in names]
    return sweep


# ---- executing runs ----------------------------------------------------------------------------
def _record_failure(run_dir: str, record: dict, error: str, returncode: int | None) -> None:
    write_json(
        os.path.join(run_dir, "failed.json"), {**record, "error": error, "returncode": returncode}
    )


REPLACED_DIR = ".replaced"  # a rerun run's earlier results, kept until the rerun finishes (report skips dot folders)


def set_aside_results(run_dir: str) -> None:
    """Move a finished run's files into run_dir/.replaced before it is rerun over, so that a rerun that
    fails or is interrupted loses nothing; the next finished run of the folder removes them."""
    from .run import RUN_FILES
    from .run_logging import TB_DIR

    if not os.path.exists(os.path.join(run_dir, "metrics.json")):
        return  # nothing finished to keep: an interrupted run's files are replaced as --overwrite does
    kept = os.path.join(run_dir, REPLACED_DIR)
    shutil.rmtree(kept, ignore_errors=True)  # results older than the finished ones being set aside
    os.makedirs(kept)
    for name in (*RUN_FILES, TB_DIR):
        if os.path.exists(os.path.join(run_dir, name)):
            os.replace(os.path.join(run_dir, name), os.path.join(kept, name))


def execute_in_process(
    kind: str, kwargs: dict, record: dict, run_dir: str, child: bool = False
) -> str | None:
    """Run one run-API call (`train` or `transfer`) in this process; on failure record failed.json and
    return the error. In a sweep's child process (`child`) failed.json also gets the exit code the child
    ends with, as the command line's: 2 for an input error, 1 for a crash."""
    from . import run as run_api
    from .errors import one_line

    calls = {"train": run_api.train, "transfer": run_api.transfer}
    os.makedirs(run_dir, exist_ok=True)
    if kwargs.get("overwrite"):
        set_aside_results(run_dir)
    kept = os.path.join(run_dir, REPLACED_DIR)
    code = 2
    try:
        calls[kind](**kwargs)
        shutil.rmtree(
            kept, ignore_errors=True
        )  # the rerun finished: what it replaced is no longer needed
        return None
    except KeyboardInterrupt:
        raise
    except ClipadaptError as err:
        error = one_line(str(err)) or type(err).__name__
    except OSError as err:
        if (
            err.filename
        ):  # a path the run was given (a data folder, an output file): the user's to fix
            error = f"cannot use '{err.filename}': {err.strerror}"
        else:
            error, code = _crash(run_dir, err), 1
    except BaseException as err:  # noqa: BLE001 - a crashing run must not stop the sweep
        error, code = _crash(run_dir, err), 1
    if os.path.isdir(kept):
        error += f"; the results it was rerun over are kept in {kept}"
    _record_failure(run_dir, record, error, code if child else None)
    return error


def _crash(run_dir: str, err: BaseException) -> str:
    """Write the traceback of an unexpected error to run_dir/error.log; its one-line summary."""
    from .errors import one_line

    with open(os.path.join(run_dir, "error.log"), "w") as f:
        traceback.print_exc(file=f)
    return f"{type(err).__name__}: {one_line(str(err))} (traceback in error.log)"


def execute_subprocess(
    kind: str, kwargs: dict, record: dict, run_dir: str, env: dict
) -> str | None:
    """Run one run-API call in a child process (`python -m clipadapt.sweep`, its output in run.log); the
    child records a failure itself, the parent one that killed the child."""
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, "run.log")
    call = json.dumps({"kind": kind, "kwargs": kwargs, "record": record, "run_dir": run_dir})
    with open(log_path, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "clipadapt.sweep", call],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    if rc == 0:
        return None
    failed = os.path.join(run_dir, "failed.json")
    if os.path.exists(failed):
        with open(failed) as f:
            return json.load(f)["error"]
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
    error = (lines[-1] if lines else f"exit code {rc}") + " (full output in run.log)"
    _record_failure(run_dir, record, error, rc)
    return error


def worker_main(argv: list[str]) -> int:
    """A sweep's child process: one run-API call given as JSON; exit 0 when it finished, else 2 or 1 as failed.json says."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(message)s"
    )  # this process's own output: its run.log
    call = json.loads(argv[0])
    if (
        execute_in_process(
            call["kind"], call["kwargs"], call["record"], call["run_dir"], child=True
        )
        is None
    ):
        return 0
    with open(os.path.join(call["run_dir"], "failed.json")) as f:
        return json.load(f)["returncode"]


def visible_gpus(gpus: str | None) -> list[str]:
    """GPU ids to pin runs to: --gpus, else CUDA_VISIBLE_DEVICES, else every GPU torch sees."""
    if gpus:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class SweepResult:
    """How many runs were skipped, finished and failed, and the failures' errors."""

    total: int
    skipped: int
    finished: int
    failed: dict[str, str]


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
    from .run import changed_settings

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


def slurm_parameters(slurm: dict, jobs: int) -> dict:
    """submitit's parameters for the SLURM job array: time, GPUs, CPUs and partition per task, `jobs` at once."""
    params = {
        "timeout_min": int(slurm.get("time") or 60),
        "gpus_per_node": int(slurm.get("gpus", 1)),
        "cpus_per_task": int(slurm.get("cpus") or 8),
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": jobs,
    }
    if slurm.get("partition"):
        params["slurm_partition"] = slurm["partition"]
    return params


def _launcher_device(launcher: str, device: str, slurm: dict) -> str:
    """A SLURM task with GPUs runs on its GPU (submitit's task sees only its own)."""
    if launcher == "slurm" and device == "cpu" and int(slurm.get("gpus", 1)) > 0:
        return "cuda"
    return device


def check_launcher(launcher: str) -> None:
    """The launcher exists and can run here: slurm needs submitit and sbatch on PATH."""
    if launcher not in LAUNCHERS:
        raise ClipadaptError(f"unknown launcher '{launcher}'; known: {', '.join(LAUNCHERS)}")
    if launcher == "local":
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ClipadaptError(
            f"--launcher {launcher} needs submitit: pip install 'clipadapt[slurm]'"
        ) from None
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise ClipadaptError(
            "--launcher slurm: no SLURM here (no 'sbatch' on PATH); run it on the cluster's login "
            "node, or use --launcher local (--dry-run shows what would be submitted)"
        )


def dry_run_lines(
    sweep: Sweep,
    out: str,
    data_root: str | None = None,
    jobs: int = 1,
    device: str | None = None,
    launcher: str = "local",
    slurm: dict | None = None,
    rerun_changed: bool = False,
) -> list[str]:
    """What `clipadapt sweep --dry-run` prints: the command of each run it would start, with its action and why
    after a `#`, a `# skip` line for each run it leaves, and under --launcher slurm first the job array that
    would be submitted. The output is a shell script; nothing is written."""
    slurm = slurm or {}
    data_root = os.path.abspath(os.path.expanduser(data_root or sweep.data_root or "DATA"))
    device = _launcher_device(launcher, device or sweep.device, slurm)
    plan = plan_sweep(sweep, out, data_root, device)
    todo = [p for p in plan if p.action == "start" or (p.action == "rerun" and rerun_changed)]
    lines = []
    if launcher == "slurm":
        params = slurm_parameters(slurm, jobs)
        lines += [
            f"# slurm job array: {len(todo)} task(s), at most {jobs} at once (--jobs)",
            f"#   partition: {params.get('slurm_partition', '(the cluster default)')}",
            f"#   time: {params['timeout_min']} min per task",
            f"#   gpus per task: {params['gpus_per_node']}",
            f"#   cpus per task: {params['cpus_per_task']}",
        ]
    task = 0
    for p in plan:
        if p not in todo:
            needs = " (needs --rerun-changed)" if p.action == "rerun" else ""
            lines.append(f"# {p.action} {p.run.dir}: {p.why}{needs}")
            continue
        argv = command_line(
            *sweep.run_call(p.run, out, data_root, device, overwrite=p.action == "rerun")
        )
        where = f"task {task}, " if launcher == "slurm" else ""
        lines.append(" ".join(["clipadapt", *argv]) + f"  # {where}{p.action}: {p.why}")
        task += 1
    changed = sum(p.action == "rerun" for p in plan)
    if changed and not rerun_changed:
        lines.append(
            f"# {changed} run(s) with changed settings: the sweep refuses to start without --rerun-changed"
        )
    return lines


def run_sweep(
    sweep: Sweep,
    out: str,
    data_root: str | None = None,
    jobs: int = 1,
    device: str | None = None,
    gpus: str | None = None,
    launcher: str = "local",
    slurm: dict | None = None,
    progress: bool = True,
    rerun_changed: bool = False,
) -> SweepResult:
    """Run every unfinished run of the sweep; failures are recorded and do not stop the others. Every check
    (the launcher, finished runs made with other settings) comes before anything is written."""
    data_root = data_root or sweep.data_root
    if not data_root:
        raise ClipadaptError("give --data-root (the sweep file has no data_root)")
    data_root = os.path.abspath(os.path.expanduser(data_root))
    check_launcher(launcher)
    if jobs < 1:
        raise ClipadaptError(f"--jobs must be at least 1, got {jobs}")
    slurm = slurm or {}
    device = _launcher_device(launcher, device or sweep.device, slurm)
    plan = plan_sweep(sweep, out, data_root, device)
    if not rerun_changed:
        check_changed(plan, out)
    os.makedirs(out, exist_ok=True)
    manifest = {
        "sweep_file": os.path.abspath(sweep.path),
        "protocol": sweep.protocol,
        "runs": [r.record() for r in sweep.runs],
    }
    if sweep.study:
        manifest["study"] = sweep.study
    write_json(os.path.join(out, f"sweep-{Path(sweep.path).stem}.json"), manifest)
    todo = [p.run for p in plan if p.action != "skip"]
    rerun = {p.run.dir for p in plan if p.action == "rerun"}
    for run in todo:
        if os.path.exists(os.path.join(out, run.dir, "failed.json")):
            os.remove(os.path.join(out, run.dir, "failed.json"))  # tried again

    def call(run: Run, run_device: str) -> tuple[str, dict]:
        return sweep.run_call(run, out, data_root, run_device, overwrite=run.dir in rerun)

    for p in plan:
        if p.action == "rerun":  # --rerun-changed: say which, before their old results are replaced
            tqdm.write(f"rerun {p.run.dir}: {p.why}", file=sys.stderr)
    result = SweepResult(len(sweep.runs), len(sweep.runs) - len(todo), 0, {})
    bar = tqdm(
        total=len(sweep.runs),
        initial=result.skipped,
        desc="sweep",
        unit="run",
        disable=not progress,
    )

    def finish(run: Run, error: str | None) -> None:
        if error is None:
            result.finished += 1
        else:
            result.failed[run.dir] = error
            tqdm.write(f"FAILED {run.dir}: {error}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(done=result.finished + result.skipped, failed=len(result.failed))

    if launcher != "local":
        _run_submitit(call, todo, out, device, launcher, slurm, jobs, finish)
    elif jobs == 1:
        for run in todo:
            bar.set_postfix_str(run.dir)
            finish(
                run,
                execute_in_process(*call(run, device), run.record(), os.path.join(out, run.dir)),
            )
    else:
        _run_parallel(call, todo, out, device, jobs, gpus, finish)
    bar.close()
    return result


def _run_parallel(
    call, todo: list[Run], out: str, device: str, jobs: int, gpus: str | None, finish
) -> None:
    """N child processes at once; on CUDA each pinned to one GPU through CUDA_VISIBLE_DEVICES."""
    on_gpu = device.startswith("cuda")
    ids = visible_gpus(gpus) if on_gpu else []
    if on_gpu and not ids:
        raise ClipadaptError("device is cuda but no GPU is visible; pass --gpus or --device cpu")
    slots: queue.Queue = queue.Queue()
    for i in range(jobs):  # more jobs than GPUs: several runs share a GPU, spread evenly
        slots.put(ids[i % len(ids)] if ids else None)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))

    def work(run: Run) -> tuple[Run, str | None]:
        gpu = slots.get()
        try:
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
            run_device = device
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
                run_device = "cuda:0"  # the one GPU the child sees
            kind, kwargs = call(run, run_device)
            return run, execute_subprocess(
                kind, kwargs, run.record(), os.path.join(out, run.dir), env
            )
        finally:
            slots.put(gpu)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in as_completed([pool.submit(work, run) for run in todo]):
            finish(*future.result())


def _run_submitit(
    call, todo: list[Run], out: str, device: str, launcher: str, slurm: dict, jobs: int, finish
) -> None:
    """The runs as one submitit job array (SLURM, `jobs` tasks at once; or submitit's local executor); waits for
    them all."""
    import submitit

    if not todo:
        return
    folder = os.path.join(out, ".submitit", "%j")
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(slurm.get("time") or 60))
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**slurm_parameters(slurm, jobs))
    calls = [call(run, device) for run in todo]
    # one array submission (sbatch --array) for every run; submitit pickles the function and its arguments
    submitted = executor.map_array(
        execute_in_process,
        [kind for kind, _ in calls],
        [kw for _, kw in calls],
        [run.record() for run in todo],
        [os.path.join(out, run.dir) for run in todo],
    )
    for run, job in zip(todo, submitted, strict=True):
        try:
            error = job.result()
        except Exception as err:  # noqa: BLE001 - the job itself died (node failure, timeout)
            error = f"{type(err).__name__}: {' '.join(str(err).split())[-300:]}"
            _record_failure(os.path.join(out, run.dir), run.record(), error, None)
        finish(run, error)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
