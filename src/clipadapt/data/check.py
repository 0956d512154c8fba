"""`clipadapt datasets --data-root DIR`: which CoOp datasets are complete, and what exactly is missing."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..checks import unknown_name
from ..errors import DataError
from ..registry import SYNTHETIC_DATASET_NAMES, dataset_names
from . import build_dataset
from .coop import COOP_DATASETS, DATASETS_MD, CoopDataset, read_coop_dataset

_DRIVE = "the Google Drive link in DATASETS.md"
# Where CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md) says each part comes from.
SOURCES = {
    "imagenet": {
        "images": "https://image-net.org (ILSVRC2012 train and val, extracted to images/train, images/val)",
        "classnames.txt": _DRIVE + " (names copied from CLIP)",
    },
    "caltech101": {
        "101_ObjectCategories": "http://www.vision.caltech.edu/Image_Datasets/Caltech101/"
        "101_ObjectCategories.tar.gz",
        "split": _DRIVE,
    },
    "oxford_pets": {
        "images": "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
        "split": _DRIVE,
    },
    "stanford_cars": {
        "cars_train": "http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",
        "cars_test": "http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",
        "split": _DRIVE,
    },
    "oxford_flowers": {
        "jpg": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
        "split": _DRIVE,
    },
    "food101": {
        "images": "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (food-101.tar.gz)",
        "split": _DRIVE,
    },
    "fgvc_aircraft": {
        "*": "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz "
        "(its data/ folder, renamed fgvc_aircraft)"
    },
    "sun397": {
        "SUN397": "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
        "split": _DRIVE,
    },
    "dtd": {
        "images": "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        "split": _DRIVE,
    },
    "eurosat": {"2750": "http://madm.dfki.de/files/sentinel/EuroSAT.zip", "split": _DRIVE},
    "ucf101": {"UCF-101-midframes": _DRIVE + " (UCF-101-midframes.zip)", "split": _DRIVE},
    "imagenetv2": {
        "*": "https://github.com/modestyachts/ImageNetV2 (imagenetv2-matched-frequency.tar.gz); "
        "classnames.txt copied from imagenet/"
    },
    "imagenet_sketch": {
        "*": "https://github.com/HaohanWang/ImageNet-Sketch; classnames.txt copied from imagenet/"
    },
    "imagenet_a": {
        "*": "https://github.com/hendrycks/natural-adv-examples; classnames.txt copied from imagenet/"
    },
    "imagenet_r": {
        "*": "https://github.com/hendrycks/imagenet-r; classnames.txt copied from imagenet/"
    },
}


@dataclass
class DatasetState:
    """What a data root holds of one dataset."""

    name: str
    complete: bool
    classes: int = 0
    counts: tuple[int, int, int] = (0, 0, 0)  # train, val, test images listed
    missing: list[str] = field(default_factory=list)  # "path (where to get it)"
    missing_images: int = 0
    first_missing_images: list[str] = field(default_factory=list)
    note: str = ""  # instead of counts: why a complete dataset has none to show


def _source(spec: CoopDataset, part: str) -> str:
    sources = SOURCES.get(spec.name, {})
    return sources.get(part) or sources.get("*") or DATASETS_MD


def required_paths(spec: CoopDataset, root: str) -> list[tuple[str, str]]:
    """(path, part) of every file and folder the dataset's reader needs."""
    base = os.path.join(root, spec.folder)
    image_dir = os.path.join(base, spec.image_dir) if spec.image_dir else base
    if spec.reader == "split":
        parts = [
            (image_dir, spec.image_dir or "images"),
            (os.path.join(base, spec.split_file), "split"),
        ]
        # Stanford Cars' split paths start at its folder (cars_train/, cars_test/): the image check covers them.
        return parts[1:] if spec.name == "stanford_cars" else parts
    if spec.reader == "fgvc":
        return [(image_dir, "*"), (os.path.join(base, "variants.txt"), "*")] + [
            (os.path.join(base, f"images_variant_{s}.txt"), "*") for s in ("train", "val", "test")
        ]
    if spec.reader == "imagenet":
        return [
            (os.path.join(image_dir, "train"), "images"),
            (os.path.join(image_dir, "val"), "images"),
            (os.path.join(base, "classnames.txt"), "classnames.txt"),
        ]
    return [(image_dir, "*"), (os.path.join(base, "classnames.txt"), "*")]


