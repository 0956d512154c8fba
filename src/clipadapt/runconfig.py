"""A run's settings: method defaults < YAML preset < key=value overrides, split into method and training parts."""

from __future__ import annotations

from typing import Any

import yaml

from .engine import TrainConfig
from .errors import ClipadaptError, one_line
from .methods import make_config, method_class


# Settings that have a flag of their own: one setting, one name.
FLAG_SETTINGS = {"seed": "--seed"}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict, values read as YAML (numbers, booleans, lists); types are checked later."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ClipadaptError(f"argument '{pair}' is not of the form key=value")
        if key.strip() in out:
            raise ClipadaptError(f"setting '{key.strip()}' is given twice")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value  # kept as text: the declared type decides whether it fits
    return out


def read_preset(path: str) -> dict[str, Any]:
    """A YAML preset: a flat mapping of method options and training settings (and optionally `method`)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ClipadaptError(f"config file '{path}' does not exist") from None
    except IsADirectoryError:
        raise ClipadaptError(f"config file '{path}' is a directory, not a YAML file") from None
    except OSError as err:
        raise ClipadaptError(f"cannot read config file '{path}': {err.strerror}") from None
    except UnicodeDecodeError:
        raise ClipadaptError(f"config file '{path}' is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise ClipadaptError(f"config file '{path}' is not valid YAML: {one_line(err)}") from None
    if not isinstance(data, dict):
        raise ClipadaptError(f"config file '{path}' must hold a mapping of settings, not {type(data).__name__}")
    return data


def resolve(method: str, preset: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None):
    """Method config, TrainConfig and the merged flat dict that produced them."""
    cls = method_class(method)
    given = {**(preset or {}), **(overrides or {})}
    for key, flag in FLAG_SETTINGS.items():
        if key in given:
            raise ClipadaptError(f"setting '{key}' is set with {flag}, not in a config or as {key}=...")
    merged: dict[str, Any] = {**cls.training_defaults, **given}
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
    train_cfg = TrainConfig(**{k: v for k, v in merged.items() if k in train_keys})
    resolved = {"method": method, **method_cfg.to_dict(), **train_cfg.to_dict()}
    return method_cfg, train_cfg, resolved
