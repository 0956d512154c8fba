"""Small generated dataset trees in the CoOp folder layout: a test fixture (not shipped in the package).

Images are tiny: a coloured shape on a noisy background, the colour and shape set by the class, so
that a model can learn them and a reader can check which class an image belongs to.
"""

from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageDraw

from clipadapt.data.coop import COOP_DATASETS

PALETTE = [
    (220, 40, 40),
    (40, 160, 60),
    (40, 80, 220),
    (230, 200, 40),
    (160, 60, 200),
    (40, 200, 210),
    (240, 130, 30),
    (120, 120, 120),
    (250, 250, 250),
    (90, 50, 20),
]


def draw_class_image(label: int, index: int, size: int = 32) -> Image.Image:
    """A noisy image whose colour and shape depend on the label."""
    rng = random.Random(label * 100003 + index)
    bg = tuple(rng.randint(0, 60) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    colour = PALETTE[label % len(PALETTE)]
    jitter = rng.randint(-size // 8, size // 8)
    box = (size // 4 + jitter, size // 4 - jitter, 3 * size // 4 + jitter, 3 * size // 4 - jitter)
    if (label // len(PALETTE)) % 2 == 0:
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    return img


def _write_images(folder: str, label: int, names: list[str], size: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        draw_class_image(label, i, size).save(os.path.join(folder, name))


def make_coop_tree(
    root: str,
    dataset: str,
    num_classes: int = 6,
    per_class: tuple[int, int, int] = (20, 5, 6),
    size: int = 32,
    class_sizes: list[tuple[int, int, int]] | None = None,
) -> list[str]:
    """Write a fake `dataset` under `root` in CoOp's layout; returns its class names.

    `class_sizes` gives (train, val, test) counts per class (e.g. short classes); else every class
    has `per_class`."""
    spec = COOP_DATASETS[dataset]
    base = os.path.join(root, spec.folder)
    image_dir = os.path.join(base, spec.image_dir) if spec.image_dir else base
    sizes = list(class_sizes) if class_sizes is not None else [tuple(per_class)] * num_classes
    num_classes = len(sizes)
    classnames = [f"class_{i:03d}" for i in range(num_classes)]
    if spec.reader == "split":
        split = {"train": [], "val": [], "test": []}
        for label, name in enumerate(classnames):
            n_train, n_val, n_test = sizes[label]
            files = [f"{name}_{j:04d}.jpg" for j in range(n_train + n_val + n_test)]
            _write_images(os.path.join(image_dir, name), label, files, size)
            rel = [f"{name}/{f}" for f in files]
            split["train"] += [[p, label, name] for p in rel[:n_train]]
            split["val"] += [[p, label, name] for p in rel[n_train : n_train + n_val]]
            split["test"] += [[p, label, name] for p in rel[n_train + n_val :]]
        with open(os.path.join(base, spec.split_file), "w") as f:
            json.dump(split, f)
    elif spec.reader == "fgvc":
        os.makedirs(image_dir, exist_ok=True)
        with open(os.path.join(base, "variants.txt"), "w") as f:
            f.write("\n".join(n.replace("_", " ") for n in classnames) + "\n")
        counter = 1000000
        for which, split_name in enumerate(("train", "val", "test")):
            lines = []
            for label, name in enumerate(classnames):
                for j in range(sizes[label][which]):
                    counter += 1
                    draw_class_image(label, counter, size).save(
                        os.path.join(image_dir, f"{counter}.jpg")
                    )
                    lines.append(f"{counter} {name.replace('_', ' ')}")
            with open(os.path.join(base, f"images_variant_{split_name}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    else:
        wnids = [f"n{label:08d}" for label in range(num_classes)]
        os.makedirs(base, exist_ok=True)
        with open(os.path.join(base, "classnames.txt"), "w") as f:
            f.write("".join(f"{w} {n}\n" for w, n in zip(wnids, classnames, strict=True)))
        if spec.reader == "imagenet":
            for split_name, which in (("train", 0), ("val", 2)):
                for label, wnid in enumerate(wnids):
                    _write_images(
                        os.path.join(image_dir, split_name, wnid),
                        label,
                        [f"{wnid}_{j:04d}.JPEG" for j in range(sizes[label][which])],
                        size,
                    )
        elif spec.reader == "imagenetv2":
            for label in range(num_classes):
                _write_images(
                    os.path.join(image_dir, str(label)),
                    label,
                    [f"{j}.jpeg" for j in range(sizes[label][2])],
                    size,
                )
        else:  # -Sketch, -A, -R: every other class only, as -A and -R hold a subset of ImageNet's classes
            for label, wnid in enumerate(wnids):
                if dataset != "imagenet_sketch" and label % 2:
                    continue
                _write_images(
                    os.path.join(image_dir, wnid),
                    label,
                    [f"{j}.jpg" for j in range(sizes[label][2])],
                    size,
                )
    return classnames
