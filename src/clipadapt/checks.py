"""Checks every command makes before any work: the device exists, the output can be written, no finished
run is in the way. Plain Python (torch only to ask about a GPU)."""

from __future__ import annotations

import difflib
import os
import re

from .errors import ClipadaptError

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def check_device(device: str) -> None:
    """Refuse a device name that is malformed or that this machine does not have, before any work starts."""
    if not DEVICE_PATTERN.match(str(device)):
        raise ClipadaptError(f"device must be cpu, cuda, cuda:N or mps, got '{device}'")
    if device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise ClipadaptError(
                f"device '{device}' is not available: this machine has "
                f"{count or 'no'} CUDA GPU{'s' if count != 1 else ''} (use --device cpu)"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ClipadaptError("device 'mps' is not available on this machine (use --device cpu)")


def check_writable(path: str, kind: str) -> None:
    """Refuse an output folder (kind 'dir') or file ('file') that cannot be written, creating nothing."""
    path = os.path.abspath(os.path.expanduser(path))
    if kind == "dir" and os.path.exists(path) and not os.path.isdir(path):
        raise ClipadaptError(f"output folder '{path}' is a file")
    if kind == "file" and os.path.isdir(path):
        raise ClipadaptError(f"output file '{path}' is a directory")
    folder = path if kind == "dir" else os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ClipadaptError(f"cannot write to '{path}': '{folder}' is not a writable folder")


def check_not_finished(out: str) -> None:
    """Refuse an output folder that already holds a finished run (its metrics.json)."""
    if os.path.exists(os.path.join(out, "metrics.json")):
        raise ClipadaptError(
            f"'{out}' already holds a finished run (metrics.json); "
            "pass --overwrite to replace it or choose another --out"
        )


def _folded(name: str) -> str:
    return str(name).lower().replace("/", "-").replace("_", "-")


def closest_names(given: str, names: list[str], n: int = 3) -> list[str]:
    """The valid names nearest to `given`, ignoring case and '/', '-', '_' (at most `n`)."""
    by_fold: dict[str, str] = {}
    for name in names:
        by_fold.setdefault(_folded(name), name)
    exact = by_fold.get(_folded(given))
    if exact is not None:
        return [exact]
    return [
        by_fold[f]
        for f in difflib.get_close_matches(_folded(given), list(by_fold), n=n, cutoff=0.6)
    ]


def unknown_name(kind: str, given: str, names: list[str], where: str = "") -> ClipadaptError:
    """The one-line error for a name that is not one of `names`: the closest valid ones, or the whole list
    when it fits in two lines."""
    close = closest_names(given, names)
    if close:
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?"
    elif len(", ".join(names)) <= 320:  # two lines of a terminal at most
        hint = f"known: {', '.join(names)}"
    else:
        hint = f"{len(names)} are known{where}"
    return ClipadaptError(f"unknown {kind} '{given}' ({hint})")


def check_run_names(
    method: str | None = None, dataset: str | None = None, protocol: str | None = None
) -> None:
    """Refuse an unknown method, dataset or protocol by name, before any preset lookup (no torch needed)."""
    from .hybrid_names import is_known_method
    from .registry import METHOD_NAMES, PROTOCOL_NAMES, dataset_names

    if method is not None and not is_known_method(method, METHOD_NAMES):
        raise unknown_name("method", method, list(METHOD_NAMES))
    if dataset is not None and dataset not in dataset_names():
        raise unknown_name("dataset", dataset, dataset_names())
    if protocol is not None and protocol not in PROTOCOL_NAMES:
        raise unknown_name("protocol", protocol, list(PROTOCOL_NAMES))
