"""Test images' frozen features shared across runs: read back exactly, never for another key, robust to bad files."""

import logging
import os
import subprocess
import sys

import pytest
import torch

import clipadapt.data.loader as loader_module
from clipadapt.backbone import load_backbone
from clipadapt.data import build_dataset
from clipadapt.evaluation import evaluate
from clipadapt.feature_cache import FeatureCache
from clipadapt.model import build_model


@pytest.fixture(scope="module")
def named_backbone():
    """A tiny random backbone given a weights identity, as pretrained weights have one."""
    torch.manual_seed(0)
    bb = load_backbone("clipadapt-tiny", "none")
    bb.identity = "clipadapt-tiny/test-weights-0"
    return bb


@pytest.fixture(scope="module")
def data(learn_root):
    return build_dataset("eurosat", learn_root, shots=-1, seed=1, subsample="base")


def _trained_like(method, classnames, backbone):
    """A model whose method parameters are moved off their initial values, so they change the logits."""
    torch.manual_seed(3)
    model = build_model(method, classnames, backbone)
    with torch.no_grad():
        for p in model.method.trainable_parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


# Logits from the frozen image features equal the forward pass's, in training and evaluation, for
# every method whose image tower is frozen: the "cached = uncached" invariant of
# clipadapt.testing.check_method (tests/test_conformance.py); which methods those are:
# tests/test_methods.py::test_image_tower_frozen_declaration.


def test_logits_from_frozen_image_features_refuses_a_method_that_changes_the_image_tower(
    tiny_backbone,
):
    model = build_model("mma", ["cat", "dog"], tiny_backbone)
    with pytest.raises(Exception, match="changes the image tower"):
        model.logits_from_frozen_image_features(
            torch.zeros(1, tiny_backbone.clip.visual.output_dim)
        )


def _forbid_image_reads(monkeypatch):
    def refuse(path):
        raise AssertionError(f"image {path} was read although its features are cached")

    monkeypatch.setattr(loader_module, "load_image", refuse)


@pytest.mark.parametrize("method", ["coop", "mma_attn"])
def test_second_evaluation_reads_the_cache_and_predicts_the_same(
    method, named_backbone, data, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="clipadapt")
    model = _trained_like(method, data.classnames, named_backbone)
    plain = evaluate(model, data.test, batch_size=7, progress=False)
    cache = FeatureCache(tmp_path / "features")
    first = evaluate(
        model,
        data.test,
        batch_size=7,
        progress=False,
        feature_cache=cache,
        dataset="eurosat",
        split="test/base",
    )
    assert (cache.reads, cache.writes) == (0, 1)
    assert "feature cache: wrote" in caplog.text
    caplog.clear()
    _forbid_image_reads(monkeypatch)
    second = evaluate(
        model,
        data.test,
        batch_size=7,
        progress=False,
        feature_cache=cache,
        dataset="eurosat",
        split="test/base",
    )
    assert (cache.reads, cache.writes) == (1, 1)
    assert "feature cache: read" in caplog.text and "feature cache: wrote" not in caplog.text
    assert (second.accuracy, second.labels, second.topk, second.topk_scores) == (
        first.accuracy,
        first.labels,
        first.topk,
        first.topk_scores,
    )
    assert (
        first.labels == plain.labels
        and first.topk == plain.topk
        and first.accuracy == plain.accuracy
    )
    torch.testing.assert_close(torch.tensor(first.topk_scores), torch.tensor(plain.topk_scores))


def test_other_image_frozen_methods_and_seeds_share_the_entry(
    named_backbone, data, tmp_path, monkeypatch
):
    cache = FeatureCache(tmp_path / "features", verbose=False)
    evaluate(
        _trained_like("zeroshot", data.classnames, named_backbone),
        data.test,
        progress=False,
        feature_cache=cache,
        dataset="eurosat",
        split="test/base",
    )
    _forbid_image_reads(monkeypatch)
    for method in ("coop", "clip_adapter", "mma_attn"):
        evaluate(
            _trained_like(method, data.classnames, named_backbone),
            data.test,
            progress=False,
            feature_cache=cache,
            dataset="eurosat",
            split="test/base",
        )
    assert (cache.reads, cache.writes) == (3, 1)


def test_methods_that_change_the_image_tower_and_random_weights_are_not_cached(
    named_backbone, tiny_backbone, data, tmp_path
):
    cache = FeatureCache(tmp_path / "features", verbose=False)
    evaluate(
        _trained_like("mma", data.classnames, named_backbone),
        data.test,
        progress=False,
        feature_cache=cache,
    )
    evaluate(
        _trained_like("zeroshot", data.classnames, tiny_backbone),
        data.test,
        progress=False,  # '.../none'
        feature_cache=cache,
    )
    assert (cache.reads, cache.writes) == (0, 0)
    assert not (tmp_path / "features").exists()


