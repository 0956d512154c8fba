"""The training loop's logging, loaders and evaluation precision change no result."""

import json

import pytest
import torch

from clipadapt import build_dataset, build_model
from clipadapt.data.loader import EpochShuffle, make_loader, resolve_workers
from clipadapt.data.transforms import train_transform
from clipadapt.engine import TrainConfig, Trainer
from clipadapt.evaluation import eval_autocast_dtype, evaluate
from clipadapt.validation import SettingError

TINY = dict(backbone="clipadapt-tiny", pretrained="none")


def _train(learn_root, out, **settings):
    data = build_dataset("eurosat", learn_root, shots=8, seed=1, subsample="base")
    torch.manual_seed(0)
    model = build_model("mma", data.classnames, **TINY, scale=0.1)
    cfg = TrainConfig(
        **{"optimizer": "adamw", "lr": 0.01, "epochs": 2, "batch_size": 8, "workers": 0, **settings}
    )
    result = Trainer(model, data.train, cfg, out_dir=str(out), progress=False).run()
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return result, model.method.state_dict(), [r for r in steps if "step" in r]


def test_logging_every_n_steps_changes_no_number_and_logs_window_means(learn_root, tmp_path):
    one, one_state, one_log = _train(learn_root, tmp_path / "b", log_every=1)
    three, three_state, three_log = _train(learn_root, tmp_path / "c", log_every=3)
    for k, v in one_state.items():
        assert torch.equal(v, three_state[k]), k
    assert one.final_loss == three.final_loss == one_log[-1]["loss"]  # the last step's loss
    per_epoch = len(one_log) // 2  # 5 base classes x 8 shots / batch 8 = 5 steps an epoch
    assert per_epoch == 5
    assert [(r["epoch"], r["step"]) for r in three_log] == [(1, 3), (1, 5), (2, 3), (2, 5)]
    assert [r["steps_averaged"] for r in three_log] == [3, 2, 3, 2]
    for record in three_log:
        window = [
            r["loss"]
            for r in one_log
            if r["epoch"] == record["epoch"]
            and record["step"] - record["steps_averaged"] < r["step"] <= record["step"]
        ]
        assert record["loss"] == pytest.approx(sum(window) / len(window), rel=1e-6)
        assert record["ce"] == pytest.approx(
            record["loss"], rel=1e-6
        )  # mma's loss is its cross-entropy


def test_log_every_must_be_positive():
    with pytest.raises(SettingError, match="log_every"):
        TrainConfig(log_every=0)


def test_train_time_is_recorded_for_the_steps_alone_and_for_whole_epochs(learn_root, tmp_path):
    result = _train(learn_root, tmp_path, log_every=5)[0]
    assert 0 < result.data_seconds < result.train_seconds
    assert (
        0 < result.step_seconds < result.train_seconds - result.data_seconds
    )  # the steps leave out the waits
    assert result.epoch_ms_per_image == pytest.approx(
        1000 * result.train_seconds / result.images_seen
    )
    assert result.step_ms_per_image == pytest.approx(
        1000 * result.step_seconds / result.images_seen
    )
    # A resumed run keeps counting: the checkpoint carries the steps' time.
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step_seconds"] == result.step_seconds
    longer = _train(learn_root, tmp_path, log_every=5, epochs=3)[0]
    assert (
        longer.images_seen == result.images_seen * 3 // 2
        and longer.step_seconds > result.step_seconds
    )
    # A checkpoint from before steps were timed: the steps' time is unknown, never a partial figure.
    del checkpoint["step_seconds"]
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    (tmp_path / "log.jsonl").unlink()
    resumed = _train(learn_root, tmp_path, log_every=5, epochs=3)[0]
    assert (
        resumed.step_seconds is None
        and resumed.step_ms_per_image is None
        and resumed.epoch_ms_per_image > 0
    )


