"""Prompt sets: template ensembles and per-class descriptions, for every method that encodes fixed prompts."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_until_interrupted

from clipadapt import model as model_module
from clipadapt.errors import ClipadaptError
from clipadapt.model import build_model
from clipadapt.prompts import class_prompts, openai_templates

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["red disc", "green_square", "blue disc"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "itap of a {}."]
DESCRIPTIONS = {
    "Red_Disc": ["a round red thing.", "a red circle.", "a red disc on a plain background."],
    "green square": ["a green square."],
    "blue disc": ["a blue disc.", "something round and blue."],
}


@pytest.fixture
def descriptions_file(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps(DESCRIPTIONS))
    return str(path)


def _prompt_features(prompts):
    """Text features of single prompts, each encoded on its own (template '{}')."""
    model = build_model("zeroshot", prompts, template="{}", **TINY).eval()
    with torch.no_grad():
        return model.text_features()


def test_descriptions_are_matched_as_the_official_code_matches_them(descriptions_file):
    got = class_prompts(descriptions_file, CLASSES, "a photo of a {}.")
    assert got == [
        DESCRIPTIONS["Red_Disc"],
        DESCRIPTIONS["green square"],
        DESCRIPTIONS["blue disc"],
    ]
    assert [len(p) for p in got] == [3, 1, 2]
    ensemble = class_prompts("openai80", ["green_square"], "unused {}")[0]
    assert (
        len(ensemble) == 80 == len(openai_templates())
        and "a bad photo of a green square." in ensemble
    )


@pytest.mark.parametrize("method", ["zeroshot", "clip_adapter", "mma_pp"])
def test_inference_uses_the_mean_of_normalised_prompt_features(method, descriptions_file):
    options = (
        {"ratio": 0.0}
        if method == "clip_adapter"
        else {"test_scale": 0.0}
        if method == "mma_pp"
        else {}
    )
    model = build_model(method, CLASSES, prompts=descriptions_file, **options, **TINY).eval()
    per_prompt = F.normalize(
        _prompt_features([p for c in DESCRIPTIONS.values() for p in c]), dim=-1
    )
    expected = F.normalize(
        torch.stack([per_prompt[0:3].mean(0), per_prompt[3], per_prompt[4:6].mean(0)]), dim=-1
    )
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.text_features(), expected, rtol=1e-5, atol=1e-5)
        image_f = F.normalize(model.encode(images, with_text=False)[0], dim=-1)
        logits = model(images)
    torch.testing.assert_close(
        logits, model.backbone.logit_scale * image_f @ expected.t(), rtol=1e-4, atol=1e-4
    )


def test_template_ensemble_is_computed_once_per_class_set_and_chunking_changes_nothing(monkeypatch):
    model = build_model("zeroshot", CLASSES, prompts=TEMPLATES, **TINY).eval()
    calls = {"n": 0}
    real = model._prompt_set_features

    def counting(**kwargs):
        calls["n"] += 1
        return real(**kwargs)

    monkeypatch.setattr(model, "_prompt_set_features", counting)
    with torch.no_grad():
        for _ in range(3):
            whole = model(torch.randn(4, 3, 32, 32))
        assert calls["n"] == 1
        reference = model.text_features().clone()
        monkeypatch.setattr(model_module, "PROMPT_CHUNK", 2)  # 9 prompts in 5 chunks
        model.set_classes(CLASSES)
        torch.testing.assert_close(model.text_features(), reference, rtol=1e-5, atol=1e-6)
    assert calls["n"] == 2 and whole.shape == (4, 3)


def test_missing_class_is_a_clear_error_with_exit_2(descriptions_file, fake_root, tmp_path, capsys):
    from clipadapt.cli import main

    with pytest.raises(ClipadaptError, match="no descriptions for class 'yellow square'"):
        build_model("zeroshot", CLASSES + ["yellow square"], prompts=descriptions_file, **TINY)
    code = main(
        [
            "eval",
            "--dataset",
            "caltech101",
            "--data-root",
            fake_root,
            "--out",
            str(tmp_path / "e"),
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
            "--prompts",
            descriptions_file,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "clipadapt: error:" in line][0].count(
        "no descriptions for class"
    ) == 1


def test_prompts_folder_picks_the_dataset_file(tmp_path, descriptions_file):
    folder = tmp_path / "cupl"
    folder.mkdir()
    (folder / "dtd.json").write_text(json.dumps({"banded": ["stripes."]}))
    (folder / "imagenet.json").write_text(json.dumps({"banded": ["imagenet stripes."]}))
    assert class_prompts(str(folder), ["banded"], "{}", dataset="dtd") == [["stripes."]]
    assert class_prompts(str(folder), ["banded"], "{}", dataset="imagenet_sketch") == [
        ["imagenet stripes."]
    ]
    with pytest.raises(ClipadaptError, match="has no eurosat.json"):
        class_prompts(str(folder), ["banded"], "{}", dataset="eurosat")
    with pytest.raises(ClipadaptError, match="without a dataset"):
        class_prompts(str(folder), ["banded"], "{}")
    with pytest.raises(ClipadaptError, match="nope.json' does not exist"):
        class_prompts(str(tmp_path / "nope.json"), ["banded"], "{}")


def test_methods_with_learned_prompts_refuse_prompt_sets():
    for method in ("coop", "rmma"):
        with pytest.raises(ClipadaptError, match="takes no prompt sets"):
            build_model(method, CLASSES, prompts="openai80", **TINY)


def _train_recording_draws(data, seed, out_dir=None, interrupt_at=None):
    from clipadapt.engine import TrainConfig, Trainer, seed_everything

    cfg = TrainConfig(
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.0,
        epochs=2,
        batch_size=8,
        augment=False,
        seed=seed,
    )

    def build():
        seed_everything(3)
        model = build_model("mma_pp", data.classnames, prompts=TEMPLATES, train_scale=0.1, **TINY)
        draws = []
        real = model.draw_prompts
        model.draw_prompts = lambda: draws.append(real().tolist()) or model.last_draw
        return model, draws, Trainer(model, data.train, cfg, out_dir=out_dir, progress=False)

    model, draws, trainer = build()
    if interrupt_at is not None:
        run_until_interrupted(trainer, interrupt_at)
        model, draws, trainer = build()
    trainer.run()
    with torch.no_grad():
        return draws, model.eval()(torch.ones(1, 3, 32, 32))


def test_training_draws_follow_the_seed_and_replay_on_resume(learn_root, tmp_path):
    from clipadapt import build_dataset

    data = build_dataset(
        "eurosat", learn_root, shots=4, seed=1, subsample="base"
    )  # 20 images: 2 steps an epoch
    straight, logits = _train_recording_draws(data, seed=1, out_dir=str(tmp_path / "a"))
    assert len(straight) == 4 and all(len(d) == 5 for d in straight)
    assert all(
        3 * c <= i < 3 * c + 3 for d in straight for c, i in enumerate(d)
    )  # one of each class's own
    assert len({tuple(d) for d in straight}) > 1
    other_seed, _ = _train_recording_draws(data, seed=2)
    assert other_seed != straight
    resumed, resumed_logits = _train_recording_draws(
        data, seed=1, out_dir=str(tmp_path / "b"), interrupt_at=3
    )
    assert resumed == straight[2:]  # the interrupted epoch 2 reruns from its checkpointed start
    assert torch.equal(resumed_logits, logits)


def test_cli_prompts_on_eval_and_checkpoint(fake_root, tmp_path, descriptions_file):
    from clipadapt.cli import main

    tiny = ["--backbone", "clipadapt-tiny", "--pretrained", "none"]
    base = ["eval", "--dataset", "caltech101", "--data-root", fake_root, *tiny]
    assert main([*base, "--out", str(tmp_path / "zs80"), "--prompts", "openai80"]) == 0
    assert json.loads((tmp_path / "zs80" / "metrics.json").read_text())["prompts"] == "openai80"
    # An adapter trained with one prompt set evaluates with another (prompt sets are not parameters).
    adapter = tmp_path / "a.safetensors"
    build_model("mma_pp", ["x", "y"], prompts=TEMPLATES, **TINY).save_adapter(str(adapter))
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "ck"),
                "--checkpoint",
                str(adapter),
                "--prompts",
                "openai80",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ck" / "metrics.json").read_text())["prompts"] == "openai80"
