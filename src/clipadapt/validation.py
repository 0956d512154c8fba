"""One conversion and check of every setting, by the type its dataclass declares and a small range table.

TrainConfig and every method config call `check_fields(self)` in `__post_init__`, so the command
line (key=value), YAML presets and the Python API go through the same path: a value is converted to
the field's declared type (`"1e-3"`, which PyYAML reads as a string, becomes 0.001 for a float
field; `2.5` is refused for an int field), then checked against its range: RANGES by the field's
name for training settings, the config class's `option_ranges` for a method's options. A new field
is type-checked without extra code; a line in one of those tables adds its range.

This module imports nothing heavy (no torch), so the command line can use it to build its parser.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

from .errors import ClipadaptError


class SettingError(ClipadaptError):
    """A setting or method option with a value of the wrong type or out of its range."""


@dataclass(frozen=True)
class Range:
    """Bounds and choices a setting must respect (None: no bound)."""

    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None when it fits."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"expected one of {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bound, ok, word in (
                (self.ge, lambda b: value >= b, ">="),
                (self.gt, lambda b: value > b, ">"),
                (self.le, lambda b: value <= b, "<="),
                (self.lt, lambda b: value < b, "<"),
            ):
                if bound is not None and not ok(bound):
                    return f"expected a value {word} {bound}"
        if isinstance(value, (list, tuple)):
            for v in value:
                inner = Range(self.ge, self.gt, self.le, self.lt).problem(v)
                if inner:
                    return inner
        return self.check(value) if self.check else None


def template_problem(value: Any) -> str | None:
    """What is wrong with a prompt template (it needs '{}' for the class name), or None."""
    if isinstance(value, str) and "{}" not in value:
        return "expected a prompt template with '{}' where the class name goes (e.g. 'a photo of a {}.')"
    return None


def _base_ratio_problem(value: Any) -> str | None:
    if isinstance(value, int):  # YAML 1.1 reads an unquoted 4:1 as the base-60 number 241
        return "expected B:N in quotes (YAML reads an unquoted 4:1 as the number 241): base_ratio: '4:1'"
    parts = str(value).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        return "expected B:N with two integers >= 1 (e.g. 1:1, 4:1)"
    return None


# Ranges of the training settings by field name. A method's options have theirs on its config class
# (`option_ranges`, read by check_fields); a field listed nowhere is still checked by its declared type.
RANGES: dict[str, Range] = {
    "lr": Range(gt=0),
    "warmup_lr": Range(gt=0),
    "momentum": Range(ge=0, lt=1),
    "weight_decay": Range(ge=0),
    "betas": Range(ge=0, lt=1),
    "epochs": Range(ge=1),
    "warmup_epochs": Range(ge=0),
    "batch_size": Range(ge=1),
    "eval_batch_size": Range(ge=1),
    "workers": Range(ge=0),
    "log_every": Range(ge=1),
    "seed": Range(ge=0),
    "patience": Range(ge=0),
    "train_noise_std": Range(ge=0),
    "eval_noise_std": Range(ge=0),
    "base_ratio": Range(check=_base_ratio_problem),
    "prefix_cache_mb": Range(ge=0),
}

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        n = (
            len(typing.get_args(tp))
            if origin is tuple and Ellipsis not in typing.get_args(tp)
            else None
        )
        what = _describe(args[0]) if args else "values"
        return f"a list of {n} values, each {what}" if n else f"a list of values, each {what}"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _convert(value: Any, tp: Any) -> Any:
    """`value` as type `tp`, or _Mismatch."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None
            or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~"))
        ):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise _Mismatch
    if origin in (list, tuple):
        if isinstance(value, str):  # "0.9,0.98" from a key=value argument
            value = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
        inner = args[0] if args else Any
        items = [_convert(v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (
            "true",
            "false",
            "yes",
            "no",
            "on",
            "off",
        ):
            return value.strip().lower() in ("true", "yes", "on")
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    value = float(value)  # "1e3"
                except ValueError:
                    raise _Mismatch from None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(
                    value.strip()
                )  # "1e-3": PyYAML reads exponents without a dot as text
            except ValueError:
                raise _Mismatch from None
        else:
            raise _Mismatch
        if not math.isfinite(result):
            raise _Mismatch
        return result
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    return value  # a type this table does not know: passed through unchanged


def convert_setting(
    key: str, value: Any, tp: Any, owner: str = "setting", rule: Range | None = None
) -> Any:
    """`value` converted to the declared type `tp` and checked against `rule` (default RANGES[key]);
    SettingError otherwise."""
    try:
        converted = _convert(value, tp)
    except _Mismatch:
        raise SettingError(
            f"{owner} '{key}': expected {_describe(tp)}, got {value!r} ({type(value).__name__})"
        ) from None
    rule = rule or RANGES.get(key)
    problem = rule.problem(converted) if rule else None
    if problem:
        raise SettingError(f"{owner} '{key}': {problem}, got {value!r}")
    return converted


def field_types(cls: type) -> dict[str, Any]:
    """Declared types of a dataclass's fields, with string annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def declared_ranges(cls: type) -> dict[str, Range]:
    """The ranges a dataclass declares for its fields in `option_ranges`, its bases' first (a subclass's entry
    replaces its base's), over RANGES."""
    rules = dict(RANGES)
    for klass in reversed(cls.__mro__):
        rules.update(vars(klass).get("option_ranges", {}))
    return rules


def check_fields(obj: Any, owner: str = "setting") -> None:
    """Convert and check every field of a dataclass instance in place (types, and ranges: declared_ranges)."""
    rules = declared_ranges(type(obj))
    for name, tp in field_types(type(obj)).items():
        value = convert_setting(name, getattr(obj, name), tp, owner, rules.get(name))
        object.__setattr__(obj, name, value)
