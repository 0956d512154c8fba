"""Every method behind one interface, and the registry the command line reads."""

from __future__ import annotations

from ..errors import ClipadaptError
from .base import Method, MethodConfig
from .clip_adapter import CLIPAdapter
from .clip_lora import CLIPLoRA
from .coop import CoOp
from .maple import MaPLe
from .mma import MMA
from .mma_attn import MMAAttn
from .mmrl import MMRL
from .mma_pp import MMAPP
from .rmadapter import RMAdapter
from .rmma import RMMA
from .zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = {m.name: m for m in [ZeroShot, CLIPAdapter, CoOp, MMA, MMAPP, RMAdapter, RMMA,
                                                        MMAAttn, MMRL, MaPLe, CLIPLoRA]}


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
