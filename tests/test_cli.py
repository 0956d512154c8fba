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
    return main(
        [
            "eval",
            "--dataset",
            "caltech101",
            "--data-root",
            fake_root,
            "--out",
            str(out),
            *TINY,
            *extra,
        ]
    )


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
    assert (
        metrics["subsample"] == "new"
        and metrics["method"] == "zeroshot"
        and metrics["num_images"] == 18
    )
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == 18 and "prediction" not in rows[0] and "top4" not in rows[0]
    correct = sum(r["label"] == r["top1"] for r in rows)
    assert metrics["accuracy"] == pytest.approx(100 * correct / 18, abs=1e-3)
    names = {f"class_{i:03d}".replace("_", " ") for i in range(10)} | {
        f"class_{i:03d}" for i in range(10)
    }
    for r in rows:  # class names beside the indices, scores as probabilities, best first
        assert r["label_name"] in names and r["top1_name"] in names
        scores = [float(r[f"top{k}_score"]) for k in range(1, 4)]  # 3 novel classes: top-3
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_finished_run_is_not_overwritten(fake_root, tmp_path, capsys):
    assert _eval(fake_root, tmp_path) == 0
    before = (tmp_path / "metrics.json").read_text()
    _one_line_error(capsys, _eval(fake_root, tmp_path), "--overwrite")
    assert (tmp_path / "metrics.json").read_text() == before
    assert _eval(fake_root, tmp_path, "--overwrite") == 0


def test_missing_data_root(tmp_path, capsys):
    code = main(
        [
            "eval",
            "--dataset",
            "dtd",
            "--data-root",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "o"),
            *TINY,
        ]
    )
    _one_line_error(capsys, code, "nowhere", "DATASETS.md")


def test_missing_split_file(tmp_path, capsys):
    os.makedirs(tmp_path / "eurosat" / "2750")
    code = main(
        [
            "eval",
            "--dataset",
            "eurosat",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            *TINY,
        ]
    )
    _one_line_error(capsys, code, "split_zhou_EuroSAT.json", "DATASETS.md")


def test_unknown_dataset_and_method(fake_root, tmp_path, capsys):
    code = main(
        ["eval", "--dataset", "mnist", "--data-root", fake_root, "--out", str(tmp_path), *TINY]
    )
    _one_line_error(capsys, code, "mnist", "caltech101", "imagenet_r")
    code = main(
        [
            "eval",
            "--method",
            "magic",
            "--dataset",
            "dtd",
            "--data-root",
            fake_root,
            "--out",
            str(tmp_path),
            *TINY,
        ]
    )
    _one_line_error(capsys, code, "magic", "zeroshot")


def test_unreadable_image_names_its_path(fake_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(fake_root, "dtd"), root / "dtd")
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    broken = root / "dtd" / "images" / split["test"][3][0]
    broken.write_bytes(b"not an image")
    code = main(
        ["eval", "--dataset", "dtd", "--data-root", str(root), "--out", str(tmp_path / "o"), *TINY]
    )
    _one_line_error(capsys, code, str(broken))
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_help_texts():
    out = subprocess.run(
        [sys.executable, "-m", "clipadapt", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "eval" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "clipadapt", "eval", "--help"], capture_output=True, text=True
    )
    assert (
        out.returncode == 0 and "--subsample" in out.stdout and "--save-predictions" in out.stdout
    )


