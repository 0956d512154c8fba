"""The items a dataset is made of, and the splits build_dataset returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Datum:
    """One labelled image: its path, its label (0-based) and its class name."""

    impath: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """Train, val and test items of one dataset, with the class names indexed by label."""

    name: str
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str]
    template: str = "a photo of a {}."
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classnames)


def classnames_of(*item_lists: list[Datum]) -> list[str]:
    """Class names indexed by label, read off the items (as Dassl's get_lab2cname does)."""
    mapping: dict[int, str] = {}
    for items in item_lists:
        for item in items:
            mapping.setdefault(item.label, item.classname)
    if not mapping:
        return []
    return [mapping[label] for label in sorted(mapping)]
