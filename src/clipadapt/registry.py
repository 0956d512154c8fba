"""The names clipadapt knows, free of torch, so that `clipadapt --help` and the checks before a run
start fast: methods (where each one's class lives), protocols, datasets.

Methods register as plugins do, through the entry-point group `clipadapt.methods`
(`name = "package.module:Class"`): clipadapt's own fourteen are declared in its pyproject.toml,
other packages declare theirs in theirs. The names and class paths come from the packages' metadata
(no method module is imported); a class is imported when its method is used
(`clipadapt.methods.method_class`, the one lookup). A method can also be named by its class path,
`module:Class` (a module on the import path, e.g. a file in the working folder), without packaging.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .hybrid_names import hybrid_parts

ENTRY_POINT_GROUP = "clipadapt.methods"
OWN_DISTRIBUTION = "clipadapt"


@dataclass(frozen=True)
class MethodSource:
    """Where a method's class lives: `target` is `module:Class`; `distribution` the installed package that
    registers it (None for a class named by its path); `builtin` for clipadapt's own."""

    name: str
    target: str
    distribution: str | None
    builtin: bool = False

    @property
    def module(self) -> str:
        """The module that defines the class."""
        return self.target.partition(":")[0]


def is_class_path(text: str) -> bool:
    """Whether a --method value names a class by its path (`module:Class`) rather than a registered name."""
    module, sep, attribute = str(text).partition(":")
    return bool(sep and module and attribute)


def _own_declarations() -> list[tuple[str, str]]:
    """clipadapt's own entry points: read from pyproject.toml when running from a source checkout (the
    installed metadata of an editable install is as old as its last `pip install`), else from the
    installed metadata."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            project = {}
        table = project.get("entry-points", {}).get(ENTRY_POINT_GROUP)
        if project.get("name") == OWN_DISTRIBUTION and table is not None:
            return list(table.items())
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        points = distribution(OWN_DISTRIBUTION).entry_points
    except PackageNotFoundError:
        return []
    return [(p.name, p.value) for p in points if p.group == ENTRY_POINT_GROUP]


def _plugin_declarations() -> list[tuple[str, str, str]]:
    """(name, module:Class, distribution) of every other installed package's `clipadapt.methods` entry point."""
    from importlib.metadata import entry_points

    found = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(point, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        if dist_name != OWN_DISTRIBUTION:
            found.append((point.name, point.value, dist_name or "?"))
    return found


@functools.cache
def registered_methods() -> dict[str, MethodSource]:
    """Every registered method by name: clipadapt's own first (in its declared order), then the installed
    plugins' (a plugin cannot take a built-in's name; the first package to declare a name keeps it)."""
    methods = {
        name: MethodSource(name, target, OWN_DISTRIBUTION, builtin=True)
        for name, target in _own_declarations()
    }
    for name, target, dist in _plugin_declarations():
        methods.setdefault(name, MethodSource(name, target, dist))
    return methods


# Methods named by class path in this process (name -> source), so that their runs, children and
# adapter files can say where the class came from.
_BY_PATH: dict[str, MethodSource] = {}


def remember_class_path(name: str, target: str) -> None:
    """Record that method `name` was loaded from the class path `target` in this process."""
    _BY_PATH[name] = MethodSource(name, target, None)


def refresh_methods() -> None:
    """Forget what was discovered, so that packages installed since are found (tests, long sessions)."""
    registered_methods.cache_clear()
    _BY_PATH.clear()


def method_source(name: str) -> MethodSource | None:
    """Where a method's class lives (None: not a method this process knows)."""
    return registered_methods().get(name) or _BY_PATH.get(name)


def builtin_method_names() -> tuple[str, ...]:
    """clipadapt's own methods, in the order the help and the tables list them."""
    return tuple(n for n, s in registered_methods().items() if s.builtin)


def plugin_method_names() -> tuple[str, ...]:
    """The methods other installed packages register."""
    return tuple(n for n, s in registered_methods().items() if not s.builtin)


def method_names() -> tuple[str, ...]:
    """Every method name this process knows: built-ins, plugins, and classes loaded by path."""
    return (*registered_methods(), *(n for n in _BY_PATH if n not in registered_methods()))


def is_known_method(text: str) -> bool:
    """Whether a --method value is usable: a known name, a class path (checked when it is imported), or
    a hybrid ('rmadapter+coop') of two or more different such methods."""
    parts = hybrid_parts(text)
    if parts is not None:
        return (
            len(parts) >= 2 and len(set(parts)) == len(parts) and all(map(is_known_method, parts))
        )
    return text in method_names() or is_class_path(text)


def describe_methods() -> str:
    """The method names for help texts and errors: built-ins, then installed plugins with their packages."""
    text = ", ".join(builtin_method_names())
    plugins = [f"{n} ({s.distribution})" for n, s in registered_methods().items() if not s.builtin]
    if plugins:
        text += f"; installed plugins: {', '.join(plugins)}"
    return text + "; or a class as module:Class"


def method_argument(name: str) -> str:
    """What a command line passes as --method to reach the method `name` in a fresh process: its name, or its
    class path when it was loaded by path."""
    source = method_source(name)
    return source.target if source is not None and source.distribution is None else name


def method_origin(name: str) -> dict[str, str]:
    """What an adapter file records of where its method came from: the class path and the package."""
    source = method_source(name)
    if source is None:
        return {}
    return {"method_source": source.target, "method_package": source.distribution or ""}


def import_path_for_children(env: dict[str, str]) -> dict[str, str]:
    """`env` with PYTHONPATH extended by the folders that methods loaded by class path in this process were
    imported from, so that a child process (a sweep's run) imports them too."""
    folders = []
    for source in _BY_PATH.values():
        module = sys.modules.get(source.module)
        path = getattr(module, "__file__", None)
        if not path:
            continue
        root = Path(path).resolve().parent
        for _ in range(source.module.count(".") + (Path(path).stem == "__init__")):
            root = root.parent
        folders.append(str(root))
    present = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    added = [f for f in dict.fromkeys(folders) if f not in present]
    if not added:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join([*present, *added])}


