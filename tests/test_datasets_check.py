"""`clipadapt datasets --data-root DIR`: complete datasets counted, missing files and images named."""

import json
import os
import shutil

from clipadapt.cli import main
from clipadapt.data.coop import COOP_DATASETS


def test_a_complete_root_exits_0_with_counts(fake_root, capsys):
    assert main(["datasets", "--data-root", fake_root]) == 0
    out = capsys.readouterr().out
    assert f"{len(COOP_DATASETS)} of {len(COOP_DATASETS)} datasets complete" in out
    # make_coop_tree: 6 classes, 20 / 5 / 6 images a class; ImageNet's val is its test set; -A keeps 3 classes
    assert "dtd              complete: 6 classes, 120 train / 30 val / 36 test images" in out
    assert "imagenet         complete: 6 classes, 120 train / 0 val / 36 test images" in out
    assert "imagenet_a       complete: 3 classes, 0 train / 0 val / 18 test images" in out


def test_missing_files_and_images_are_named_with_their_source(fake_root, tmp_path, capsys):
    root = tmp_path / "data"
    for name in ("dtd", "eurosat"):
        shutil.copytree(
            os.path.join(fake_root, COOP_DATASETS[name].folder), root / COOP_DATASETS[name].folder
        )
    os.remove(root / "eurosat" / "split_zhou_EuroSAT.json")
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    gone = [split["test"][i][0] for i in (0, 1)]
    for rel in gone:
        os.remove(root / "dtd" / "images" / rel)
    assert main(["datasets", "--data-root", str(root), "--dataset", "dtd,eurosat,ucf101"]) == 1
    out = capsys.readouterr().out
    assert (
        f"missing: {root / 'eurosat' / 'split_zhou_EuroSAT.json'} (get it from the Google Drive link"
        in out
    )
    assert f"missing: {root / 'ucf101' / 'UCF-101-midframes'}" in out
    assert "2 image(s) listed in its split file(s) are not on disk" in out and gone[0] in out
    assert "0 of 3 datasets complete" in out
    assert main(["datasets", "--data-root", str(root), "--dataset", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err


def test_every_dataset_train_accepts_can_be_checked(tmp_path, capsys):
    """A synthetic dataset and an own folder are datasets `train` accepts: `datasets` checks them too."""
    from PIL import Image

    assert main(["datasets", "--data-root", str(tmp_path), "--dataset", "syn_shapes"]) == 0
    out = capsys.readouterr().out
    assert (
        "syn_shapes       complete (generated: not rendered yet" in out
        and "1 of 1 datasets complete" in out
    )
    assert not (tmp_path / "synthetic").exists()  # checking never renders it
    photos = tmp_path / "photos"
    for c in ("cat", "dog"):
        (photos / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(photos / c / f"{i}.png")
    assert main(["datasets", "--data-root", str(photos), "--dataset", "folder"]) == 0
    assert (
        "folder           complete: 2 classes, 8 train / 0 val / 2 test images"
        in capsys.readouterr().out
    )
    (photos / "empty").mkdir()
    assert main(["datasets", "--data-root", str(photos), "--dataset", "folder"]) == 1
    out = capsys.readouterr().out
    assert (
        "folder           INCOMPLETE" in out
        and "empty' has no images" in out
        and "DATASETS.md" not in out
    )