def test_another_backbone_split_image_set_or_transform_misses(named_backbone, data, tmp_path):
    cache = FeatureCache(tmp_path / "features", verbose=False)
    model = _trained_like("zeroshot", data.classnames, named_backbone)

    def run(items, split="test/base"):
        return evaluate(
            model, items, progress=False, feature_cache=cache, dataset="eurosat", split=split
        )

    run(data.test)
    run(data.test[:-1])  # one image fewer
    run(list(reversed(data.test)))  # the same images in another order: another feature order
    run(data.test, split="test/new")
    other = load_backbone("clipadapt-tiny", "none")
    other.load_state_dict(named_backbone.state_dict())
    other.identity = "clipadapt-tiny/test-weights-1"
    evaluate(
        _trained_like("zeroshot", data.classnames, other),
        data.test,
        progress=False,
        feature_cache=cache,
        dataset="eurosat",
        split="test/base",
    )
    cfg = named_backbone.preprocess_cfg
    saved = dict(cfg)
    try:
        cfg["mean"] = tuple(m + 0.01 for m in cfg["mean"])  # another normalisation
        run(data.test)
    finally:
        cfg.clear()
        cfg.update(saved)
    assert (cache.reads, cache.writes) == (0, 6)
    run(data.test)  # and the first one still hits
    assert (cache.reads, cache.writes) == (1, 6)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another key"])
def test_a_damaged_cache_file_is_ignored_with_a_warning_and_recomputed(
    damage, named_backbone, data, tmp_path, caplog
):
    cache = FeatureCache(tmp_path / "features", verbose=False)
    model = _trained_like("clip_adapter", data.classnames, named_backbone)
    first = evaluate(
        model, data.test, progress=False, feature_cache=cache, dataset="eurosat", split="test/base"
    )
    (path,) = list((tmp_path / "features").iterdir())
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a file written for another key, put at this key's path
        key = FeatureCache.key("x", "eurosat", "test/base", data.test, "t", "torch.float32", "cpu")
        cache.save(key, torch.zeros(len(data.test), 8))
        os.replace(cache.path(key), path)
    caplog.clear()
    # the root logger is quiet in tests (conftest): the warning is watched where it is logged
    caplog.set_level(logging.WARNING, logger="clipadapt.feature_cache")
    again = evaluate(
        model, data.test, progress=False, feature_cache=cache, dataset="eurosat", split="test/base"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and f"ignoring feature cache file '{path}'" in warnings[0]
        and "recomputing" in warnings[0]
    )
    assert (again.topk, again.topk_scores) == (first.topk, first.topk_scores)
    assert cache.reads == 0
    evaluate(
        model, data.test, progress=False, feature_cache=cache, dataset="eurosat", split="test/base"
    )
    assert cache.reads == 1  # rewritten whole


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path / "c"))
    assert FeatureCache().folder == tmp_path / "c" / "features"
    monkeypatch.delenv("CLIPADAPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert FeatureCache().folder == tmp_path / "x" / "clipadapt" / "features"
    assert FeatureCache(tmp_path / "given").folder == tmp_path / "given"


def _cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "clipadapt", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.cli
def test_cli_eval_says_when_it_reads_the_cache_and_opts_out(learn_root, tmp_path):
    env = {**os.environ, "CLIPADAPT_CACHE": str(tmp_path / "cache")}
    base = [
        "eval",
        "--dataset",
        "eurosat",
        "--data-root",
        learn_root,
        "--subsample",
        "new",
        "--workers",
        "0",
        "--backbone",
        "synthetic",
        "--pretrained",
        "shipped",
    ]
    one = _cli(*base, "--out", str(tmp_path / "one"), env=env)
    assert one.returncode == 0, one.stderr
    assert "feature cache: wrote" in one.stderr and "feature cache: read" not in one.stderr
    two = _cli(*base, "--out", str(tmp_path / "two"), env=env)
    assert (
        "feature cache: read" in two.stderr and str(tmp_path / "cache" / "features") in two.stderr
    )
    assert one.stdout == two.stdout  # the same accuracy line
    off = _cli(*base, "--out", str(tmp_path / "off"), "--no-feature-cache", env=env)
    assert off.returncode == 0 and "feature cache" not in off.stderr
    assert off.stdout == one.stdout
    elsewhere = _cli(
        *base, "--out", str(tmp_path / "else"), "--feature-cache", str(tmp_path / "mine"), env=env
    )
    assert "feature cache: wrote" in elsewhere.stderr and len(os.listdir(tmp_path / "mine")) == 1
