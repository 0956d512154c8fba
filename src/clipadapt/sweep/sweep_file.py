"""The sweep file: its keys, the shipped sweeps, and reading one into a checked `Sweep` (every method,
dataset, preset and setting checked before any run starts)."""

from __future__ import annotations

import difflib
import itertools
import os
import re
from pathlib import Path

import yaml

from ..data import known_datasets
from ..errors import ClipadaptError
from ..registry import canonical_protocol, dataset_names
from ..runconfig import NO_PRESET, choose_preset, read_preset, read_yaml_mapping, resolve
from ..settings import TrainConfig
from ..synthetic_weights import is_shipped
from .planning import RUN_ARGUMENTS, Run, Sweep

PACKAGE_PRESETS = Path(__file__).resolve().parent.parent / "presets"
PACKAGE_SWEEPS = (
    Path(__file__).resolve().parent.parent / "sweeps"
)  # the paper and study sweeps (package data)
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
    out = []
    for name, path in shipped_sweeps().items():
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        text = " ".join(str(data.get("name") or data.get("description") or "").split())
        out.append((name, text))
    return out


def read_sweep(path: str, extra_overrides: dict | None = None) -> Sweep:
    """Read and check a sweep file: unknown keys, protocols, methods, datasets and settings fail before any run."""
    # Deferred: the method classes and the protocols load torch.
    from ..methods import METHODS, method_name
    from ..protocols import TRANSFER_TARGETS

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
        [method_name(str(m)) for m in _as_list(data, "methods")]  # a class path: its method's name
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
    all_datasets = dataset_names()
    for method, tables in dataset_overrides.items():
        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise ClipadaptError(
                f"sweep file '{path}': dataset_overrides of '{method}' maps dataset names to "
                f"{{setting: value}}; got {tables!r}"
            )
        for d in sorted(
            set(tables) - set(all_datasets)
        ):  # a known dataset the sweep does not run: unused
            close = difflib.get_close_matches(str(d), all_datasets, n=1)
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
    from ..methods import METHODS, method_name  # deferred: the method classes load torch

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
        spec = {**spec, "method": method_name(str(spec["method"]))}
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
