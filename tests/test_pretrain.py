"""Pretraining the tiny CLIP on the synthetic world: contrast groups, learning, resuming, exporting."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from clipadapt.synthetic.pretrain import load_exported, pretrain, vocabulary_token_ids
from clipadapt.synthetic.render import FACTOR_VALUES, SHAPES, contrast_group
from clipadapt.synthetic_weights import shipped_tokenizer

SMALL = {"batch_size": 32, "pool_size": 40, "shape_groups": 1, "warmup": 2, "progress": False}


@pytest.mark.parametrize("factor", list(FACTOR_VALUES))
def test_contrast_group_differs_in_its_factor_only(factor):
    rng = random.Random(3)
    size = len(SHAPES) if factor == "shape" else 4
    scenes, got = contrast_group(rng, size, factor)
    assert got == factor and len(scenes) == min(size, len(FACTOR_VALUES[factor]))
    assert len({getattr(s, factor) for s in scenes}) == len(scenes)
    for other in (
        "shape",
        "colour",
        "pattern",
        "size",
        "count",
        "position",
        "background",
        "style",
        "seed",
    ):
        if other != factor and not (factor == "count" and other == "position"):
            assert len({getattr(s, other) for s in scenes}) == 1, other


def _log(folder):
    with open(folder / "pretrain_log.jsonl") as f:
        return [json.loads(line) for line in f]


class Interrupt(Exception):
    pass


def _interrupt(model):
    raise Interrupt


@pytest.mark.learning
def test_pretraining_learns_and_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    steps = 24
    whole = tmp_path / "whole"
    pretrain(str(whole), steps=steps, **SMALL)
    losses = [r["loss"] for r in _log(whole)]
    assert [r["step"] for r in _log(whole)] == list(range(1, steps + 1))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, (
        losses
    )  # 32 pairs: chance loss is ln 32 = 3.47

    cut = tmp_path / "cut"
    with pytest.raises(Interrupt):  # stops inside step 12, after the state of step 10 was saved
        pretrain(str(cut), steps=steps, eval_fn=_interrupt, eval_every=12, save_every=5, **SMALL)
    assert len(_log(cut)) == 11
    pretrain(str(cut), steps=steps, save_every=5, **SMALL)
    assert [r["step"] for r in _log(cut)] == list(range(1, steps + 1))  # steps 11.. logged once
    assert [r["loss"] for r in _log(cut)] == losses
    a, b = (
        load_file(str(whole / "synthetic-clip.safetensors")),
        load_file(str(cut / "synthetic-clip.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exported_weights_are_the_trained_weights_in_fp16(tmp_path):
    pretrain(str(tmp_path), steps=2, **SMALL)
    trained = torch.load(tmp_path / "pretrain_state.pt", weights_only=True)["model"]
    loaded = load_exported(str(tmp_path / "synthetic-clip.safetensors")).state_dict()
    assert loaded.keys() == trained.keys()
    ids = vocabulary_token_ids(shipped_tokenizer())
    for name, value in trained.items():
        if name == "token_embedding.weight":  # only the world's words are shipped
            value, got = value[ids], loaded[name][ids]
        else:
            got = loaded[name]
        torch.testing.assert_close(got, value.half().float(), rtol=0, atol=0, msg=name)
    with open(tmp_path / "pretrain_config.json") as f:
        assert json.load(f)["shape_groups"] == 1


def test_pretraining_refuses_groups_larger_than_the_batch(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        pretrain(
            str(tmp_path), steps=1, batch_size=16, pool_size=40, shape_groups=2, progress=False
        )


def test_the_shipped_record_summarises_the_shipped_log(tmp_path):
    import gzip
    from pathlib import Path

    from clipadapt.synthetic.pretrain import summarise_pretrain_log
    from clipadapt.synthetic_weights import shipped_record

    log = (
        tmp_path / "pretrain_log.jsonl"
    )  # the whole log lives outside the package, gzipped in docs/
    log.write_bytes(
        gzip.decompress(
            (Path(__file__).parents[1] / "docs" / "synthetic-pretrain-log.jsonl.gz").read_bytes()
        )
    )
    record = shipped_record()
    summary = summarise_pretrain_log(str(log))
    assert record["log_summary"] == summary
    assert (
        summary[-1]["step"] == record["pretrain"]["steps"]
        and len(summary) == record["pretrain"]["steps"] // 125
    )
