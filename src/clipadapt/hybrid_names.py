"""Hybrid method names ('rmadapter+coop'), read without torch: the checks before a run and the
command line accept a hybrid when every part it names is a known method."""

from __future__ import annotations

from collections.abc import Iterable

SEPARATOR = "+"


def hybrid_parts(name: str) -> list[str] | None:
    """The part names of a hybrid's name ('rmadapter+coop' -> ['rmadapter', 'coop']); None for a
    name without the separator."""
    if SEPARATOR not in name:
        return None
    return [part.strip() for part in name.split(SEPARATOR)]


def is_known_method(name: str, known: Iterable[str]) -> bool:
    """A known method's name, or a hybrid of two or more different known methods."""
    known = set(known)
    parts = hybrid_parts(name)
    if parts is None:
        return name in known
    return len(parts) >= 2 and len(set(parts)) == len(parts) and all(p in known for p in parts)