def test_augmented_batches_do_not_depend_on_the_number_of_workers(learn_root, tmp_path):
    _, serial, _ = _train(learn_root, tmp_path / "w0", augment=True, workers=0)
    _, parallel, _ = _train(learn_root, tmp_path / "w2", augment=True, workers=2)
    for k, v in serial.items():
        assert torch.equal(v, parallel[k]), k


def test_epoch_order_is_the_seeded_shuffle_order(learn_root):
    """The run-long sampler draws the order a per-epoch shuffled loader with that seed draws."""
    data = build_dataset("eurosat", learn_root, shots=8, seed=1, subsample="base")
    sampler = EpochShuffle(len(data.train))
    for seed in (1000, 1001):
        sampler.set_epoch_seed(seed)
        loader = make_loader(
            data.train,
            train_transform(32, (0.5,) * 3, (0.5,) * 3, augment=False),
            8,
            shuffle=True,
            seed=seed,
        )
        expected = [int(i) for _, _, idx in loader for i in idx]
        assert [index for s, index in sampler] == expected
        assert {s for s, _ in sampler} == {seed}


def test_default_workers_follow_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert resolve_workers(None) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert resolve_workers(None) == 2
    assert resolve_workers(0) == 0
    assert TrainConfig().workers is None


def test_evaluation_precision_defaults():
    assert eval_autocast_dtype("cpu") is None
    assert eval_autocast_dtype("cuda") is torch.float16


def test_evaluation_under_bf16_autocast_predicts_as_fp32(learn_root):
    """Autocast changes the logits by rounding only: the same top-1 wherever fp32's margin exceeds it."""
    data = build_dataset("eurosat", learn_root, shots=-1, seed=1, subsample="all")
    torch.manual_seed(0)
    model = build_model("zeroshot", data.classnames, backbone="synthetic", pretrained="shipped")
    fp32 = evaluate(model, data.test, progress=False, autocast_dtype=None)
    bf16 = evaluate(model, data.test, progress=False, autocast_dtype=torch.bfloat16)
    p32, p16 = torch.tensor(fp32.topk_scores), torch.tensor(bf16.topk_scores)
    # On softmax probabilities. bf16 keeps 8 bits of mantissa (fp16, the CUDA default, keeps 11): through
    # the 6 blocks of the shipped CLIP it moves a probability by up to ~0.024 on these generated images.
    tolerance = 0.03
    top32 = torch.tensor([t[0] for t in fp32.topk])
    top16 = torch.tensor([t[0] for t in bf16.topk])
    clear = (p32[:, 0] - p32[:, 1]) > 2 * tolerance
    assert clear.float().mean() > 0.4  # many images are decided by more than the rounding
    assert torch.equal(top32[clear], top16[clear])
    assert abs(fp32.accuracy - bf16.accuracy) <= 100.0 * (~clear).float().mean()
    same_order = [a[0] == b[0] for a, b in zip(fp32.topk, bf16.topk, strict=True)]
    assert (
        p32[torch.tensor(same_order), 0] - p16[torch.tensor(same_order), 0]
    ).abs().max() < tolerance


def test_run_with_persistent_workers_and_augmentation_resumes_to_the_same_numbers(
    learn_root, tmp_path
):
    from conftest import run_until_interrupted

    data = build_dataset("eurosat", learn_root, shots=8, seed=1, subsample="base")
    cfg = TrainConfig(optimizer="adamw", lr=0.01, epochs=2, batch_size=8, workers=2, augment=True)

    def trainer(out):
        torch.manual_seed(0)
        model = build_model(
            "mma_pp", data.classnames, **TINY, train_scale=0.1
        )  # draws from the global generator
        return model, Trainer(model, data.train, cfg, out_dir=str(out), progress=False)

    straight, t = trainer(tmp_path / "a")
    t.run()
    _, t = trainer(tmp_path / "b")
    run_until_interrupted(t, 7)  # in the second epoch: the first epoch's workers are gone
    resumed, t = trainer(tmp_path / "b")
    t.run()
    for k, v in straight.method.state_dict().items():
        assert torch.equal(v, resumed.method.state_dict()[k]), k
