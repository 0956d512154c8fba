"""eval_split=val: a run (and so a sweep) scores the validation split and never reads the test images."""

import json

import pytest

from clipadapt import protocols
from clipadapt.data import build_dataset
from clipadapt.errors import ClipadaptError
from clipadapt.report import write_report
from clipadapt.runconfig import resolve, resolve_run
from clipadapt.runspec import RunSpec


def _scored_paths(learn_root, monkeypatch, protocol="base2novel", dataset="eurosat", **settings):
    """The image paths the end-of-run evaluation scores, and the run's metrics."""
    seen = []
    real_evaluate = protocols.evaluate

    def spy(model, items, **kwargs):
        seen.append([d.impath for d in items])
        return real_evaluate(model, items, **kwargs)

    monkeypatch.setattr(protocols, "evaluate", spy)
    run = resolve_run(
        RunSpec.from_arguments(
            "mma",
            dataset,
            learn_root,
            protocol=protocol,
            shots=2,
            backbone="clipadapt-tiny",
            pretrained="none",
            config="none",
            **{"epochs": 1, "batch_size": 8, "augment": False, **settings},
        )
    )
    execution = protocols.Execution(None, progress=False)
    return seen, protocols.run_protocol(run, execution)


def test_eval_split_val_scores_the_validation_images_of_base_and_novel_classes(
    learn_root, monkeypatch
):
    seen, metrics = _scored_paths(learn_root, monkeypatch, eval_split="val")
    base, new = (build_dataset("eurosat", learn_root, 2, 1, part) for part in ("base", "new"))
    assert seen == [[d.impath for d in base.val], [d.impath for d in new.val]]
    test_images = {d.impath for d in (*base.test, *new.test)}
    assert not test_images & {p for paths in seen for p in paths}  # the test split stays unread
    assert metrics["eval_split"] == "val" and {"base", "novel", "hm"} <= set(metrics)

    seen, metrics = _scored_paths(
        learn_root, monkeypatch
    )  # the default: the test split, as the papers
    assert seen == [[d.impath for d in base.test], [d.impath for d in new.test]]
    assert metrics["eval_split"] == "test"


def test_eval_split_val_on_fewshot_and_its_errors(learn_root, tmp_path, monkeypatch):
    seen, metrics = _scored_paths(learn_root, monkeypatch, protocol="fewshot", eval_split="val")
    assert seen == [[d.impath for d in build_dataset("eurosat", learn_root, 2, 1, "all").val]]
    with pytest.raises(ClipadaptError, match="eval_split"):
        resolve("mma", {}, {"eval_split": "train"})
    with pytest.raises(ClipadaptError, match="cross_dataset scores the test splits"):
        _scored_paths(
            learn_root,
            monkeypatch,
            protocol="cross_dataset",
            dataset="syn_shapes",
            eval_split="val",
        )
    for cls in ("a", "b"):  # an own folder without val/: nothing to score, said before any training
        for i in range(3):
            (tmp_path / "photos" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "photos" / cls / f"{i}.png").write_bytes(b"")
    with pytest.raises(ClipadaptError, match="no val images"):
        _scored_paths(
            str(tmp_path / "photos"),
            monkeypatch,
            protocol="fewshot",
            dataset="folder",
            eval_split="val",
        )


def test_report_keeps_validation_runs_apart_from_test_runs(tmp_path):
    common = {
        "protocol": "base2novel",
        "method": "mma",
        "dataset": "eurosat",
        "shots": 16,
        "seed": 1,
    }
    for split, acc in (("test", 70.0), ("val", 90.0)):
        run = tmp_path / split
        run.mkdir()
        (run / "metrics.json").write_text(
            json.dumps({**common, "eval_split": split, "base": acc, "novel": acc, "hm": acc})
        )
    text = write_report(str(tmp_path))
    rows = [line for line in text.splitlines() if line.startswith("| mma")]
    assert any(r.startswith("| mma (scored on val) |") and "90.00" in r for r in rows)
    assert any(r.startswith("| mma |") and "70.00" in r and "90.00" not in r for r in rows)
