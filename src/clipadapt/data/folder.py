"""A folder of the user's own images, one sub-folder per class."""

from __future__ import annotations

import os
import random

from ..errors import DataError
from .datum import Datum

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEST_FRACTION = 0.2


def _images_in(folder: str) -> list[str]:
    return sorted(
        f
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
    )


def _class_folders(root: str) -> list[str]:
    return sorted(
        f
        for f in os.listdir(root)
        if os.path.isdir(os.path.join(root, f)) and not f.startswith(".")
    )


def read_classname_file(path: str, folders: list[str]) -> dict[str, str]:
    """Read 'folder display name' lines; every class folder needs exactly one line, every name is distinct."""
    names: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(" ", 1)
            if parts[0]:
                names[parts[0]] = parts[1].strip() if len(parts) > 1 else parts[0]
    missing = sorted(set(folders) - set(names))
    unknown = sorted(set(names) - set(folders))
    if missing or unknown:
        raise DataError(
            f"class-name file '{path}' does not match the class folders: "
            f"no line for {missing or 'none'}; lines without a folder: {unknown or 'none'}"
        )
    check_distinct(list(names.values()), f"class-name file '{path}'")
    return names


def check_distinct(names: list[str], where: str) -> None:
    """Refuse repeated class names: two prompts for one name would split its probability."""
    seen: set[str] = set()
    repeated = sorted({n for n in names if n in seen or seen.add(n)})
    if repeated:
        raise DataError(f"{where} names a class more than once: {', '.join(repeated)}")


def _read_split(
    split_dir: str, folders: list[str], names: dict[str, str], require_all: bool
) -> list[Datum]:
    if not os.path.isdir(split_dir):
        raise DataError(
            f"image folder '{os.path.dirname(split_dir)}' has train/ but no {os.path.basename(split_dir)}/ "
            "folder (give it one sub-folder per class, or put the class folders at the top level "
            "to split 80/20)"
        )
    items = []
    for label, folder in enumerate(folders):
        path = os.path.join(split_dir, folder)
        images = _images_in(path) if os.path.isdir(path) else []
        if not images and require_all:
            raise DataError(f"class folder '{path}' has no images ({', '.join(IMAGE_EXTENSIONS)})")
        items += [Datum(os.path.join(path, f), label, names[folder]) for f in images]
    return items


def check_same_classes(root: str, train_folders: list[str]) -> None:
    """Refuse a test/ whose class folders are not train/'s: each class is scored against the trained ones."""
    test_dir = os.path.join(root, "test")
    if not os.path.isdir(test_dir):
        return  # _read_split says test/ is missing
    test_folders = _class_folders(test_dir)
    only_train = sorted(set(train_folders) - set(test_folders))
    only_test = sorted(set(test_folders) - set(train_folders))
    if only_train or only_test:
        raise DataError(
            f"image folder '{root}': train/ and test/ hold different classes (only in train/: "
            f"{', '.join(only_train) or 'none'}; only in test/: {', '.join(only_test) or 'none'}); "
            "give both the same class sub-folders"
        )


def read_image_folder(root: str) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Train/val/test from ROOT/{train,val,test}/<class>/ or, without train/, ROOT/<class>/ split 80/20."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(
            f"image folder '{root}' does not exist (expected one sub-folder of images per class)"
        )
    has_splits = os.path.isdir(os.path.join(root, "train"))
    base = os.path.join(root, "train") if has_splits else root
    folders = _class_folders(base)
    if not folders:
        raise DataError(
            f"image folder '{base}' has no class sub-folders (expected one sub-folder per class)"
        )
    name_file = os.path.join(root, "classnames.txt")
    names = (
        read_classname_file(name_file, folders)
        if os.path.isfile(name_file)
        else {f: f.replace("_", " ") for f in folders}
    )
    check_distinct(list(names.values()), f"image folder '{root}'")
    if has_splits:
        train = _read_split(base, folders, names, require_all=True)
        val_dir = os.path.join(root, "val")
        val = (
            _read_split(val_dir, folders, names, require_all=False)
            if os.path.isdir(val_dir)
            else []
        )
        check_same_classes(root, folders)
        test = _read_split(os.path.join(root, "test"), folders, names, require_all=True)
        return train, val, test
    train, test = [], []
    for item_label, folder in enumerate(folders):
        images = _images_in(os.path.join(root, folder))
        if not images:
            raise DataError(
                f"class folder '{os.path.join(root, folder)}' has no images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        items = [Datum(os.path.join(root, folder, f), item_label, names[folder]) for f in images]
        random.Random(item_label).shuffle(items)  # a fixed split, the same on every machine
        n_test = max(1, round(len(items) * TEST_FRACTION)) if len(items) > 1 else 0
        test += items[:n_test]
        train += items[n_test:]
    return train, [], test
