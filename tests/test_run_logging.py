"""TensorBoard event files hold the numbers of log.jsonl (across a resume), the evaluation and the settings;
logger=none writes none; curves.png is drawn for every run."""

from __future__ import annotations

import json

import pytest
from conftest import run_until_interrupted

import clipadapt
from clipadapt import build_dataset, build_model
from clipadapt.engine import TrainConfig, Trainer, seed_everything
from clipadapt.run_logging import read_log, step_records, step_scalars

pytest.importorskip("tensorboard")
TINY = dict(backbone="clipadapt-tiny", pretrained="none")


def events(out_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run's tb/ as TensorBoard reads it: tag -> [(step, value)] in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(out_dir) -> dict[str, list[tuple[int, float]]]:
    """The same series read from log.jsonl: the step records that stand, the validation records."""
    records = read_log(str(out_dir))
    series: dict[str, list] = {}
    for r in step_records(records):
        for tag, value in step_scalars(r).items():
            series.setdefault(tag, []).append((r["global_step"], value))
    ends = {}  # the validation after an epoch sits at the epoch's last step
    for r in step_records(records):
        ends[r["epoch"]] = r["global_step"]
    for r in records:
        if r.get("event") == "validation":
            series.setdefault("val/accuracy", []).append((ends[r["epoch"]], r["val_accuracy"]))
            series.setdefault("val/best_accuracy", []).append(
                (ends[r["epoch"]], r["best_val_accuracy"])
            )
    return series


def assert_same(tb, log):
    assert set(tb) == set(log)
    for tag in log:
        assert [s for s, _ in tb[tag]] == [s for s, _ in log[tag]], (
            tag
        )  # each step once, none missing
        assert [v for _, v in tb[tag]] == pytest.approx([v for _, v in log[tag]], rel=1e-6), (
            tag
        )  # float32 events


@pytest.mark.slow  # about 30 s on 2 idle cores: two trainings, one interrupted
def test_event_files_equal_the_log_across_an_interrupted_and_resumed_run(learn_root, tmp_path):
    data = build_dataset("eurosat", learn_root, shots=2, seed=1, subsample="all")
    cfg = TrainConfig(
        optimizer="adamw",
        lr=0.01,
        epochs=3,
        batch_size=4,
        log_every=1,
        augment=False,
        patience=5,
        workers=0,
    )

    def train(out_dir, interrupt_at=None):
        seed_everything(3)
        model = build_model("mma", data.classnames, **TINY, scale=0.1)
        trainer = Trainer(
            model, data.train, cfg, out_dir=str(out_dir), progress=False, val_items=data.val
        )
        if interrupt_at is not None:
            run_until_interrupted(trainer, interrupt_at)
            model = build_model("mma", data.classnames, **TINY, scale=0.1)
            trainer = Trainer(
                model, data.train, cfg, out_dir=str(out_dir), progress=False, val_items=data.val
            )
        trainer.run()

    train(tmp_path / "straight")
    train(
        tmp_path / "resumed", interrupt_at=8
    )  # 20 images, batch 4: 5 steps an epoch, dies in epoch 2
    straight, resumed = events(tmp_path / "straight"), events(tmp_path / "resumed")
    assert_same(straight, expected(tmp_path / "straight"))
    assert_same(resumed, expected(tmp_path / "resumed"))
    log = read_log(str(tmp_path / "resumed"))
    assert any(r.get("event") == "resume" for r in log)
    assert (
        sum(1 for r in log if r.get("global_step") == 6) == 2
    )  # the rerun epoch's steps: logged twice, one curve
    assert [s for s, _ in resumed["train/loss"]] == list(range(1, 16))
    assert {
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "train/data_time_share",
        "train/ce",
        "val/accuracy",
    } <= set(resumed)  # a loss part (ce) has its own curve
    # The resumed run's curves are the straight run's (timings aside).
    for tag in ("train/loss", "train/lr", "val/accuracy"):
        assert [v for _, v in resumed[tag]] == pytest.approx(
            [v for _, v in straight[tag]], rel=1e-5
        ), tag


def test_a_run_records_its_evaluation_and_settings_and_logger_none_writes_no_events(
    learn_root, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = dict(
        protocol="base2novel",
        shots=2,
        seed=1,
        config="none",
        progress=False,
        epochs=2,
        augment=False,
        scale=0.1,
        workers=0,
        **TINY,
    )
    metrics = clipadapt.train("mma", "eurosat", learn_root, str(tmp_path / "on"), **settings)
    tb = events(tmp_path / "on")
    last = step_records(read_log(str(tmp_path / "on")))[-1]["global_step"]
    for key in ("base", "novel", "hm"):
        assert tb[f"eval/{key}"] == [(last, pytest.approx(metrics[key]))]
    acc = EventAccumulator(str(tmp_path / "on" / "tb"))
    acc.Reload()
    assert (
        "settings/run/text_summary" in acc.Tags()["tensors"]
        and "settings/training/text_summary" in acc.Tags()["tensors"]
    )
    text = acc.Tensors("settings/run/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "dataset: eurosat" in text and "scale: 0.1" in text
    assert (tmp_path / "on" / "curves.png").stat().st_size > 1000
    clipadapt.train("mma", "eurosat", learn_root, str(tmp_path / "off"), logger="none", **settings)
    assert not (tmp_path / "off" / "tb").exists() and (tmp_path / "off" / "curves.png").exists()
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert off["hm"] == metrics["hm"]  # the logger changes no number


@pytest.mark.slow
def test_curves_png_is_drawn_without_choosing_a_matplotlib_backend(learn_root, tmp_path):
    import subprocess
    import sys

    code = (
        "import clipadapt, sys, matplotlib; clipadapt.train('coop', 'eurosat', sys.argv[1], sys.argv[2], "
        "protocol='fewshot', shots=1, config='none', progress=False, epochs=1, backbone='clipadapt-tiny', "
        "pretrained='none', logger='none'); import sys as s; print('pyplot' in s.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, learn_root, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False" and (tmp_path / "run" / "curves.png").exists()


def test_logger_tensorboard_without_the_package_is_refused_before_anything_is_written(
    learn_root, tmp_path, monkeypatch
):
    from clipadapt import run_logging
    from clipadapt.errors import ClipadaptError

    monkeypatch.setattr(run_logging, "tensorboard_available", lambda: False)
    out = tmp_path / "run"
    with pytest.raises(ClipadaptError, match="needs the tensorboard package"):
        clipadapt.train(
            "coop",
            "eurosat",
            learn_root,
            str(out),
            backbone="clipadapt-tiny",
            pretrained="none",
            epochs=1,
            logger="tensorboard",
            progress=False,
        )
    assert not out.exists()  # no config.yaml of a run that never started


def test_a_failing_summary_after_training_leaves_the_run_finished(
    learn_root, tmp_path, monkeypatch
):
    from clipadapt import run

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    warned = []
    monkeypatch.setattr(run, "finish_run", broken)  # the run API's own reference to it
    monkeypatch.setattr(run.log, "warning", lambda message, *args: warned.append(message % args))
    out = tmp_path / "run"
    metrics = clipadapt.train(
        "coop",
        "eurosat",
        learn_root,
        str(out),
        backbone="clipadapt-tiny",
        pretrained="none",
        epochs=1,
        logger="none",
        progress=False,
    )
    assert (out / "metrics.json").exists() and "hm" in metrics
    assert len(warned) == 1 and "could not be written: no display" in warned[0]
