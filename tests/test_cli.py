"""The command line: outputs written, and one clear line with exit code 2 on bad input."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from clipadapt.cli import main

TINY = ["--backbone", "clipadapt-tiny", "--pretrained", "none"]


def _eval(fake_root, out, *extra):
    return main(["eval", "--dataset", "caltech101", "--data-root", fake_root, "--out", str(out), *TINY, *extra])


def _one_line_error(capsys, code, *fragments):
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "clipadapt: error:" in line]
    assert code == 2
    assert len(errors) == 1, stderr  # progress-bar lines may precede it
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_eval_writes_metrics_and_predictions(fake_root, tmp_path):
    assert _eval(fake_root, tmp_path, "--subsample", "new", "--save-predictions") == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("accuracy", "num_images", "dataset", "subsample", "method", "backbone"):
        assert key in metrics
    assert metrics["subsample"] == "new" and metrics["method"] == "zeroshot" and metrics["num_images"] == 18
    rows = list(csv.reader(open(tmp_path / "predictions.csv")))
    assert rows[0][:3] == ["impath", "label", "prediction"] and len(rows) == 19
    correct = sum(int(r[1]) == int(r[2]) for r in rows[1:])
    assert metrics["accuracy"] == pytest.approx(100 * correct / 18, abs=1e-3)


def test_finished_run_is_not_overwritten(fake_root, tmp_path, capsys):
    assert _eval(fake_root, tmp_path) == 0
    before = (tmp_path / "metrics.json").read_text()
    _one_line_error(capsys, _eval(fake_root, tmp_path), "--overwrite")
    assert (tmp_path / "metrics.json").read_text() == before
    assert _eval(fake_root, tmp_path, "--overwrite") == 0


def test_missing_data_root(tmp_path, capsys):
    code = main(["eval", "--dataset", "dtd", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 *TINY])
    _one_line_error(capsys, code, "nowhere", "DATASETS.md")


def test_missing_split_file(tmp_path, capsys):
    os.makedirs(tmp_path / "eurosat" / "2750")
    code = main(["eval", "--dataset", "eurosat", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), *TINY])
    _one_line_error(capsys, code, "split_zhou_EuroSAT.json", "DATASETS.md")


def test_unknown_dataset_and_method(fake_root, tmp_path, capsys):
    code = main(["eval", "--dataset", "mnist", "--data-root", fake_root, "--out", str(tmp_path), *TINY])
    _one_line_error(capsys, code, "mnist", "caltech101", "imagenet_r")
    code = main(["eval", "--method", "magic", "--dataset", "dtd", "--data-root", fake_root, "--out",
                 str(tmp_path), *TINY])
    _one_line_error(capsys, code, "magic", "zeroshot")


def test_unreadable_image_names_its_path(fake_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(fake_root, "dtd"), root / "dtd")
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    broken = root / "dtd" / "images" / split["test"][3][0]
    broken.write_bytes(b"not an image")
    code = main(["eval", "--dataset", "dtd", "--data-root", str(root), "--out", str(tmp_path / "o"), *TINY])
    _one_line_error(capsys, code, str(broken))
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_help_texts():
    out = subprocess.run([sys.executable, "-m", "clipadapt.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "eval" in out.stdout
    out = subprocess.run([sys.executable, "-m", "clipadapt.cli", "eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--subsample" in out.stdout and "--save-predictions" in out.stdout


def test_info_prints_trainable_parameters(capsys):
    assert main(["info", "--method", "mma", "--backbone", "ViT-B-16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 674_560
    assert main(["info", "--method", "zeroshot", "--backbone", "clipadapt-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 0


def test_predict_with_class_names_never_trained_on(fake_root, tmp_path, capsys):
    from clipadapt.model import build_model

    model = build_model("mma", ["class_000", "class_001"], backbone="clipadapt-tiny", pretrained="none")
    ckpt = str(tmp_path / "a.safetensors")
    model.save_adapter(ckpt)
    images = [os.path.join(fake_root, "dtd", "images", "class_000", f"class_000_{i:04d}.jpg") for i in range(3)]
    assert main(["predict", "--checkpoint", ckpt, "--classes", "red disc, green square, blue thing",
                 "--top-k", "2", "--json", *images]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == images
    assert all(len(line["top"]) == 2 and line["top"][0]["class"] in ("red disc", "green square", "blue thing")
               for line in lines)
    code = main(["predict", "--checkpoint", ckpt, "--classes", "one", *images])
    _one_line_error(capsys, code, "two class names")
    code = main(["predict", "--checkpoint", ckpt, "--classes", "a,b", str(tmp_path / "missing.jpg")])
    _one_line_error(capsys, code, "missing.jpg")
