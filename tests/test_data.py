"""CoOp-layout loaders, Dassl's few-shot draw and base/new split, transforms."""

import json
import math
import os
import random
from collections import defaultdict

import pytest
from fake_datasets import make_coop_tree
from torchvision import transforms as T

from clipadapt.data import build_dataset
from clipadapt.data import transforms as tf
from clipadapt.data.coop import COOP_DATASETS
from clipadapt.data.datum import Datum
from clipadapt.data.fewshot import sample_few_shot
from clipadapt.errors import DataError


# --- Dassl's code as CoOp runs it: the global `random`, seeded once (set_random_seed), then
# generate_fewshot_dataset(train, num_shots=K) and generate_fewshot_dataset(val, num_shots=min(K, 4))
# with Dassl's default repeat=False, then OxfordPets.subsample_classes(train, val, test).
def dassl_generate_fewshot_dataset(data_source, num_shots, repeat=False):
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for _, items in tracker.items():
        if len(items) >= num_shots:
            sampled_items = random.sample(items, num_shots)
        else:
            sampled_items = random.choices(items, k=num_shots) if repeat else items
        dataset.extend(sampled_items)
    return dataset


def dassl_reference(train, val, shots, seed, subsample, val_is_test=False):
    random.seed(seed)
    train = dassl_generate_fewshot_dataset(train, num_shots=shots)
    if not val_is_test:
        val = dassl_generate_fewshot_dataset(val, num_shots=min(shots, 4))
    labels = sorted({d.label for d in train})
    m = math.ceil(len(labels) / 2)
    if subsample == "all":
        return train, val
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}

    def keep(items):
        return [
            Datum(d.impath, relabel[d.label], d.classname) for d in items if d.label in selected
        ]

    return keep(train), keep(val)


def _items(n_classes, per_class, shuffle_seed=0):
    items = [
        Datum(f"img_{c}_{i}.jpg", c, f"class {c}")
        for c in range(n_classes)
        for i in range(per_class[c])
    ]
    random.Random(shuffle_seed).shuffle(
        items
    )  # labels appear in a mixed order, as in real split files
    return items


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("subsample", ["all", "base", "new"])
def test_fewshot_matches_dassl_on_split_dataset(fake_root, seed, subsample):
    full = build_dataset("oxford_pets", fake_root, shots=-1)
    ours = build_dataset("oxford_pets", fake_root, shots=16, seed=seed, subsample=subsample)
    ref_train, ref_val = dassl_reference(full.train, full.val, 16, seed, subsample)
    assert ours.train == ref_train
    assert ours.val == ref_val
    assert len(ours.train) == 16 * ours.num_classes
    assert len(ours.val) == 4 * ours.num_classes  # 5 val images a class: min(16, 4) drawn


# (train, val, test) images per class: some classes are shorter than K for the train or the val draw.
SHORT_CLASS_SIZES = [(20, 6, 2), (3, 2, 2), (16, 5, 2), (5, 1, 2), (1, 4, 2), (9, 3, 2), (2, 5, 2)]


@pytest.fixture(scope="module")
def short_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    for name, spec in COOP_DATASETS.items():
        if not spec.test_only:
            make_coop_tree(str(root), name, class_sizes=SHORT_CLASS_SIZES, size=8)
    return str(root)


@pytest.mark.parametrize("name", [n for n, s in COOP_DATASETS.items() if not s.test_only])
def test_fewshot_matches_dassl_with_short_classes_on_every_loader(short_root, name):
    full = build_dataset(name, short_root, shots=-1)
    val_is_test = COOP_DATASETS[name].reader == "imagenet"
    for shots in (1, 2, 4, 8, 16):
        for seed in (1, 2):
            for subsample in ("all", "base", "new"):
                ours = build_dataset(name, short_root, shots=shots, seed=seed, subsample=subsample)
                ref_train, ref_val = dassl_reference(
                    full.train, full.val, shots, seed, subsample, val_is_test
                )
                assert ours.train == ref_train, (shots, seed, subsample)
                assert ours.val == (ours.test if val_is_test else ref_val), (shots, seed, subsample)
    # A short class keeps each of its images once, in order: no duplicates.
    draw = build_dataset(name, short_root, shots=16, seed=1)
    assert len({d.impath for d in draw.train}) == len(draw.train)
    assert len(draw.train) == sum(min(16, t) for t, _, _ in SHORT_CLASS_SIZES)
    short = [d.impath for d in draw.train if d.label == 1]
    assert short == [d.impath for d in full.train if d.label == 1]


def test_fewshot_matches_dassl_with_short_classes_and_mixed_order():
    items = _items(7, [30, 2, 16, 5, 40, 1, 17])
    for shots in (1, 2, 4, 8, 16):
        for seed in (1, 2, 3):
            ours = sample_few_shot(items, shots, random.Random(seed))
            random.seed(seed)
            assert ours == dassl_generate_fewshot_dataset(items, num_shots=shots)
            # Dassl's repeat=True reading stays reachable from Python.
            ours = sample_few_shot(items, shots, random.Random(seed), repeat=True)
            random.seed(seed)
            assert ours == dassl_generate_fewshot_dataset(items, num_shots=shots, repeat=True)


