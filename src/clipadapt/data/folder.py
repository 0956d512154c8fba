"""A folder of the user's own images, one sub-folder per class."""

from __future__ import annotations

import os
import random

from ..errors import DataError
from .datum import Datum

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEST_FRACTION = 0.2


def _images_in(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _class_folders(root: str) -> list[str]:
    return sorted(f for f in os.listdir(root) if os.path.isdir(os.path.join(root, f)) and not f.startswith("."))


def read_classname_file(path: str, folders: list[str]) -> dict[str, str]:
    """Read 'folder display name' lines; every class folder needs exactly one line."""
    names: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(" ", 1)
            if parts[0]:
                names[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    missing = sorted(set(folders) - set(names))
    unknown = sorted(set(names) - set(folders))
    if missing or unknown:
        raise DataError(f"class-name file '{path}' does not match the class folders: "
                        f"no line for {missing or 'none'}; lines without a folder: {unknown or 'none'}")
    return names


def _read_split(split_dir: str, folders: list[str], names: dict[str, str]) -> list[Datum]:
    items = []
    for label, folder in enumerate(folders):
        path = os.path.join(split_dir, folder)
        if not os.path.isdir(path):
            continue
        items += [Datum(os.path.join(path, f), label, names[folder]) for f in _images_in(path)]
    return items


def read_image_folder(root: str) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Train/val/test from ROOT/{train,val,test}/<class>/ or, without train/, ROOT/<class>/ split 80/20."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"image folder '{root}' does not exist (expected one sub-folder of images per class)")
    has_splits = os.path.isdir(os.path.join(root, "train"))
    base = os.path.join(root, "train") if has_splits else root
    folders = _class_folders(base)
    if not folders:
        raise DataError(f"image folder '{base}' has no class sub-folders (expected one sub-folder per class)")
    name_file = os.path.join(root, "classnames.txt")
    names = read_classname_file(name_file, folders) if os.path.isfile(name_file) else {
        f: f.replace("_", " ") for f in folders}
    if has_splits:
        train = _read_split(base, folders, names)
        val = _read_split(os.path.join(root, "val"), folders, names)
        test = _read_split(os.path.join(root, "test"), folders, names)
        return train, val, test
    train, test = [], []
    for item_label, folder in enumerate(folders):
        items = [Datum(os.path.join(root, folder, f), item_label, names[folder])
                 for f in _images_in(os.path.join(root, folder))]
        random.Random(item_label).shuffle(items)  # a fixed split, the same on every machine
        n_test = max(1, round(len(items) * TEST_FRACTION)) if len(items) > 1 else 0
        test += items[:n_test]
        train += items[n_test:]
    return train, [], test
