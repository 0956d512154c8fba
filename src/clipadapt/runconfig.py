"""A run's settings: method defaults < YAML preset < key=value overrides, split into method and training parts.

Presets live in the `presets/` folder next to the method's module (or next to a package above it:
clipadapt's own methods have theirs in `clipadapt/presets/`, a plugin's in its own package), keyed
by method, protocol and backbone family: `presets/<method>_<protocol>.yaml` for the CLIP ViTs (the
papers' settings), `presets/synthetic/` for the shipped tiny CLIP. For a protocol the lookup tries `<method>_<protocol>.yaml`, then the
protocol's stand-ins (DG runs on ImageNet's settings), then `<method>.yaml` (a preset for every
protocol); finding none is an error.

What the training settings are (`TrainConfig`) is `clipadapt.settings`; this module says where a run's
values come from. It imports no torch: the method classes are imported when a run's settings are
resolved.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ClipadaptError, one_line
from .registry import canonical_protocol
from .runspec import ResolvedRun, RunSpec
from .settings import TrainConfig
from .synthetic_weights import is_shipped

# Settings that have a flag of their own: one setting, one name.
FLAG_SETTINGS = {"seed": "--seed"}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict (a later one wins), values read as YAML; types are checked later."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ClipadaptError(f"argument '{pair}' is not of the form key=value")
        if re.fullmatch(
            r"\s*\d+\s*:\s*\d+\s*", value
        ):  # a ratio such as 4:1, which YAML would read as 241
            out[key.strip()] = value.strip()
            continue
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value  # kept as text: the declared type decides whether it fits
    return out


NO_PRESET = "none"
# Protocols whose papers' settings are another protocol's: DG trains on ImageNet with its settings.
# Domain generalization trains the same ImageNet source adapter as cross-dataset transfer.
PRESET_STAND_INS = {
    "domain_generalization": ("cross_dataset", "imagenet"),
    "dg": ("cross_dataset", "imagenet"),
    "cross_dataset": ("imagenet",),
}


def backbone_family(backbone: str | None) -> str:
    """'synthetic' for the shipped tiny CLIP, 'clip' for open_clip's models."""
    return "synthetic" if backbone is None or is_shipped(backbone) else "clip"


PRESETS_FOLDER = "presets"


def _presets_root() -> Path:
    """clipadapt's own presets folder (the built-in methods' presets)."""
    return Path(__file__).resolve().parent / PRESETS_FOLDER


def preset_folders(method: str | None = None) -> list[Path]:
    """Where a method's presets are looked for: the `presets/` folder next to its module, then next to each
    package above it (nearest first); clipadapt's own folder last. Without a method: clipadapt's own."""
    from .methods import method_class  # deferred: the method classes load torch

    folders = []
    if method is not None:
        module = sys.modules[method_class(method).__module__]
        file = Path(getattr(module, "__file__", "") or "./-").resolve()
        # the module's folder, and its packages' folders up to the top-level package's (never above it)
        depth = module.__name__.count(".") + (file.stem == "__init__")
        folder = file.parent
        for _ in range(max(1, depth)):
            folders.append(folder / PRESETS_FOLDER)
            folder = folder.parent
    folders.append(_presets_root())
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def _names_in(folder: Path) -> list[str]:
    names = [e.name for e in folder.iterdir() if e.name.endswith(".yaml")]
    for sub in folder.iterdir():
        if sub.is_dir():
            names += [f"{sub.name}/{e.name}" for e in sub.iterdir() if e.name.endswith(".yaml")]
    return names


def preset_names(method: str | None = None) -> list[str]:
    """Every preset a method can name (clipadapt's own without a method), as 'name.yaml' or 'family/name.yaml'."""
    return sorted({n for folder in preset_folders(method) for n in _names_in(folder)})


def _preset_path(name: str, method: str | None) -> Path | None:
    for folder in preset_folders(method):
        path = folder.joinpath(*name.split("/"))
        if path.is_file():
            return path
    return None


def find_preset(method: str, protocol: str, backbone: str | None) -> str:
    """The preset for a method, protocol and backbone ('synthetic/mma.yaml'), from the `presets/` folder next
    to the method's module (preset_folders); ClipadaptError if none fits."""
    family = backbone_family(backbone)
    from .methods import method_class  # deferred: the method classes load torch

    folder = "" if family == "clip" else f"{family}/"
    name = method_class(method).name
    tried = [f"{folder}{name}_{p}.yaml" for p in (protocol, *PRESET_STAND_INS.get(protocol, ()))]
    tried.append(f"{folder}{name}.yaml")
    for candidate in tried:
        if _preset_path(candidate, method) is not None:
            return candidate
    where = " or ".join(str(f) for f in preset_folders(method)) or "a presets/ folder beside it"
    raise ClipadaptError(
        f"no preset for method '{name}', protocol '{protocol}' on the {family} backbone family "
        f"(looked for {', '.join(tried)} in {where}); pass --config FILE, or "
        f"--config none for the method's own defaults"
    )


