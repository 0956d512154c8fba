"""A run's settings: method defaults < YAML preset < key=value overrides, split into method and training parts.

Presets are package data (`clipadapt/presets/`), keyed by method, protocol and backbone family:
`presets/<method>_<protocol>.yaml` for the CLIP ViTs (the papers' settings), `presets/synthetic/`
for the shipped tiny CLIP. For a protocol the lookup tries `<method>_<protocol>.yaml`, then the
protocol's stand-ins (DG runs on ImageNet's settings), then `<method>.yaml` (a preset for every
protocol); finding none is an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from .engine import TrainConfig
from .errors import ClipadaptError, one_line
from .methods import make_config, method_class

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
    from .synthetic_weights import is_shipped

    return "synthetic" if backbone is None or is_shipped(backbone) else "clip"


def _presets_root():
    return resources.files("clipadapt") / "presets"


def preset_names() -> list[str]:
    """Every shipped preset, as 'name.yaml' or 'family/name.yaml'."""
    root = _presets_root()
    names = [e.name for e in root.iterdir() if e.name.endswith(".yaml")]
    for sub in root.iterdir():
        if sub.is_dir():
            names += [f"{sub.name}/{e.name}" for e in sub.iterdir() if e.name.endswith(".yaml")]
    return sorted(names)


def find_preset(method: str, protocol: str, backbone: str | None) -> str:
    """The shipped preset for a method, protocol and backbone ('synthetic/mma.yaml'); ClipadaptError if none fits."""
    family = backbone_family(backbone)
    folder = "" if family == "clip" else f"{family}/"
    tried = [f"{folder}{method}_{p}.yaml" for p in (protocol, *PRESET_STAND_INS.get(protocol, ()))]
    tried.append(f"{folder}{method}.yaml")
    known = set(preset_names())
    for name in tried:
        if name in known:
            return name
    raise ClipadaptError(
        f"no preset for method '{method}', protocol '{protocol}' on the {family} backbone family "
        f"(looked for {', '.join(tried)} in clipadapt/presets); pass --config FILE, or "
        f"--config none for the method's own defaults"
    )


def load_preset(name: str) -> dict[str, Any]:
    """A shipped preset by name ('mma_base2novel.yaml', 'synthetic/mma.yaml')."""
    if name not in preset_names():
        raise ClipadaptError(f"no shipped preset '{name}'; known: {', '.join(preset_names())}")
    entry = _presets_root().joinpath(*name.split("/"))
    with resources.as_file(entry) as path:
        return read_preset(str(path))


def choose_preset(
    config: str | None, method: str, protocol: str, backbone: str | None
) -> tuple[str, dict]:
    """What --config means: a file, a shipped preset's name, 'none', or (None) the matching shipped preset."""
    method_class(method)  # a hybrid that cannot compose is refused before any preset is looked up
    if config is None:
        name = find_preset(method, protocol, backbone)
        return f"preset:{name}", load_preset(name)
    if config.lower() == NO_PRESET:
        return NO_PRESET, {}
    if not os.path.exists(config) and config in preset_names():
        return f"preset:{config}", load_preset(config)
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


def setting_defaults(method: str) -> dict[str, Any]:
    """Each method option's and training setting's default value, as config.yaml records it."""
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
    from .registry import canonical_protocol

    name, preset = choose_preset(config, method, canonical_protocol(protocol), backbone)
    method_cfg, train_cfg, _ = resolve(method, preset, overrides)
    return TrainSettings(name, method_cfg.to_dict(), train_cfg)
