"""Every result line and metrics.json says how many test images and classes each accuracy was measured on
(issue 24, item 6)."""

import json

import pytest
from fake_datasets import make_coop_tree

from clipadapt.cli import main

TINY = ["--backbone", "clipadapt-tiny", "--pretrained", "none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("counts")
    make_coop_tree(str(root), "caltech101")
    return str(root)


def _line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_base2novel_line_and_metrics_count_images_and_classes_of_each_half(data, tmp_path, capsys):
    out = tmp_path / "b2n"
    assert (
        main(
            [
                "train",
                "--method",
                "zeroshot",
                "--dataset",
                "caltech101",
                "--data-root",
                data,
                "--protocol",
                "base2novel",
                "--shots",
                "2",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    line = _line(capsys)
    metrics = json.loads((out / "metrics.json").read_text())
    base, novel = metrics["scored"]["base"], metrics["scored"]["novel"]
    assert (
        base["classes"] == metrics["num_base_classes"]
        and novel["classes"] == metrics["num_novel_classes"]
    )
    assert base["images"] > 0 and novel["images"] > 0
    assert {"base", "novel", "hm"} <= set(metrics)  # the existing keys stay
    assert line["scored"] == (
        f"base {metrics['base']:.2f} % ({base['images']} images, {base['classes']} classes); "
        f"novel {metrics['novel']:.2f} % ({novel['images']} images, {novel['classes']} classes)"
    )


def test_fewshot_and_eval_lines_count_the_test_split(data, tmp_path, capsys):
    out = tmp_path / "few"
    assert (
        main(
            [
                "train",
                "--method",
                "zeroshot",
                "--dataset",
                "caltech101",
                "--data-root",
                data,
                "--protocol",
                "fewshot",
                "--shots",
                "2",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    line, metrics = _line(capsys), json.loads((out / "metrics.json").read_text())
    counts = metrics["scored"]["accuracy"]
    assert f"({counts['images']} images, {counts['classes']} classes)" in line["scored"]
    assert (
        main(
            [
                "eval",
                "--dataset",
                "caltech101",
                "--data-root",
                data,
                "--out",
                str(tmp_path / "ev"),
                *TINY,
            ]
        )
        == 0
    )
    line, metrics = _line(capsys), json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["scored"]["accuracy"] == {
        "images": metrics["num_images"],
        "classes": metrics["num_classes"],
    }
    assert line["scored"] == (
        f"accuracy {metrics['accuracy']:.2f} % ({metrics['num_images']} images, "
        f"{metrics['num_classes']} classes)"
    )
