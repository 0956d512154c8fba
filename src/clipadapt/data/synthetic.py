"""Classification datasets drawn from the synthetic world, written once in CoOp's split-file layout.

Each dataset fixes some factors per class (its class set) and draws the others at random. The
files go to DATA_ROOT/synthetic/<name>/ (images/ and split_zhou_<name>.json) the first time the
dataset is asked for, deterministically, and are read back like any CoOp dataset afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field

from PIL import Image

from ..synthetic.render import COLOURS, SHAPES, plural, random_scene, render
from .coop import read_split_file
from .datum import Datum


@dataclass(frozen=True)
class SyntheticDataset:
    """A class set over the world's factors, the factors every image shares, and the split sizes."""

    name: str
    template: str
    classes: tuple[tuple[str, tuple[tuple[str, object], ...]], ...]  # (class name, fixed factors)
    shared: tuple[tuple[str, object], ...] = ()
    per_class: tuple[int, int, int] = (24, 6, 30)  # train, val, test images per class
    test_only: bool = False
    description: str = field(default="", compare=False)


def _classes(names_and_factors) -> tuple:
    return tuple((name, tuple(sorted(factors.items()))) for name, factors in names_and_factors)


# Every colour with two shapes and every shape with two colours; the base half (first 10 labels)
# and the novel half use the same words in new pairs.
_OBJECT_PAIRS = [(list(COLOURS)[i % 10], SHAPES[(3 * i + i // 10) % 10]) for i in range(20)]
_OBJECTS = _classes((f"{c} {s}", {"colour": c, "shape": s}) for c, s in _OBJECT_PAIRS)
_OBJECT_DOMAIN = (("style", "photo"),)

SYNTHETIC_DATASETS: dict[str, SyntheticDataset] = {
    d.name: d
    for d in [
        SyntheticDataset(
            "syn_shapes",
            "a photo of a {}.",
            _classes((s, {"shape": s}) for s in SHAPES),
            description="10 shapes, every other factor random",
        ),
        SyntheticDataset(
            "syn_colours",
            "a photo of a {} shape.",
            _classes((c, {"colour": c}) for c in COLOURS),
            description="10 colours, every other factor random",
        ),
        SyntheticDataset(
            "syn_objects",
            "a photo of a {}.",
            _OBJECTS,
            _OBJECT_DOMAIN + (("background", "plain"),),
            description="20 colour-shape pairs, photos on plain backgrounds (source of the DG protocol)",
        ),
        SyntheticDataset(
            "syn_patterns",
            "a photo of a {}.",
            _classes(
                (f"{p} {s}", {"pattern": p, "shape": s})
                for s in ("circle", "square", "heart")
                for p in ("plain", "striped", "dotted", "checkered")
            ),
            (("style", "photo"),),
            description="12 pattern-shape pairs, photos",
        ),
        SyntheticDataset(
            "syn_counts",
            "a photo of {}.",
            _classes(
                (f"{w} {plural(s)}", {"count": n, "shape": s})
                for s in ("circle", "square", "star", "triangle", "ring", "cross")
                for n, w in ((2, "two"), (3, "three"))
            ),
            description="12 count-shape pairs",
        ),
        SyntheticDataset(
            "syn_layouts",
            "a photo of a {}.",
            _classes(
                (f"{s} on the {p}", {"position": p, "shape": s, "count": 1})
                for s in ("circle", "star", "heart")
                for p in ("left", "right", "top", "bottom")
            ),
            description="12 position-shape pairs, one object",
        ),
        SyntheticDataset(
            "syn_objects_sketch",
            "a photo of a {}.",
            _OBJECTS,
            (("style", "sketch"),),
            (0, 0, 30),
            True,
            description="syn_objects as sketches (DG target)",
        ),
        SyntheticDataset(
            "syn_objects_noise",
            "a photo of a {}.",
            _OBJECTS,
            _OBJECT_DOMAIN + (("background", "plain"), ("noise", 0.25)),
            (0, 0, 30),
            True,
            description="syn_objects with heavy pixel noise (DG target)",
        ),
        SyntheticDataset(
            "syn_objects_clutter",
            "a photo of a {}.",
            _OBJECTS,
            _OBJECT_DOMAIN + (("background", "grid"),),
            (0, 0, 30),
            True,
            description="syn_objects on grid backgrounds (DG target)",
        ),
    ]
}

BENCHMARK = [
    "syn_shapes",
    "syn_colours",
    "syn_objects",
    "syn_patterns",
    "syn_counts",
    "syn_layouts",
]
DG_TARGETS = {"syn_objects": ["syn_objects_sketch", "syn_objects_noise", "syn_objects_clutter"]}


def split_file_name(name: str) -> str:
    """The split file of a synthetic dataset, named as CoOp names its files."""
    return f"split_zhou_{name}.json"


def generate(spec: SyntheticDataset, folder: str) -> None:
    """Render the dataset into `folder` (written to a temporary folder, then moved into place)."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{spec.name}.", dir=parent)
    try:
        rng = random.Random(zlib.crc32(spec.name.encode()))
        split = {"train": [], "val": [], "test": []}
        for label, (classname, fixed) in enumerate(spec.classes):
            os.makedirs(os.path.join(tmp, "images", f"{label:03d}"))
            for split_name, n in zip(("train", "val", "test"), spec.per_class, strict=True):
                for i in range(n):
                    scene = random_scene(rng, **dict(spec.shared), **dict(fixed))
                    rel = f"{label:03d}/{split_name}_{i:03d}.png"
                    Image.fromarray(render(scene)).save(os.path.join(tmp, "images", rel))
                    split[split_name].append([rel, label, classname])
        with open(os.path.join(tmp, split_file_name(spec.name)), "w") as f:
            json.dump(split, f)
        if os.path.isdir(folder):  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def read_synthetic(name: str, root: str) -> tuple[list[Datum], list[Datum], list[Datum], str]:
    """Train, val, test items and the prompt template; renders the dataset under root on first use."""
    spec = SYNTHETIC_DATASETS[name]
    folder = os.path.join(os.path.abspath(os.path.expanduser(root)), "synthetic", name)
    if not os.path.exists(os.path.join(folder, split_file_name(name))):
        generate(spec, folder)
    train, val, test = read_split_file(
        os.path.join(folder, split_file_name(name)), os.path.join(folder, "images")
    )
    return train, val, test, spec.template
