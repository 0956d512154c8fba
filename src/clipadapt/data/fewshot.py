"""Dassl's few-shot draw and base/new class split, reproduced item for item.

Dassl seeds Python's global `random` with the run's seed and then draws the train set and the
validation set one after the other; a `random.Random(seed)` gives the same sequence. CoOp's dataset
classes call `generate_fewshot_dataset(train, num_shots=K)` and
`generate_fewshot_dataset(val, num_shots=min(K, 4))` with Dassl's default `repeat=False`.
"""

from __future__ import annotations

import random
from collections import defaultdict

from ..errors import DataError
from .datum import Datum

SUBSAMPLES = ("all", "base", "new")


def group_by_label(items: list[Datum]) -> dict[int, list[Datum]]:
    """Items per label, labels in the order they first appear (Dassl's split_dataset_by_label)."""
    groups: dict[int, list[Datum]] = defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    return groups


def sample_few_shot(
    items: list[Datum], num_shots: int, rng: random.Random, repeat: bool = False
) -> list[Datum]:
    """K items per class as Dassl's generate_fewshot_dataset draws them.

    A class with fewer than K items keeps all of them, in order, and consumes no random numbers
    (Dassl's default `repeat=False`, which every CoOp dataset uses); `repeat=True` draws K with
    replacement instead, as Dassl does when asked."""
    if num_shots < 1:
        return list(items)
    chosen: list[Datum] = []
    for group in group_by_label(items).values():
        if len(group) >= num_shots:
            chosen.extend(rng.sample(group, num_shots))
        elif repeat:
            chosen.extend(rng.choices(group, k=num_shots))
        else:
            chosen.extend(group)
    return chosen


def parse_base_ratio(ratio: str | tuple[int, int]) -> tuple[int, int]:
    """'B:N' (or (B, N)) as two positive integers; DataError naming the value otherwise."""
    if isinstance(ratio, (tuple, list)) and len(ratio) == 2:
        parts = list(ratio)
    else:
        parts = str(ratio).split(":")
    try:
        base, novel = (int(str(p).strip()) for p in parts)
    except ValueError:
        base = novel = None
    if base is None or base < 1 or novel < 1:
        raise DataError(
            f"base ratio '{ratio if isinstance(ratio, str) else ':'.join(map(str, ratio))}' is not "
            "B:N with two integers >= 1 (e.g. 1:1, 4:1)"
        )
    return base, novel


def num_base_classes(num_classes: int, ratio: str | tuple[int, int] = "1:1") -> int:
    """C - floor(C·N/(B+N)) base classes: CoOp's ceil(C/2) at 1:1; DataError when no class is left novel."""
    base, novel = parse_base_ratio(ratio)
    count = num_classes - (num_classes * novel) // (base + novel)
    if count >= num_classes:
        raise DataError(
            f"base ratio {base}:{novel} on {num_classes} classes leaves no novel class "
            f"({count} base classes of {num_classes}); use a smaller ratio or a dataset with more classes"
        )
    return count


def subsample_classes(
    *splits: list[Datum], subsample: str = "all", base_ratio: str = "1:1"
) -> list[list[Datum]]:
    """Keep the base (the first C - floor(C·N/(B+N)) sorted labels) or new classes, relabelled from 0, as Dassl.

    At the default 1:1 that is Dassl's first ceil(C/2) labels."""
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got '{subsample}'")
    if subsample == "all":
        return [list(s) for s in splits]
    labels = sorted({item.label for item in splits[0]})
    half = num_base_classes(len(labels), base_ratio)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(selected)}
    return [
        [Datum(d.impath, relabel[d.label], d.classname) for d in split if d.label in relabel]
        for split in splits
    ]
