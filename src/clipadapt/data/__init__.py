"""Datasets: CoOp's benchmarks, folders of images, and the synthetic world, behind `build_dataset`."""

from __future__ import annotations

import random

from ..errors import DataError
from ..registry import FOLDER_DATASET as FOLDER
from ..registry import dataset_names
from .coop import COOP_DATASETS, read_coop_dataset
from .datum import DatasetSplits, Datum, classnames_of
from .fewshot import (
    SUBSAMPLES,
    num_base_classes,
    parse_base_ratio,
    sample_few_shot,
    subsample_classes,
)
from .folder import read_image_folder

__all__ = [
    "build_dataset",
    "known_datasets",
    "Datum",
    "DatasetSplits",
    "sample_few_shot",
    "subsample_classes",
    "num_base_classes",
    "parse_base_ratio",
]


def known_datasets() -> list[str]:
    """Names accepted by build_dataset (clipadapt.registry's list)."""
    return dataset_names()


def _read(name: str, root: str):
    # Deferred: numpy and the renderer load only for the synthetic world.
    from .synthetic import SYNTHETIC_DATASETS, read_synthetic

    if name in COOP_DATASETS:
        spec = COOP_DATASETS[name]
        return (
            *read_coop_dataset(spec, root),
            spec.template,
            spec.reader == "imagenet",
            spec.test_only,
        )
    if name == FOLDER:
        return (*read_image_folder(root), "a photo of a {}.", False, False)
    if name in SYNTHETIC_DATASETS:
        train, val, test, template = read_synthetic(name, root)
        return train, val, test, template, False, not train
    raise DataError(f"unknown dataset '{name}'; known datasets: {', '.join(known_datasets())}")


def check_shots(shots: int) -> None:
    """Shots are -1 (every training image, as Dassl's num_shots=-1) or at least 1."""
    if isinstance(shots, bool) or not isinstance(shots, int) or (shots != -1 and shots < 1):
        raise DataError(f"shots must be -1 (every training image) or at least 1, got {shots!r}")


def build_dataset(
    name: str,
    root: str,
    shots: int = -1,
    seed: int = 1,
    subsample: str = "all",
    base_ratio: str = "1:1",
) -> DatasetSplits:
    """Read a dataset, draw Dassl's K-shot train and min(K,4)-shot val sets for `seed`, keep base or new classes.

    `base_ratio` 'B:N' sets how many of the sorted classes are base (fewshot.num_base_classes); K may
    exceed 16, and a class with fewer than K training images keeps them all, as Dassl."""
    if subsample not in SUBSAMPLES:
        raise DataError(f"subsample must be one of {', '.join(SUBSAMPLES)}, got '{subsample}'")
    check_shots(shots)
    train, val, test, template, val_is_test, test_only = _read(name, root)
    classnames_all = classnames_of(train, val, test)
    if shots >= 1 and not test_only:
        rng = random.Random(seed)  # Dassl draws train then val from the globally seeded `random`
        train = sample_few_shot(train, shots, rng)
        if not val_is_test:
            val = sample_few_shot(val, min(shots, 4), rng)
    splits = (train, test) if val_is_test else ((test,) if test_only else (train, val, test))
    splits = subsample_classes(*splits, subsample=subsample, base_ratio=base_ratio)
    if val_is_test:
        train, test = splits
        val = test
    elif test_only:
        (test,) = splits
    else:
        train, val, test = splits
    classnames = classnames_of(train, val, test)
    where = f"dataset '{name}' at '{root}'" + (
        f" ({subsample} classes)" if subsample != "all" else ""
    )
    if not test:
        raise DataError(f"{where} has no test images")
    if shots != -1 and not test_only and not train:
        raise DataError(f"{where} has no training images")
    if len(classnames) != 1 + max((d.label for d in (*train, *val, *test)), default=-1):
        raise DataError(
            f"dataset '{name}': labels are not contiguous from 0; check its split or class files"
        )
    info = {
        "num_classes_all": len(classnames_all),
        "shots": shots,
        "seed": seed,
        "subsample": subsample,
        "base_ratio": base_ratio,
    }
    return DatasetSplits(name, train, val, test, classnames, template, info)
