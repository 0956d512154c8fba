"""Hybrid method names ('rmadapter+coop'), read without torch: `registry.is_known_method` accepts a
hybrid when every part it names is a known method."""

from __future__ import annotations

SEPARATOR = "+"


def hybrid_parts(name: str) -> list[str] | None:
    """The part names of a hybrid's name ('rmadapter+coop' -> ['rmadapter', 'coop']); None for a
    name without the separator."""
    if SEPARATOR not in name:
        return None
    return [part.strip() for part in name.split(SEPARATOR)]