def test_short_class_consumes_no_random_numbers():
    # Dassl makes no random call for a class shorter than K, so the draw of the classes after it is
    # the same as if it were not there.
    items = _items(3, [10, 2, 10])
    without = [d for d in items if d.label != 1]
    a = [d for d in sample_few_shot(items, 4, random.Random(5)) if d.label != 1]
    b = sample_few_shot(without, 4, random.Random(5))
    assert a == b


def test_fewshot_draw_is_pinned():
    # A regression anchor: Python's seeded `random` draws these exact items, here and under Dassl.
    items = [Datum(f"{i}.jpg", 0, "a") for i in range(10)]
    picked = [d.impath for d in sample_few_shot(items, 3, random.Random(1))]
    assert picked == ["2.jpg", "1.jpg", "4.jpg"]


def test_base_and_new_share_one_draw(fake_root):
    full = build_dataset("dtd", fake_root, shots=4, seed=1)
    base = build_dataset("dtd", fake_root, shots=4, seed=1, subsample="base")
    new = build_dataset("dtd", fake_root, shots=4, seed=1, subsample="new")
    n = full.num_classes
    assert base.classnames == full.classnames[: math.ceil(n / 2)]
    assert new.classnames == full.classnames[math.ceil(n / 2) :]
    assert {d.impath for d in base.train} | {d.impath for d in new.train} == {
        d.impath for d in full.train
    }
    assert sorted({d.label for d in new.test}) == list(range(len(new.classnames)))


def test_odd_class_count_puts_extra_class_in_base(tmp_path):
    from fake_datasets import make_coop_tree

    make_coop_tree(str(tmp_path), "eurosat", num_classes=5, per_class=(3, 1, 1))
    assert len(build_dataset("eurosat", str(tmp_path), subsample="base").classnames) == 3
    assert len(build_dataset("eurosat", str(tmp_path), subsample="new").classnames) == 2


@pytest.mark.parametrize("name", list(COOP_DATASETS))
def test_every_coop_dataset_loads(fake_root, name):
    spec = COOP_DATASETS[name]
    data = build_dataset(name, fake_root, shots=2, seed=1)
    assert data.template == spec.template
    assert data.test and all(os.path.isfile(d.impath) for d in data.test)
    assert data.classnames == [data_name for data_name in data.classnames]
    for d in data.test:
        assert data.classnames[d.label] == d.classname
    if spec.test_only:
        assert data.train == []
    else:
        assert len(data.train) == 2 * data.num_classes
    if name == "imagenet":
        assert data.val == data.test  # CoOp evaluates ImageNet's val folder as test and val
    if name in ("imagenet_a", "imagenet_r"):
        # a subset of the classes in classnames.txt, labelled 0.. over the folders present
        assert data.num_classes == 3 and data.classnames == ["class_000", "class_002", "class_004"]


def test_split_file_paths_are_joined_to_the_image_folder(fake_root):
    data = build_dataset("caltech101", fake_root)
    assert data.train[0].impath.startswith(
        os.path.join(fake_root, "caltech-101", "101_ObjectCategories")
    )
    with open(os.path.join(fake_root, "caltech-101", "split_zhou_Caltech101.json")) as f:
        split = json.load(f)
    assert [d.impath for d in data.test] == [
        os.path.join(fake_root, "caltech-101", "101_ObjectCategories", p)
        for p, _, _ in split["test"]
    ]


def test_missing_split_file_names_it_and_coop_docs(tmp_path):
    os.makedirs(tmp_path / "dtd" / "images")
    with pytest.raises(DataError, match=r"split_zhou_DescribableTextures\.json.*DATASETS\.md"):
        build_dataset("dtd", str(tmp_path))


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(DataError, match="known datasets: imagenet, caltech101"):
        build_dataset("cifar", str(tmp_path))


def test_image_folder_dataset(tmp_path):
    from fake_datasets import draw_class_image

    for label, name in enumerate(["red_apple", "green_pear"]):
        os.makedirs(tmp_path / name)
        for i in range(10):
            draw_class_image(label, i).save(tmp_path / name / f"{i}.png")
    data = build_dataset("folder", str(tmp_path), shots=4, seed=1)
    assert data.classnames == ["green pear", "red apple"]  # sorted folder names
    assert len(data.train) == 8 and len(data.test) == 4
    assert not {d.impath for d in data.train} & {d.impath for d in data.test}
    (tmp_path / "classnames.txt").write_text("red_apple apple\n")
    with pytest.raises(DataError, match="does not match"):
        build_dataset("folder", str(tmp_path))


def test_transforms_follow_coop():
    train = tf.train_transform(224, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    crop = train.transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.08, 1.0)
    assert crop.interpolation == T.InterpolationMode.BICUBIC and crop.size == (224, 224)
    assert isinstance(train.transforms[1], T.RandomHorizontalFlip)
    test = tf.test_transform(224, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert isinstance(test.transforms[0], T.Resize) and test.transforms[0].size == 224
    assert test.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(test.transforms[1], T.CenterCrop)
    assert test.transforms[-1].mean == (0.1, 0.2, 0.3)