def check_dataset(name: str, data_root: str, show: int = 3) -> DatasetState:
    """The state of one CoOp dataset under data_root: counts when complete, else what is missing."""
    spec = COOP_DATASETS[name]
    root = os.path.abspath(os.path.expanduser(data_root))
    missing = [
        f"{path} (get it from {_source(spec, part)})"
        for path, part in required_paths(spec, root)
        if not os.path.exists(path)
    ]
    if missing:
        return DatasetState(name, False, missing=missing)
    try:
        train, val, test = read_coop_dataset(spec, root)
    except DataError as err:
        return DatasetState(name, False, missing=[str(err)])
    items = (
        train + test if spec.reader == "imagenet" else train + val + test
    )  # ImageNet's val is its test set
    absent = [d.impath for d in dict.fromkeys(items) if not os.path.exists(d.impath)]
    labels = {d.label for d in items}
    counts = (len(train), 0 if spec.reader == "imagenet" else len(val), len(test))
    return DatasetState(name, not absent, len(labels), counts, [], len(absent), absent[:show])


def format_state(state: DatasetState) -> list[str]:
    """Lines describing one dataset's state."""
    if state.complete:
        if state.note:
            return [f"{state.name:<16} complete ({state.note})"]
        train, val, test = state.counts
        return [
            f"{state.name:<16} complete: {state.classes} classes, {train} train / {val} val / {test} test images"
        ]
    lines = [f"{state.name:<16} INCOMPLETE"]
    lines += [f"    missing: {m}" for m in state.missing]
    if state.missing_images:
        lines.append(
            f"    {state.missing_images} image(s) listed in its split file(s) are not on disk, e.g. "
            + ", ".join(state.first_missing_images)
            + f" (see {DATASETS_MD})"
        )
    return lines


def check_own_dataset(name: str, data_root: str) -> DatasetState:
    """The state of a dataset that is not CoOp's: an image folder read as `train` reads it; a synthetic
    one counted when rendered, else said to be rendered on first use (checking never renders it)."""
    # Deferred: numpy and the renderer load only for the synthetic world.
    from .synthetic import split_file_name

    root = os.path.abspath(os.path.expanduser(data_root))
    if name in SYNTHETIC_DATASET_NAMES:
        folder = os.path.join(root, "synthetic", name)
        if not os.path.exists(os.path.join(folder, split_file_name(name))):
            return DatasetState(
                name, True, note=f"generated: not rendered yet; `train` renders it into {folder}"
            )
    try:
        splits = build_dataset(name, root)
    except DataError as err:
        return DatasetState(name, False, missing=[str(err)])
    val = (
        [] if splits.val is splits.test else splits.val
    )  # a split without val scores on its test set
    return DatasetState(
        name, True, len(splits.classnames), (len(splits.train), len(val), len(splits.test))
    )


def check_data_root(data_root: str, names: list[str] | None = None) -> list[DatasetState]:
    """The state of each dataset asked for (default: CoOp's) under a data root; unknown names are an error.

    Every name `train` accepts can be checked: CoOp's by their files, a folder or a synthetic one by reading it."""
    names = names or list(COOP_DATASETS)
    for name in names:
        if name not in dataset_names():
            raise unknown_name("dataset", name, dataset_names())
    if not os.path.isdir(os.path.expanduser(data_root)):
        raise DataError(f"data root '{data_root}' is not a folder")
    return [
        check_dataset(name, data_root)
        if name in COOP_DATASETS
        else check_own_dataset(name, data_root)
        for name in names
    ]
