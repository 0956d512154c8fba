"""A run's settings: method defaults < YAML preset < key=value overrides, split into method and training parts."""

from __future__ import annotations

from typing import Any

import yaml

from .engine import TrainConfig
from .errors import ClipadaptError
from .methods import make_config, method_class


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict, values read as YAML (numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ClipadaptError(f"override '{pair}' is not of the form key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def read_preset(path: str) -> dict[str, Any]:
    """A YAML preset: a flat mapping of method options and training settings (and optionally `method`)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ClipadaptError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as err:
        raise ClipadaptError(f"config file '{path}' is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ClipadaptError(f"config file '{path}' must hold a mapping of settings")
    return data


def resolve(method: str, preset: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None):
    """Method config, TrainConfig and the merged flat dict that produced them."""
    cls = method_class(method)
    merged: dict[str, Any] = {**cls.training_defaults, **(preset or {}), **(overrides or {})}
    preset_method = merged.pop("method", method)
    if preset_method != method:
        raise ClipadaptError(f"the config is for method '{preset_method}', not '{method}'")
    method_keys = {f for f in cls.Config.__dataclass_fields__}
    train_keys = TrainConfig.field_names()
    unknown = sorted(set(merged) - method_keys - train_keys)
    if unknown:
        raise ClipadaptError(f"unknown setting(s) {unknown} for method '{method}'; method options: "
                             f"{sorted(method_keys)}; training settings: {sorted(train_keys)}")
    method_cfg = make_config(method, {k: v for k, v in merged.items() if k in method_keys})
    try:
        train_cfg = TrainConfig(**{k: v for k, v in merged.items() if k in train_keys})
    except TypeError as err:
        raise ClipadaptError(f"bad training setting: {err}") from None
    resolved = {"method": method, **method_cfg.to_dict(), **train_cfg.to_dict()}
    return method_cfg, train_cfg, resolved
