"""The CoOp benchmark datasets, read from the folder layout of CoOp's DATASETS.md.

Every reader returns full train/val/test lists; few-shot sampling and the base/new split are applied
by `build_dataset` exactly as Dassl applies them.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DataError
from .datum import Datum

DATASETS_MD = "CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"


@dataclass(frozen=True)
class CoopDataset:
    """Where a CoOp dataset lives under the data root and how its prompts read."""

    name: str
    folder: str  # under the data root
    image_dir: str  # under `folder`; "" when the split file paths start at `folder`
    reader: str  # "split", "fgvc", "imagenet", "imagenetv2", "imagenet_folders"
    split_file: str = ""
    template: str = "a photo of a {}."
    test_only: bool = False


COOP_DATASETS: dict[str, CoopDataset] = {
    d.name: d
    for d in [
        CoopDataset("imagenet", "imagenet", "images", "imagenet"),
        CoopDataset(
            "caltech101",
            "caltech-101",
            "101_ObjectCategories",
            "split",
            "split_zhou_Caltech101.json",
        ),
        CoopDataset(
            "oxford_pets",
            "oxford_pets",
            "images",
            "split",
            "split_zhou_OxfordPets.json",
            "a photo of a {}, a type of pet.",
        ),
        CoopDataset("stanford_cars", "stanford_cars", "", "split", "split_zhou_StanfordCars.json"),
        CoopDataset(
            "oxford_flowers",
            "oxford_flowers",
            "jpg",
            "split",
            "split_zhou_OxfordFlowers.json",
            "a photo of a {}, a type of flower.",
        ),
        CoopDataset(
            "food101",
            "food-101",
            "images",
            "split",
            "split_zhou_Food101.json",
            "a photo of {}, a type of food.",
        ),
        CoopDataset(
            "fgvc_aircraft",
            "fgvc_aircraft",
            "images",
            "fgvc",
            template="a photo of a {}, a type of aircraft.",
        ),
        CoopDataset("sun397", "sun397", "SUN397", "split", "split_zhou_SUN397.json"),
        CoopDataset(
            "dtd", "dtd", "images", "split", "split_zhou_DescribableTextures.json", "{} texture."
        ),
        CoopDataset(
            "eurosat",
            "eurosat",
            "2750",
            "split",
            "split_zhou_EuroSAT.json",
            "a centered satellite photo of {}.",
        ),
        CoopDataset(
            "ucf101",
            "ucf101",
            "UCF-101-midframes",
            "split",
            "split_zhou_UCF101.json",
            "a photo of a person doing {}.",
        ),
        CoopDataset(
            "imagenetv2",
            "imagenetv2",
            "imagenetv2-matched-frequency-format-val",
            "imagenetv2",
            test_only=True,
        ),
        CoopDataset(
            "imagenet_sketch", "imagenet-sketch", "images", "imagenet_folders", test_only=True
        ),
        CoopDataset(
            "imagenet_a", "imagenet-adversarial", "imagenet-a", "imagenet_folders", test_only=True
        ),
        CoopDataset(
            "imagenet_r", "imagenet-rendition", "imagenet-r", "imagenet_folders", test_only=True
        ),
    ]
}


def _require(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"missing {what}: '{path}' (see {DATASETS_MD} for how to get it)")


def _visible(path: str) -> list[str]:
    return [f for f in os.listdir(path) if not f.startswith(".")]


def read_split_file(path: str, image_dir: str) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Read a `split_zhou_*.json` file: lists of [relative path, label, class name]."""
    _require(path, "split file")
    try:
        with open(path) as f:
            split = json.load(f)
        return tuple(  # type: ignore[return-value]
            [Datum(os.path.join(image_dir, p), int(label), name) for p, label, name in split[key]]
            for key in ("train", "val", "test")
        )
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as err:
        raise DataError(
            f"split file '{path}' is not in CoOp's format "
            f"({{'train'|'val'|'test': [[path, label, classname], ...]}}): {err}"
        ) from err


