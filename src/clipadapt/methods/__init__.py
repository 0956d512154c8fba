"""Every method behind one interface, and the one lookup from a name (or a class path) to its class.

`method_class(name)` is the single point where a method name becomes a class: a registered name
(clipadapt.registry: clipadapt's own methods and installed plugins, by entry point), or `module:Class`
(imported, checked, and known by the class's `name` from then on in this process). `METHODS` is
a mapping of every registered method's name to its class, importing each class when first read.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping

from ..checks import unknown_method_error
from ..errors import ClipadaptError
from ..hybrid_names import hybrid_parts
from ..registry import (
    is_class_path,
    is_known_method,
    method_source,
    refresh_methods,
    registered_methods,
    remember_class_path,
)
from .base import Method, MethodConfig, Paper
from .hybrid import compose

_CLASSES: dict[str, type[Method]] = {}  # every class looked up so far, by method name


def _import_module(module: str, what: str, package: str | None):
    """The module a method's class lives in; one line naming the package when it is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or not (module == err.name or module.startswith(err.name + ".")):
            raise  # the module exists but imports something missing: its own traceback says what
        if package is None and "" not in sys.path and os.getcwd() not in sys.path:
            # `clipadapt` as a console script has no working folder on its import path; a module
            # named by path may be a file there, as with `python -m`.
            sys.path.append(os.getcwd())
            try:
                return importlib.import_module(module)
            except ModuleNotFoundError:
                pass
        where = f"package '{package}' is not installed" if package else "no such module"
        raise ClipadaptError(
            f"{what}: cannot import module '{module}' ({where}; pip install it, "
            "or put the module on the import path)"
        ) from None


def load_class(target: str, what: str, package: str | None = None) -> type[Method]:
    """The Method subclass `module:Class` names (`what` says in errors who asked for it)."""
    module, _, attribute = target.partition(":")
    cls = _import_module(module, what, package)
    for part in attribute.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise ClipadaptError(f"{what}: module '{module}' has no class '{attribute}'")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ClipadaptError(f"{what}: '{target}' is not a clipadapt Method subclass")
    return cls


def method_class(name: str) -> type[Method]:
    """The class of a method by its registered name or its class path (`module:Class`), with the known
    names in the error. The one lookup: every command, the API and the sweeps reach methods here."""
    if name in _CLASSES:
        return _CLASSES[name]
    if is_class_path(name):
        cls = load_class(name, f"method '{name}'")
        known = method_source(cls.name)
        if known is not None and known.target != name and known.distribution is not None:
            raise ClipadaptError(
                f"method '{name}' is named '{cls.name}', which {known.target} already registers"
            )
        if cls.name in _CLASSES and _CLASSES[cls.name] is not cls:
            raise ClipadaptError(
                f"method '{name}' is named '{cls.name}', the name of another class loaded before"
            )
        if known is None:
            remember_class_path(cls.name, name)
        _CLASSES[cls.name] = _CLASSES[name] = cls
        return cls
    parts = hybrid_parts(name)
    if (
        parts is not None
    ):  # 'rmadapter+coop': one method chaining its parts' hooks (methods/hybrid.py)
        _CLASSES[name] = compose(name, tuple(method_class(part) for part in parts))
        return _CLASSES[name]
    source = registered_methods().get(name)
    if source is None:
        raise unknown_method_error(name)
    cls = load_class(
        source.target, f"method '{name}'", None if source.builtin else source.distribution
    )
    if cls.name != name:
        raise ClipadaptError(
            f"{source.distribution} registers '{name}' for {source.target}, whose name is '{cls.name}'"
        )
    _CLASSES[name] = cls
    return cls


def method_name(name: str) -> str:
    """The method's own name for a registered name or a class path (which is imported to read it)."""
    return method_class(name).name if is_class_path(name) else name


def adapter_method(meta: dict[str, str], path: str) -> str:
    """The method an adapter file records, its class made available: by its registered name, else by the
    class path the file records; one line naming the package when that is not installed."""
    name = meta.get("method", "")
    if name in _CLASSES or name in registered_methods():
        return name
    target, package = meta.get("method_source"), meta.get("method_package") or None
    if not target:
        raise unknown_method_error(name)
    try:
        load_class(target, f"adapter '{path}' (method '{name}')", package)
    except ClipadaptError:
        if package:
            raise ClipadaptError(
                f"adapter '{path}' needs method '{name}' from package '{package}', which is not "
                f"installed (pip install {package})"
            ) from None
        raise
    return method_class(target).name


class _Methods(Mapping):
    """Every registered method's name -> class (imported when first read); class paths looked up in this
    process are also found by their name."""

    def __getitem__(self, name: str) -> type[Method]:
        if name not in self:
            raise KeyError(name)
        return method_class(name)

    def __iter__(self) -> Iterator[str]:
        seen = dict.fromkeys(registered_methods())
        # methods loaded by class path, by their names; hybrids are found (`in`), not listed
        seen.update((n, None) for n in _CLASSES if not is_class_path(n) and not hybrid_parts(n))
        return iter(seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if hybrid_parts(name) is not None:  # a hybrid of registered methods is found, not listed
            return is_known_method(name) and not any(map(is_class_path, hybrid_parts(name)))
        return name in registered_methods() or name in _CLASSES

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self)})"


METHODS: Mapping[str, type[Method]] = _Methods()


def forget_methods() -> None:
    """Forget every class looked up and everything discovered (registry.refresh_methods): packages installed
    or removed since are seen as they are now."""
    refresh_methods()
    _CLASSES.clear()


def make_config(name: str, options: dict | None = None) -> MethodConfig:
    """A method's config from keyword options, with a clear error on an unknown key."""
    try:
        return method_class(name).Config.from_dict(dict(options or {}))
    except (TypeError, ValueError) as err:
        raise ClipadaptError(f"method '{name}': {err}") from err


__all__ = [
    "METHODS",
    "Method",
    "MethodConfig",
    "Paper",
    "method_class",
    "method_name",
    "make_config",
    "load_class",
    "adapter_method",
    "forget_methods",
]
