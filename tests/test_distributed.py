"""torchrun with 2 gloo processes on the CPU trains the same adapter as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file


def _cmd(root, out, *extra):
    return [
        "train",
        "--method",
        "mma",
        "--dataset",
        "eurosat",
        "--data-root",
        root,
        "--shots",
        "4",
        "--backbone",
        "clipadapt-tiny",
        "--pretrained",
        "none",
        "--config",
        "none",
        "--out",
        str(out),
        "optimizer=sgd",
        "lr=0.05",
        "scale=0.1",
        "batch_size=6",
        "epochs=2",
        "augment=false",
        "log_every=1",
        *extra,
    ]


@pytest.mark.cli
def test_two_gloo_processes_match_one_process(learn_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "clipadapt.cli", *_cmd(learn_root, tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "clipadapt.cli",
            *_cmd(learn_root, tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5, key

    def steps(out):
        lines = (out / "log.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if "step" in json.loads(line)]

    assert (
        len(steps(tmp_path / "two")) == len(steps(tmp_path / "one")) == 2 * 3
    )  # 20 images, batch 6: 3 steps
    # the logged loss is the global batch's (the mean over both ranks' slices), as one process logs it
    for r1, r2 in zip(steps(tmp_path / "one"), steps(tmp_path / "two"), strict=True):
        assert (r1["epoch"], r1["step"]) == (r2["epoch"], r2["step"])
        assert abs(r1["loss"] - r2["loss"]) <= 1e-5 * max(1.0, abs(r1["loss"])), (r1, r2)
    import yaml

    for d, n in (("one", 1), ("two", 2)):
        assert yaml.safe_load((tmp_path / d / "config.yaml").read_text())["world_size"] == n
        assert json.loads((tmp_path / d / "metrics.json").read_text())["world_size"] == n
    _check_rank_zero_alone_wrote_the_curves(tmp_path / "two")
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert abs(one["base"] - two["base"]) < 1e-6 and abs(one["novel"] - two["novel"]) < 1e-6
    # the trained weights moved: the comparison is not between two untouched initialisations
    fresh = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipadapt.cli",
            *_cmd(learn_root, tmp_path / "zero", "epochs=1", "lr=0.000001"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert fresh.returncode == 0
    c = load_file(str(tmp_path / "zero" / "adapter.safetensors"))
    assert any((a[k] - c[k]).abs().max() > 1e-3 for k in a)


def test_each_rank_logs_its_share_and_the_record_sums_the_ranks(monkeypatch):
    """Cheap form of the torchrun check: two slices (2 and 3 of 5 images) give the whole batch's mean loss."""
    import pytest
    import torch

    from clipadapt import distributed
    from clipadapt.engine import _LossWindow

    per_image = torch.tensor([0.5, 1.5, 2.0, 4.0, 8.0])
    ranks = [_LossWindow(torch.device("cpu")) for _ in range(2)]
    for window, part in zip(ranks, (per_image[:2], per_image[2:]), strict=True):
        window.add(part.mean(), {"ce": part.mean(), "const": 1.0}, 5, share=len(part) / 5)
    other = torch.stack(
        [ranks[1].loss, ranks[1].last, ranks[1].parts["ce"], torch.tensor(ranks[1].parts["const"])]
    )
    monkeypatch.setattr(
        distributed, "sum_over_ranks", lambda values: values + other
    )  # the all-reduce, by hand
    record = ranks[0].flush(1e9)
    assert record["loss"] == pytest.approx(per_image.mean().item()) != per_image[:2].mean().item()
    assert record["ce"] == pytest.approx(per_image.mean().item()) and record[
        "const"
    ] == pytest.approx(1.0)
    assert ranks[0].last_step_loss == pytest.approx(per_image.mean().item())


def _check_rank_zero_alone_wrote_the_curves(out):
    """The event files of a torchrun run come from one process (rank 0) and hold the numbers of its log.jsonl."""
    import pytest

    pytest.importorskip("tensorboard")
    from test_run_logging import assert_same, events, expected

    files = list((out / "tb").iterdir())
    assert (
        files and len({f.name.split(".")[-2] for f in files}) == 1
    )  # events.out.tfevents.TIME.HOST.PID.N
    tb = events(out)
    assert_same({k: v for k, v in tb.items() if not k.startswith("eval/")}, expected(out))