def test_building_the_parser_imports_no_torch():
    # `clipadapt --help` must start fast: benchmarks/cli_startup.py measures it.
    code = (
        "import sys; from clipadapt.cli import build_parser; build_parser(); print(sorted(m for m in "
        "('torch', 'open_clip', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_info_prints_trainable_parameters(capsys):
    assert main(["info", "--method", "mma", "--backbone", "ViT-B-16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 674_560
    assert main(["info", "--method", "zeroshot", "--backbone", "clipadapt-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 0


def test_predict_with_class_names_never_trained_on(fake_root, tmp_path, capsys):
    from clipadapt.model import build_model

    model = build_model(
        "mma", ["class_000", "class_001"], backbone="clipadapt-tiny", pretrained="none"
    )
    ckpt = str(tmp_path / "a.safetensors")
    model.save_adapter(ckpt)
    images = [
        os.path.join(fake_root, "dtd", "images", "class_000", f"class_000_{i:04d}.jpg")
        for i in range(3)
    ]
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                ckpt,
                "--classes",
                "red disc, green square, blue thing",
                "--top-k",
                "2",
                "--json",
                *images,
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == images
    assert all(
        len(line["top"]) == 2
        and line["top"][0]["class"] in ("red disc", "green square", "blue thing")
        for line in lines
    )
    code = main(["predict", "--checkpoint", ckpt, "--classes", "one", *images])
    _one_line_error(capsys, code, "two class names")
    code = main(
        ["predict", "--checkpoint", ckpt, "--classes", "a,b", str(tmp_path / "missing.jpg")]
    )
    _one_line_error(capsys, code, "missing.jpg")


def _train(root, out, *extra, method="mma", dataset="caltech101"):
    return main(
        [
            "train",
            "--method",
            method,
            "--dataset",
            dataset,
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--protocol",
            "fewshot",
            "--shots",
            "2",
            "--config",
            "none",
            *TINY,
            *extra,
        ]
    )


def test_results_on_stdout_progress_on_stderr(fake_root, tmp_path, capsys):
    assert _train(fake_root, tmp_path / "r", "epochs=1", "augment=false") == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "accuracy" in json.loads(out)


def test_result_files_respect_the_umask(tmp_path):
    from clipadapt.fileio import write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640


def test_resume_takes_the_data_moved_elsewhere_and_refuses_a_corrupt_checkpoint(
    fake_root, tmp_path, capsys
):
    out = tmp_path / "run"
    assert _train(fake_root, out, "epochs=1", "augment=false") == 0
    assert yaml_load(out / "config.yaml")["data_root"] == os.path.abspath(fake_root)
    (out / "metrics.json").unlink()  # now it looks interrupted after its checkpoint
    other = tmp_path / "other"
    shutil.copytree(os.path.join(fake_root, "caltech-101"), other / "caltech-101")
    # the same datasets under another path (a cluster's local copy): data_root changes no number, as in a sweep
    assert _train(other, out, "epochs=1", "augment=false") == 0 and (out / "metrics.json").exists()
    assert (
        _train(fake_root, out, "epochs=2", "augment=false") == 2
    )  # a finished run is never silently redone
    capsys.readouterr()
    (out / "metrics.json").unlink()
    (out / "checkpoint.pt").write_bytes(b"truncated")
    code = _train(fake_root, out, "epochs=1", "augment=false")
    _one_line_error(capsys, code, "checkpoint.pt", "--overwrite")


def yaml_load(path):
    import yaml

    return yaml.safe_load(open(path))


def test_import_mma_for_the_shipped_backbone_loads(tmp_path, capsys):
    import torch

    from clipadapt.model import build_model, load_model

    source = build_model("mma", ["a", "b"], backbone="synthetic", pretrained="shipped")
    torch.save({"state_dict": source.method.state_dict()}, tmp_path / "official.pth.tar")
    out = tmp_path / "mma.safetensors"
    assert (
        main(
            [
                "import-mma",
                str(tmp_path / "official.pth.tar"),
                "--out",
                str(out),
                "--backbone",
                "synthetic",
                "--pretrained",
                "shipped",
                "--scale",
                "0.1",
            ]
        )
        == 0
    )
    model = load_model(
        str(out), ["x", "y"]
    )  # the recorded identity is the one the backbone loads with
    assert model.backbone.identity == source.backbone.identity


def test_loading_the_shipped_clip_is_quiet(caplog):
    import logging

    from clipadapt.backbone import load_backbone

    with caplog.at_level(logging.WARNING):
        load_backbone("synthetic", "shipped")
    assert "No pretrained weights" not in caplog.text


def test_predict_defaults_to_the_adapters_classes(fake_root, tmp_path, capsys):
    from clipadapt.model import build_model

    model = build_model(
        "mma",
        ["red disc", "green square", "blue thing"],
        backbone="clipadapt-tiny",
        pretrained="none",
    )
    model.save_adapter(str(tmp_path / "a.safetensors"))
    image = os.path.join(fake_root, "dtd", "images", "class_000", "class_000_0000.jpg")
    assert main(["predict", "--checkpoint", str(tmp_path / "a.safetensors"), "--json", image]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert {t["class"] for t in top} == {"red disc", "green square", "blue thing"}


def test_own_folder_defaults_to_fewshot_on_all_classes(tmp_path, capsys):
    from PIL import Image

    for c, colour in (
        ("cat", (200, 0, 0)),
        ("dog", (0, 200, 0)),
        ("eel", (0, 0, 200)),
        ("fox", (9, 9, 9)),
        ("gnu", (99, 99, 0)),
    ):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "f" / c / f"{i}.png")
    assert (
        main(
            [
                "train",
                "--method",
                "zeroshot",
                "--dataset",
                "folder",
                "--data-root",
                str(tmp_path / "f"),
                "--out",
                str(tmp_path / "o"),
                *TINY,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["protocol"] == "fewshot" and "protocol: fewshot" in captured.err
    recorded = yaml_load(tmp_path / "o" / "config.yaml")
    assert recorded["protocol"] == "fewshot"
    assert (
        recorded["preset"] == "preset:zeroshot.yaml"
        and "settings: preset:zeroshot.yaml" in captured.err
    )


def test_demo_without_matplotlib_fails_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code = main(["demo", "--quick", "--out", str(tmp_path / "d")])
    _one_line_error(capsys, code, "matplotlib")
    assert not (tmp_path / "d").exists()


def test_matplotlib_is_a_core_dependency():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"
    ]
    assert any(d.startswith("matplotlib") for d in project["dependencies"])


def test_eval_scores_the_validation_split(fake_root, tmp_path, capsys):
    from clipadapt.data import build_dataset

    assert _eval(fake_root, tmp_path / "v", "--split", "val", "--shots", "2", "--seed", "3") == 0
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    expected = build_dataset("caltech101", fake_root, shots=2, seed=3).val
    assert metrics["split"] == "val" and metrics["num_images"] == len(expected) > 0
    assert json.loads(capsys.readouterr().out)["split"] == "val"


def test_no_command_prints_help_and_exits_0():
    """`python -m clipadapt` with nothing after it is a request for help (exit 0), as for `--help`."""
    out = subprocess.run(
        [sys.executable, "-m", "clipadapt"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.startswith("usage: clipadapt")
        and "train" in out.stdout
        and not out.stderr.strip()
    )
