"""Dassl's few-shot draw and base/new class split, reproduced item for item.

Dassl seeds Python's global `random` with the run's seed and then draws the train set and the
validation set one after the other; a `random.Random(seed)` gives the same sequence. CoOp's dataset
classes call `generate_fewshot_dataset(train, num_shots=K)` and
`generate_fewshot_dataset(val, num_shots=min(K, 4))` with Dassl's default `repeat=False`.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from .datum import Datum

SUBSAMPLES = ("all", "base", "new")


def group_by_label(items: list[Datum]) -> dict[int, list[Datum]]:
    """Items per label, labels in the order they first appear (Dassl's split_dataset_by_label)."""
    groups: dict[int, list[Datum]] = defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    return groups


def sample_few_shot(items: list[Datum], num_shots: int, rng: random.Random, repeat: bool = False) -> list[Datum]:
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


def subsample_classes(*splits: list[Datum], subsample: str = "all") -> list[list[Datum]]:
    """Keep the base (first half of sorted labels) or new classes, relabelled from 0, as Dassl does."""
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got '{subsample}'")
    if subsample == "all":
        return [list(s) for s in splits]
    labels = sorted({item.label for item in splits[0]})
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(selected)}
    return [[Datum(d.impath, relabel[d.label], d.classname) for d in split if d.label in relabel]
            for split in splits]
