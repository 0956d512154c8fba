import logging

import pytest
import torch
from fake_datasets import make_coop_tree

from clipadapt.backbone import load_backbone
from clipadapt.data.coop import COOP_DATASETS

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that random weights are random


@pytest.fixture(autouse=True)
def feature_cache_in_tmp(tmp_path, monkeypatch):
    """Every test's feature cache (clipadapt.feature_cache) lives in its own tmp folder, never in the home."""
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path / "clipadapt-cache"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


@pytest.fixture(scope="session")
def tiny_backbone():
    torch.manual_seed(0)
    return load_backbone("clipadapt-tiny", "none")


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in COOP_DATASETS:
        make_coop_tree(str(root), name)
    return str(root)


@pytest.fixture(scope="session")
def learn_root(tmp_path_factory):
    """A 10-class generated dataset: 5 base and 5 novel classes, 16 train images a class."""
    root = tmp_path_factory.mktemp("learn")
    make_coop_tree(str(root), "eurosat", num_classes=10, per_class=(16, 4, 10))
    return str(root)


# Settings under which each trained method must learn on the tiny random-weight backbone within
# seconds. The papers' settings (scale 0.001, bottleneck D/4 of a 32-wide embedding, ...) are made for
# pretrained CLIP and real data; here the frozen features are random, so the adapters get more room.
ADAMW = {"optimizer": "adamw", "weight_decay": 0.0}
FAST_LEARNING = {
    "mma": ({"scale": 0.1}, {**ADAMW, "lr": 0.01, "epochs": 15}),
    "rmadapter": ({"scale": 0.1}, {**ADAMW, "lr": 0.01, "epochs": 15}),
    # MMA++'s consistency term pulls towards the smaller drawn scales: a lighter weight learns in fewer epochs.
    "mma_pp": (
        {"train_scale": 0.1, "test_scale": 0.1, "reg_weight": 0.5},
        {**ADAMW, "lr": 0.01, "epochs": 12},
    ),
    "rmma": ({}, {**ADAMW, "lr": 0.01, "epochs": 15}),
    "mma_attn": ({"residual": 0.5}, {**ADAMW, "lr": 0.01, "epochs": 30}),
    "clip_adapter": ({"ratio": 0.8, "reduction": 1}, {**ADAMW, "lr": 0.05, "epochs": 30}),
    "coop": ({}, {**ADAMW, "lr": 0.01, "epochs": 30}),
    "mmrl": ({"reg_weight": 0.01}, {**ADAMW, "lr": 0.01, "epochs": 15}),
    "maple": ({}, {**ADAMW, "lr": 0.01, "epochs": 15}),
    "clip_lora": ({"rank": 8, "alpha": 8.0, "dropout": 0.0}, {**ADAMW, "lr": 0.01, "epochs": 10}),
}


def perturbed_model(method: str, classes, seed: int = 1, **options):
    """A tiny random-weight model whose trainable tensors are moved off their initial values (some start as an identity)."""
    from clipadapt.model import build_model

    torch.manual_seed(seed)
    model = build_model(method, classes, backbone="clipadapt-tiny", pretrained="none", **options)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def run_until_interrupted(trainer, step: int) -> None:
    """Run a trainer whose optimizer raises KeyboardInterrupt at its `step`-th step, as a killed run would."""
    calls = {"n": 0}
    real_step = trainer.optimizer.step

    def step_then_die(*a, **k):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    trainer.optimizer.step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