def load_preset(name: str, method: str | None = None) -> dict[str, Any]:
    """A preset by name ('mma_base2novel.yaml', 'synthetic/mma.yaml'): the method's own, else clipadapt's."""
    path = _preset_path(name, method)
    if path is None:
        raise ClipadaptError(
            f"no shipped preset '{name}'; known: {', '.join(preset_names(method))}"
        )
    return read_preset(str(path))


def choose_preset(
    config: str | None, method: str, protocol: str, backbone: str | None
) -> tuple[str, dict]:
    """What --config means: a file, a preset's name, 'none', or (None) the method's matching preset."""
    # Deferred: the method classes load torch. A hybrid that cannot compose is refused here, before
    # any preset is looked up.
    from .methods import method_class

    method_class(method)
    if config is None:
        name = find_preset(method, protocol, backbone)
        return f"preset:{name}", load_preset(name, method)
    if config.lower() == NO_PRESET:
        return NO_PRESET, {}
    if not os.path.exists(config) and _preset_path(config, method) is not None:
        return f"preset:{config}", load_preset(config, method)
    return os.path.abspath(config), read_preset(config)


def read_yaml_mapping(path: str, kind: str, expected: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping, with one clear error per way it can fail ('config file', ...)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ClipadaptError(f"{kind} '{path}' does not exist") from None
    except IsADirectoryError:
        raise ClipadaptError(f"{kind} '{path}' is a directory, not a YAML file") from None
    except OSError as err:
        raise ClipadaptError(f"cannot read {kind} '{path}': {err.strerror}") from None
    except UnicodeDecodeError:
        raise ClipadaptError(f"{kind} '{path}' is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise ClipadaptError(f"{kind} '{path}' is not valid YAML: {one_line(err)}") from None
    if not isinstance(data, dict):
        raise ClipadaptError(
            f"{kind} '{path}' must hold a mapping of {expected}, not {type(data).__name__}"
        )
    return data


def read_preset(path: str) -> dict[str, Any]:
    """A YAML preset: a flat mapping of method options and training settings (and optionally `method`)."""
    return read_yaml_mapping(path, "config file", "settings")


def resolve(
    method: str, preset: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
):
    """Method config, TrainConfig and the merged flat dict that produced them."""
    from .methods import make_config, method_class  # deferred: the method classes load torch

    cls = method_class(method)
    given = {**(preset or {}), **(overrides or {})}
    for key, flag in FLAG_SETTINGS.items():
        if key in given:
            raise ClipadaptError(
                f"setting '{key}' is set with {flag}, not in a config or as {key}=..."
            )
    merged: dict[str, Any] = {**cls.training_defaults, **given}
    preset_method = merged.pop("method", method)
    if preset_method != method:
        raise ClipadaptError(f"the config is for method '{preset_method}', not '{method}'")
    method_keys = set(cls.Config.option_names())
    train_keys = TrainConfig.field_names()
    unknown = sorted(set(merged) - method_keys - train_keys)
    if unknown:
        raise ClipadaptError(
            f"unknown setting(s) {unknown} for method '{method}'; method options: "
            f"{sorted(method_keys)}; training settings: {sorted(train_keys)}"
        )
    method_cfg = make_config(method, {k: v for k, v in merged.items() if k in method_keys})
    train_cfg = TrainConfig(**{k: v for k, v in merged.items() if k in train_keys})
    resolved = {"method": method, **method_cfg.to_dict(), **train_cfg.to_dict()}
    return method_cfg, train_cfg, resolved


def resolve_run(spec: RunSpec) -> ResolvedRun:
    """A run's preset, method config and training settings (the run's seed in them); an unknown or
    ill-typed setting is refused here, before any work."""
    spec = spec.normalised()
    preset_name, preset = choose_preset(spec.config, spec.method, spec.protocol, spec.backbone)
    method_config, train_config, _ = resolve(spec.method, preset, spec.overrides())
    return ResolvedRun(spec, preset_name, method_config, replace(train_config, seed=spec.seed))


def setting_defaults(method: str) -> dict[str, Any]:
    """Each method option's and training setting's default value, as config.yaml records it."""
    from .methods import make_config  # deferred: the method classes load torch

    record = {**make_config(method, {}).to_dict(), **TrainConfig().to_dict()}
    return yaml.safe_load(yaml.safe_dump(record, sort_keys=False))


@dataclass
class TrainSettings:
    """What `clipadapt train` runs with: the preset it used, the method's options and the training settings."""

    preset: str
    method: dict[str, Any]
    train: TrainConfig


def train_settings(
    method: str,
    protocol: str = "base2novel",
    backbone: str | None = None,
    config: str | None = None,
    **overrides: Any,
) -> TrainSettings:
    """The settings `clipadapt train --method M --protocol P --backbone B [--config C] key=value` resolves.

    `backbone` None is the CLI's default (the shipped tiny CLIP); `config` is --config (None: the matching
    shipped preset, "none": the method's defaults, else a file or a preset's name)."""
    name, preset = choose_preset(config, method, canonical_protocol(protocol), backbone)
    method_cfg, train_cfg, _ = resolve(method, preset, overrides)
    return TrainSettings(name, method_cfg.to_dict(), train_cfg)
