"""The training engine and the guarantees every trained method gives."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import FAST_LEARNING, run_until_interrupted

from clipadapt import build_dataset, build_model
from clipadapt.engine import TrainConfig, Trainer, lr_at_epoch, seed_everything
from clipadapt.errors import CheckpointMismatchError
from clipadapt.evaluation import evaluate

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
TRAINED = list(FAST_LEARNING)


def _base(learn_root, shots=8):
    return build_dataset("eurosat", learn_root, shots=shots, seed=1, subsample="base")


def _fast(method, **train):
    options, cfg = FAST_LEARNING[method]
    return options, TrainConfig(**{**cfg, "augment": False, "batch_size": 8, **train})


# Training changes only the method's parameters (the backbone untouched, the optimizer holding the
# method's parameters, which move), the same seed gives the same numbers and the adapter file round-trips
# (the method's tensors only): invariants of clipadapt.testing.check_method, which every method passes
# in tests/test_conformance.py.


# mma_attn normalises its adapted direction before mixing it in, and the random tiny backbone maps
# every image to nearly the same feature (cosine ~0.95): it learns this set slowly and erratically,
# so its learning test uses separable features instead (tests/test_mma_attn.py).
@pytest.mark.learning
@pytest.mark.parametrize("method", [m for m in TRAINED if m != "mma_attn"])
def test_training_beats_zero_shot_on_base_classes(method, learn_root):
    data = _base(learn_root)
    options, cfg = _fast(method)
    seed_everything(0)
    model = build_model(method, data.classnames, **TINY, **options)
    zero_shot = evaluate(
        model, data.test, progress=False
    ).accuracy  # untrained adapters: near zero-shot
    Trainer(model, data.train, cfg, progress=False).run()
    trained = evaluate(model, data.test, progress=False).accuracy
    # 5 classes: chance is 20%; a method that does not learn stays near its zero-shot accuracy.
    assert trained >= zero_shot + 40, (zero_shot, trained)


def test_loading_against_another_backbone_or_method_fails(tmp_path):
    model = build_model("mma", ["a", "b"], **TINY)
    path = str(tmp_path / "a.safetensors")
    model.save_adapter(path)
    other = build_model(
        "mma", ["a", "b"], backbone="clipadapt-tiny", pretrained=_other_weights(tmp_path, model)
    )
    with pytest.raises(CheckpointMismatchError, match="backbone"):
        other.load_adapter(path)
    with pytest.raises(CheckpointMismatchError, match="method"):
        build_model("rmadapter", ["a", "b"], **TINY).load_adapter(path)
    with pytest.raises(
        CheckpointMismatchError, match=r"other mma options \(scale: saved 0.001, this model 0.5\)"
    ):
        build_model("mma", ["a", "b"], scale=0.5, **TINY).load_adapter(path)


def _other_weights(tmp_path, model):
    path = tmp_path / "other.pt"
    state = {k: v + 0.01 for k, v in model.backbone.clip.state_dict().items()}
    torch.save(state, path)
    return str(path)


def test_cosine_schedule_matches_dassl():
    cfg = TrainConfig(lr=0.0015, epochs=5)
    assert [round(lr_at_epoch(cfg, e), 8) for e in range(5)] == [
        round(0.0015 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * e / 5)), 8)
        for e in range(5)
    ]
    warm = TrainConfig(lr=0.01, epochs=5, warmup_epochs=1, warmup_lr=1e-5)
    assert lr_at_epoch(warm, 0) == 1e-5 and lr_at_epoch(warm, 1) == pytest.approx(0.01)


def test_interrupted_training_resumes_to_the_same_numbers(learn_root, tmp_path, monkeypatch):
    data = _base(learn_root, shots=4)
    options, cfg = _fast("mma", epochs=3, augment=True)

    def final_logits(out_dir, interrupt_at=None):
        seed_everything(3)
        model = build_model("mma", data.classnames, **TINY, **options)
        trainer = Trainer(model, data.train, cfg, out_dir=str(out_dir), progress=False)
        if interrupt_at is not None:
            run_until_interrupted(trainer, interrupt_at)
            model = build_model("mma", data.classnames, **TINY, **options)
            trainer = Trainer(model, data.train, cfg, out_dir=str(out_dir), progress=False)
        trainer.run()
        with torch.no_grad():
            return model.eval()(torch.ones(2, 3, 32, 32))

    straight = final_logits(tmp_path / "a")
    resumed = final_logits(tmp_path / "b", interrupt_at=5)  # 2 steps an epoch: dies in epoch 3
    assert torch.equal(straight, resumed)


def _train_cmd(root, out, *extra):
    return [
        sys.executable,
        "-m",
        "clipadapt.cli",
        "train",
        "--method",
        "mma",
        "--dataset",
        "eurosat",
        "--data-root",
        root,
        "--shots",
        "8",
        "--backbone",
        "clipadapt-tiny",
        "--pretrained",
        "none",
        "--out",
        str(out),
        "--config",
        "none",
        "optimizer=adamw",
        "lr=0.01",
        "scale=0.1",
        "batch_size=4",
        "epochs=6",
        *extra,
    ]


@pytest.mark.cli
def test_killed_cli_run_resumes_with_the_same_metrics(learn_root, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(learn_root, straight), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(learn_root, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while (
        not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    out = subprocess.run(_train_cmd(learn_root, killed), capture_output=True, text=True, check=True)
    assert "resuming" in out.stderr  # progress on stderr, results on stdout
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key in ("base", "novel", "hm", "trainable_params"):
        assert a[key] == b[key], key


@pytest.mark.cli
def test_train_command_outputs(learn_root, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(_train_cmd(learn_root, out, "epochs=1"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "base",
        "novel",
        "hm",
        "trainable_params",
        "train_seconds",
        "train_step_ms_per_image",
        "train_epoch_ms_per_image",
    ):
        assert key in metrics
    assert {"adapter.safetensors", "config.yaml", "log.jsonl"} <= set(os.listdir(out))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert (
        records[0]["event"] == "feature_path"
    )  # the log says first which frozen-work path the run takes
    assert next(r for r in records if "step" in r)["loss"] > 0
    # a finished run is refused; an unknown setting is named
    r = subprocess.run(_train_cmd(learn_root, out, "epochs=1"), capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = subprocess.run(
        _train_cmd(learn_root, tmp_path / "x", "colour=red"), capture_output=True, text=True
    )
    assert r.returncode == 2 and "colour" in r.stderr and "Traceback" not in r.stderr


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda(learn_root):
    from clipadapt.errors import ClipadaptError

    data = _base(learn_root, shots=2)
    options, cfg = _fast("mma", epochs=1, precision="bf16")
    model = build_model("mma", data.classnames, **TINY, **options)
    result = Trainer(model, data.train, cfg, progress=False).run()
    assert result.final_loss == result.final_loss and result.final_loss > 0  # finite
    assert all(
        p.dtype == torch.float32 for p in model.method.parameters()
    )  # master weights stay fp32
    with pytest.raises(ClipadaptError, match="CUDA"):
        Trainer(model, data.train, _fast("mma", precision="fp16")[1], progress=False)


def test_constant_schedule_keeps_the_learning_rate():
    cfg = TrainConfig(lr=0.005, epochs=100, schedule="constant")
    assert {lr_at_epoch(cfg, e) for e in range(100)} == {0.005}


def test_early_stopping_keeps_the_best_validation_epoch(learn_root, monkeypatch):
    data = _base(learn_root, shots=4)
    options, cfg = _fast("mma_attn", epochs=30, patience=2, keep="best_val")
    seed_everything(0)
    model = build_model("mma_attn", data.classnames, **TINY, **options)
    trainer = Trainer(model, data.train, cfg, progress=False, val_items=data.val)
    scripted = iter(
        [50.0, 70.0, 60.0, 65.0, 90.0, 95.0]
    )  # best at epoch 2, two worse epochs: stop after 4
    snapshots = []

    def scripted_accuracy():
        snapshots.append({k: v.clone() for k, v in model.method.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(trainer, "validation_accuracy", scripted_accuracy)
    result = trainer.run()
    assert (result.epochs_trained, result.best_epoch, result.best_val_accuracy) == (4, 2, 70.0)
    assert len(snapshots) == 4
    for k, v in model.method.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), k
    assert not all(torch.equal(v, snapshots[3][k]) for k, v in model.method.state_dict().items())


def _moved_off_its_initialisation(learn_root, method):
    """(data, cfg, model): a method whose parameters were moved off their initial values."""
    data = _base(learn_root, shots=4)
    options, cfg = _fast(method, epochs=1, keep="best_val")
    model = build_model(method, data.classnames, **TINY, **options)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return data, cfg, model


def test_validation_accuracy_of_cached_features_equals_evaluation(learn_root):
    from clipadapt.evaluation import evaluate

    data, cfg, model = _moved_off_its_initialisation(learn_root, "mma_attn")
    trainer = Trainer(model, data.train, cfg, progress=False, val_items=data.val)
    assert trainer.validation_accuracy() == pytest.approx(
        evaluate(model, data.val, progress=False).accuracy
    )


def test_validation_scores_through_the_same_path_as_a_cached_evaluation(
    learn_root, tmp_path, monkeypatch
):
    from clipadapt import evaluation
    from clipadapt.feature_cache import FeatureCache

    data, cfg, model = _moved_off_its_initialisation(learn_root, "coop")
    monkeypatch.setattr(FeatureCache, "names_weights", staticmethod(lambda identity: True))
    from clipadapt import engine

    calls = []
    scorer = evaluation.evaluate_frozen_features

    def spy(*a, **k):
        return calls.append(a[1]) or scorer(*a, **k)

    # the trainer holds its own reference (imported at engine's top): both are watched
    monkeypatch.setattr(evaluation, "evaluate_frozen_features", spy)
    monkeypatch.setattr(engine, "evaluate_frozen_features", spy)
    cached = evaluation.evaluate(
        model,
        data.val,
        cfg.eval_batch_size,
        progress=False,
        feature_cache=FeatureCache(tmp_path / "features", verbose=False),
    )
    trainer = Trainer(model, data.train, cfg, progress=False, val_items=data.val)
    assert trainer.validation_accuracy() == cached.accuracy
    assert len(calls) == 2 and torch.equal(
        calls[0], calls[1]
    )  # both scored the same float32 features


def test_selection_needs_a_validation_split(learn_root):
    from clipadapt.errors import ClipadaptError

    data = _base(learn_root, shots=2)
    model = build_model("mma_attn", data.classnames, **TINY)
    with pytest.raises(ClipadaptError, match="validation"):
        Trainer(model, data.train, TrainConfig(patience=3), progress=False, val_items=[])


@pytest.mark.parametrize("method", ["mma_attn", "mma"])
def test_interrupted_early_stopping_run_resumes_to_the_same_selection(method, learn_root, tmp_path):
    data = _base(learn_root, shots=4)
    options, cfg = _fast(method, epochs=6, patience=1, keep="best_val", lr=0.05)

    def final(out_dir, interrupt_at=None):
        seed_everything(3)
        model = build_model(method, data.classnames, **TINY, **options)
        trainer = Trainer(
            model, data.train, cfg, out_dir=str(out_dir), progress=False, val_items=data.val
        )
        if interrupt_at is not None:
            run_until_interrupted(trainer, interrupt_at)
            model = build_model(method, data.classnames, **TINY, **options)
            trainer = Trainer(
                model, data.train, cfg, out_dir=str(out_dir), progress=False, val_items=data.val
            )
        result = trainer.run()
        return result, {k: v.clone() for k, v in model.method.state_dict().items()}

    straight, weights = final(tmp_path / "a")
    resumed, weights_b = final(tmp_path / "b", interrupt_at=4)  # 2 steps an epoch: dies in epoch 2
    assert (straight.epochs_trained, straight.best_epoch, straight.best_val_accuracy) == (
        resumed.epochs_trained,
        resumed.best_epoch,
        resumed.best_val_accuracy,
    )
    for k in weights:
        assert torch.equal(weights[k], weights_b[k]), k


# ---- a diverged run ends loudly -------------------------------------------------------------------


def test_divergence_watch_finds_the_first_bad_step_and_tolerates_scaler_skips():
    from clipadapt.engine import _DivergenceWatch

    nan = float("nan")
    plain = _DivergenceWatch(torch.device("cpu"), patience=1)
    for step, value in enumerate([1.0, 2.0, nan, 1.0], start=1):
        plain.add(step, torch.tensor(value), {"ce": torch.tensor(value / 2)})
    assert plain.diverged() and plain.describe() == "step 3: loss nan (ce nan)"
    scaled = _DivergenceWatch(torch.device("cpu"), patience=3)  # fp16: skipped steps are normal
    for step, value in enumerate([1.0, nan, nan, 1.0, float("inf"), nan], start=1):
        scaled.add(step, torch.tensor(value), {})
    assert not scaled.diverged()
    scaled.add(7, torch.tensor(nan), {})
    assert scaled.diverged() and scaled.describe() == "step 7: loss nan"


def test_a_loss_gone_nan_stops_the_run_and_keeps_the_last_good_checkpoint(learn_root, tmp_path):
    from clipadapt.errors import TrainingDivergedError

    data = _base(learn_root, shots=4)  # 20 images, batch 8: 2 steps an epoch
    options, cfg = _fast("mma", epochs=3)
    model = build_model("mma", data.classnames, **TINY, **options)
    real_loss, calls = model.method.loss, {"n": 0}

    def loss_nan_from_step_4(logits, labels):
        calls["n"] += 1
        loss, parts = real_loss(logits, labels)
        return (loss * float("nan"), parts) if calls["n"] >= 4 else (loss, parts)

    model.method.loss = loss_nan_from_step_4
    trainer = Trainer(model, data.train, cfg, str(tmp_path), progress=False)
    with pytest.raises(TrainingDivergedError) as err:
        trainer.run()
    message = str(err.value)
    assert "epoch 2, step 2: loss nan" in message and "after epoch 1 stays" in message, message
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["method"].values())
    events = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert events[-1]["event"] == "diverged" and events[-1]["epoch"] == 2


def test_a_diverged_run_exits_2_with_one_line_and_writes_no_results(learn_root, tmp_path, capsys):
    from clipadapt.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "-q",
            "train",
            "--method",
            "mma",
            "--dataset",
            "eurosat",
            "--data-root",
            learn_root,
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
            "--config",
            "none",
            "--shots",
            "2",
            "--out",
            str(out),
            "epochs=2",
            "lr=1e6",
            "batch_size=4",
            "workers=0",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "training diverged in epoch" in err[0], err
    assert not (out / "adapter.safetensors").exists() and not (out / "metrics.json").exists()