def read_imagenet_classnames(path: str) -> OrderedDict[str, str]:
    """Read ImageNet's `classnames.txt`: one 'wnid class name' a line."""
    _require(path, "class-name file")
    names: OrderedDict[str, str] = OrderedDict()
    with open(path) as f:
        for line in f:
            parts = line.strip().split(" ")
            if parts and parts[0]:
                names[parts[0]] = " ".join(parts[1:])
    return names


def _read_class_folders(
    image_dir: str, folders: list[str], classnames: dict[str, str]
) -> list[Datum]:
    items = []
    for label, folder in enumerate(folders):
        if folder not in classnames:
            raise DataError(
                f"folder '{os.path.join(image_dir, folder)}' has no entry in classnames.txt"
            )
        # Dassl lists image files in file-system order; sorted here so every machine draws the same shots.
        for name in sorted(_visible(os.path.join(image_dir, folder))):
            items.append(Datum(os.path.join(image_dir, folder, name), label, classnames[folder]))
    return items


def _read_fgvc(root: str, image_dir: str) -> tuple[list[Datum], list[Datum], list[Datum]]:
    variants = os.path.join(root, "variants.txt")
    _require(variants, "class list")
    with open(variants) as f:
        classnames = [line.strip() for line in f if line.strip()]
    label_of = {c: i for i, c in enumerate(classnames)}

    def read(split_file: str) -> list[Datum]:
        path = os.path.join(root, split_file)
        _require(path, "split file")
        items = []
        with open(path) as f:
            for line in f:
                parts = line.strip().split(" ")
                if not parts[0]:
                    continue
                name = " ".join(parts[1:])
                if name not in label_of:
                    raise DataError(f"'{path}': class '{name}' is not listed in '{variants}'")
                items.append(
                    Datum(os.path.join(image_dir, parts[0] + ".jpg"), label_of[name], name)
                )
        return items

    return tuple(read(f"images_variant_{s}.txt") for s in ("train", "val", "test"))  # type: ignore[return-value]


def read_coop_dataset(
    spec: CoopDataset, data_root: str
) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Full train, val and test lists of a CoOp dataset (val is the test set for ImageNet, as in CoOp)."""
    root = os.path.join(os.path.abspath(os.path.expanduser(data_root)), spec.folder)
    _require(root, f"folder of dataset '{spec.name}'")
    image_dir = os.path.join(root, spec.image_dir) if spec.image_dir else root
    _require(image_dir, f"image folder of dataset '{spec.name}'")
    readers: dict[str, Callable[[], tuple]] = {
        "split": lambda: read_split_file(os.path.join(root, spec.split_file), image_dir),
        "fgvc": lambda: _read_fgvc(root, image_dir),
        "imagenet": lambda: _read_imagenet(root, image_dir),
        "imagenetv2": lambda: _read_imagenetv2(root, image_dir),
        "imagenet_folders": lambda: _read_imagenet_folders(root, image_dir),
    }
    return readers[spec.reader]()


def _read_imagenet(root: str, image_dir: str):
    classnames = read_imagenet_classnames(os.path.join(root, "classnames.txt"))

    def read(split: str) -> list[Datum]:
        split_dir = os.path.join(image_dir, split)
        _require(split_dir, "ImageNet split folder")
        folders = sorted(f.name for f in os.scandir(split_dir) if f.is_dir())
        return _read_class_folders(split_dir, folders, classnames)

    train, test = read("train"), read("val")
    return train, test, test


def _read_imagenetv2(root: str, image_dir: str):
    classnames = read_imagenet_classnames(os.path.join(root, "classnames.txt"))
    wnids = list(classnames)
    items = []
    for label in range(len(wnids)):
        class_dir = os.path.join(image_dir, str(label))
        _require(class_dir, "ImageNetV2 class folder")
        for name in sorted(_visible(class_dir)):
            items.append(Datum(os.path.join(class_dir, name), label, classnames[wnids[label]]))
    return [], [], items


def _read_imagenet_folders(root: str, image_dir: str):
    """ImageNet-Sketch, -A and -R: one folder per wnid; -A and -R hold a 200-class subset."""
    classnames = read_imagenet_classnames(os.path.join(root, "classnames.txt"))
    folders = sorted(f for f in _visible(image_dir) if os.path.isdir(os.path.join(image_dir, f)))
    return [], [], _read_class_folders(image_dir, folders, classnames)
