"""Every method behind one interface, and the registry the command line reads."""

from __future__ import annotations

from ..errors import ClipadaptError
from ..registry import METHOD_CLASSES
from .base import Method, MethodConfig
from .hybrid import MethodTable


def _load_classes() -> dict[str, type[Method]]:
    """The method classes the registry names, each checked to carry its registered name."""
    import importlib

    classes = {}
    for name, (module, class_name) in METHOD_CLASSES.items():
        cls = getattr(importlib.import_module(f"{__name__}.{module}"), class_name)
        if cls.name != name:
            raise RuntimeError(
                f"clipadapt.registry lists '{name}' for {module}.{class_name}, whose name is '{cls.name}'"
            )
        classes[name] = cls
    return classes


# A hybrid of known methods ('rmadapter+coop') is found too (clipadapt.methods.hybrid).
METHODS: dict[str, type[Method]] = MethodTable(_load_classes())


def method_class(name: str) -> type[Method]:
    """The class of a method by its name, with the known names in the error."""
    if name not in METHODS:
        raise ClipadaptError(f"unknown method '{name}'; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def make_config(name: str, options: dict | None = None) -> MethodConfig:
    """A method's config from keyword options, with a clear error on an unknown key."""
    try:
        return method_class(name).Config.from_dict(dict(options or {}))
    except (TypeError, ValueError) as err:
        raise ClipadaptError(f"method '{name}': {err}") from err


__all__ = ["METHODS", "Method", "MethodConfig", "method_class", "make_config"]