def __getattr__(name: str):
    """`METHOD_NAMES`: the built-in methods' names, read when first asked for."""
    if name == "METHOD_NAMES":
        return builtin_method_names()
    raise AttributeError(f"module 'clipadapt.registry' has no attribute {name!r}")


PROTOCOLS = ("base2novel", "fewshot", "cross_dataset", "domain_generalization")
PROTOCOL_ALIASES = {"dg": "domain_generalization"}
PROTOCOL_NAMES = (*PROTOCOLS, *PROTOCOL_ALIASES)  # what --protocol accepts

SYNTHETIC_DATASET_NAMES = (
    "syn_shapes",
    "syn_colours",
    "syn_objects",
    "syn_patterns",
    "syn_counts",
    "syn_layouts",
    "syn_objects_sketch",
    "syn_objects_noise",
    "syn_objects_clutter",
)
FOLDER_DATASET = "folder"

# config.yaml keys that say how a run was executed rather than what it is: not settings at all.
RUN_CIRCUMSTANCES = ("world_size",)
# config.yaml keys that change no number a run computes: where the data lies, how a run was executed, the
# preset file the settings came from (its contents are the settings beside it), data loader processes,
# evaluation and image-class pair batching, the prefix cache's size, logging. The resume check, the sweep's
# rerun check and the report's rows all ignore them.
NUMBER_NEUTRAL_KEYS = (
    "data_root",
    *RUN_CIRCUMSTANCES,
    "preset",
    "workers",
    "eval_batch_size",
    "prefix_cache_mb",
    "log_every",
    "logger",
    "pair_chunk",
)


def canonical_protocol(name: str) -> str:
    """The protocol's full name (`dg` is domain_generalization); an unknown name is an error."""
    from .errors import ClipadaptError

    name = PROTOCOL_ALIASES.get(name, name)
    if name not in PROTOCOLS:
        raise ClipadaptError(
            f"unknown protocol '{name}'; known: {', '.join(PROTOCOLS)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in PROTOCOL_ALIASES.items())})"
        )
    return name


def dataset_names() -> list[str]:
    """The names `build_dataset` accepts: CoOp's benchmarks, an image folder, the synthetic world."""
    from .data.coop import COOP_DATASETS  # plain Python: no torch, no numpy

    return [*COOP_DATASETS, FOLDER_DATASET, *SYNTHETIC_DATASET_NAMES]
