"""Hybrids (`rmadapter+coop`): both parts train, hooks that cannot chain are refused, each part's options
are addressed by its name, and teachers read the hand-crafted prompt, never a learned placeholder."""

import pytest
import torch
import yaml

import clipadapt
from clipadapt import build_dataset, build_model
from clipadapt.checks import check_run_names
from clipadapt.cli import main
from clipadapt.engine import TrainConfig, Trainer
from clipadapt.errors import ClipadaptError
from clipadapt.frozen_cache import frozen_text_features
from clipadapt.methods import METHODS, make_config, method_class
from clipadapt.methods.hybrid import Hybrid
from clipadapt.runconfig import resolve

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["circle", "square", "red_star"]
# The learning settings of tests/conftest.py FAST_LEARNING for rmadapter (and coop's optimizer).
FAST = {"rmadapter.scale": 0.1, "optimizer": "adamw", "weight_decay": 0.0, "lr": 0.01}
FAST_OPTIONS = {k: v for k, v in FAST.items() if "." in k}
WORDS = {"coop.ctx_init": "a photo of a", "coop.n_ctx": 4}  # CoOp's context starts as these words


def test_rmadapter_coop_trains_the_context_and_the_adapters_together(
    learn_root, tmp_path, monkeypatch
):
    initial = {}
    built = Hybrid.__init__

    def keep_initial(self, *args, **kwargs):
        built(self, *args, **kwargs)
        initial.update({k: v.detach().clone() for k, v in self.state_dict().items()})

    monkeypatch.setattr(Hybrid, "__init__", keep_initial)
    out = tmp_path / "run"
    clipadapt.train(
        "rmadapter+coop",
        "eurosat",
        learn_root,
        str(out),
        protocol="base2novel",
        shots=2,
        seed=1,
        config="none",
        progress=False,
        epochs=2,
        augment=False,
        **TINY,
        **FAST,
        **WORDS,
    )
    model = clipadapt.load_model(str(out / "adapter.safetensors"))
    trained = model.method.state_dict()
    assert set(trained) == set(initial)
    moved = {k for k in trained if not torch.equal(trained[k], initial[k])}
    assert "coop.ctx" in moved  # CoOp's context left its words
    words = model.backbone.embed_tokens(model.backbone.tokenize(["a photo of a"]))[0, 1:5]
    assert torch.allclose(initial["coop.ctx"], words.float())
    adapters = {k for k in trained if k.startswith("rmadapter.")}
    assert {k for k in adapters if "text_adapter" in k} & moved
    assert {k for k in adapters if "visual_adapter" in k} & moved
    assert {k for k in adapters if "recon_head" in k} & moved
    # The record names the hybrid and both parts' options.
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["method"] == "rmadapter+coop"
    assert record["coop.n_ctx"] == 4 and record["coop.ctx_init"] == "a photo of a"
    assert record["rmadapter.scale"] == 0.1 and record["rmadapter.consistency"] == "l1"


def test_a_pair_that_cannot_compose_is_refused_in_one_line_naming_the_hook(
    learn_root, tmp_path, capsys
):
    cases = {
        "coop+kgcoop": "hook 'prompt_embeddings'",
        "mma+rmadapter": "hook 'step'",
        "mma_attn+mmrl": "hook 'logits'",
        "coop+cocoop": "hook 'after_heads'",
    }
    for name, hook in cases.items():
        with pytest.raises(ClipadaptError) as err:
            method_class(name)
        assert hook in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ClipadaptError, match="hook 'step'"):
        clipadapt.train(
            "mma+rmadapter", "eurosat", learn_root, str(tmp_path / "x"), config="none", **TINY
        )
    # On the command line: refused before any preset is looked up, one line, exit 2.
    argv = ["train", "--method", "coop+kgcoop", "--dataset", "eurosat", "--data-root", learn_root]
    assert (
        main(
            [
                *argv,
                "--out",
                str(tmp_path / "y"),
                "--backbone",
                "clipadapt-tiny",
                "--pretrained",
                "none",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hook 'prompt_embeddings'" in err[0], err


def test_names_before_torch_accept_a_hybrid_of_known_methods():
    check_run_names(method="rmadapter+coop")
    assert "rmadapter+coop" in METHODS and "coop+rmadapter" in METHODS
    for bad in ("rmadapter+nope", "coop+coop", "rmadapter+"):
        with pytest.raises(ClipadaptError, match="unknown method"):
            check_run_names(method=bad)
        assert bad not in METHODS


def test_each_part_option_is_addressed_by_its_part_name():
    config = make_config("rmadapter+coop", {"coop.n_ctx": 4, "rmadapter.scale": 0.01})
    assert config.parts["coop"].n_ctx == 4 and config.parts["rmadapter"].scale == 0.01
    assert config.parts["rmadapter"].adapter_dim == 32  # the part's own default
    assert make_config("rmadapter+coop", config.to_dict()) == config
    with pytest.raises(ClipadaptError, match="'<part>.scale'"):
        make_config("rmadapter+coop", {"scale": 0.01})
    with pytest.raises(ClipadaptError, match="'mma' is not a part"):
        make_config("rmadapter+coop", {"mma.scale": 0.01})
    with pytest.raises(ClipadaptError, match="coop: .*n_ctx"):
        make_config("rmadapter+coop", {"coop.n_ctx": "many"})
    with pytest.raises(ClipadaptError, match="coop: unknown option"):
        make_config("rmadapter+coop", {"coop.scale": 0.01})
    # Presets and key=value go through the same resolution; training settings stay unprefixed.
    method_cfg, train_cfg, record = resolve(
        "rmadapter+coop", {"coop.n_ctx": 8, "epochs": 3}, {"rmadapter.scale": 0.01}
    )
    assert method_cfg.parts["coop"].n_ctx == 8 and train_cfg.epochs == 3
    assert record["rmadapter.scale"] == 0.01 and record["method"] == "rmadapter+coop"
    # The first part's training defaults, overridable like any setting.
    assert (
        method_class("rmadapter+coop").training_defaults
        == method_class("rmadapter").training_defaults
    )
    assert resolve("rmadapter+coop", None, {"lr": 0.5})[1].lr == 0.5


def test_both_parts_switched_off_give_zero_shot_logits(tiny_backbone):
    hybrid = build_model(
        "rmadapter+coop", CLASSES, backbone=tiny_backbone, **{"rmadapter.scale": 0.0, **WORDS}
    ).eval()
    zeroshot = build_model(
        "zeroshot", CLASSES, backbone=tiny_backbone, template="a photo of a {}."
    ).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hybrid(images), zeroshot(images), atol=1e-5)


def test_save_load_round_trip(learn_root, tmp_path):
    data = build_dataset("eurosat", learn_root, shots=2, seed=1, subsample="base")
    options = {**FAST_OPTIONS, "coop.n_ctx": 4}
    model = build_model("rmadapter+coop", data.classnames, **TINY, **options)
    cfg = TrainConfig(epochs=1, augment=False, batch_size=8, optimizer="adamw", lr=0.01)
    Trainer(model, data.train, cfg, progress=False).run()
    path = str(tmp_path / "adapter.safetensors")
    model.save_adapter(path)
    fresh = build_model("rmadapter+coop", data.classnames, **TINY, **options)
    fresh.load_adapter(path)
    loaded = clipadapt.load_model(path)
    assert loaded.method.name == "rmadapter+coop" and loaded.method.config == model.method.config
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(images)
        assert torch.equal(expected, fresh.eval()(images))
        assert torch.equal(expected, loaded.eval()(images))


def _teacher_text(model, images):
    model.train()
    model(images)
    return model.method.rmadapter._frozen_features["text"]


def test_the_consistency_teacher_reads_the_hand_crafted_prompt(tiny_backbone):
    images = torch.randn(2, 3, 32, 32)
    model = build_model("rmadapter+coop", CLASSES, backbone=tiny_backbone, **{"coop.n_ctx": 4})
    assert model.prompts[0] == "X X X X circle."  # what the model encodes: CoOp's placeholders
    teacher = _teacher_text(model, images)
    hand_crafted = frozen_text_features(
        tiny_backbone, [f"a photo of a {c}." for c in ["circle", "square", "red star"]]
    )
    placeholder = frozen_text_features(tiny_backbone, model.prompts)
    assert torch.allclose(teacher.float(), hand_crafted, atol=1e-6)
    assert not torch.allclose(teacher.float(), placeholder, atol=1e-3)
    # Without a template of its own, RMAdapter's hand-crafted prompt is the dataset's.
    model = build_model(
        "rmadapter+coop",
        CLASSES,
        backbone=tiny_backbone,
        default_template="a centered satellite photo of {}.",
        **{"coop.n_ctx": 4, "rmadapter.template": None},
    )
    teacher = _teacher_text(model, images)
    satellite = frozen_text_features(
        tiny_backbone,
        [f"a centered satellite photo of {c}." for c in ["circle", "square", "red star"]],
    )
    assert torch.allclose(teacher.float(), satellite, atol=1e-6)


def test_without_a_part_replacing_prompts_the_teacher_is_the_model_s_frozen_prompt(tiny_backbone):
    model = build_model("rmadapter+mma_attn", CLASSES, backbone=tiny_backbone)
    teacher = _teacher_text(model, torch.randn(2, 3, 32, 32))
    hand_crafted = frozen_text_features(
        tiny_backbone, [f"a photo of a {c}." for c in ["circle", "square", "red star"]]
    )
    assert torch.allclose(teacher.float(), hand_crafted, atol=1e-5)


def _composable_pairs():
    names = [n for n in METHODS if n != "zeroshot"]
    pairs = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            try:
                method_class(f"{first}+{second}")
            except ClipadaptError:
                continue
            pairs.append(f"{first}+{second}")
    return pairs


# A few minutes on a shared 2-core CPU (PromptSRC's 60 frozen templates, MMA++'s drawn-scale stream, ...).
@pytest.mark.slow
def test_every_composable_pair_of_built_ins_reaches_every_part_with_a_gradient(tiny_backbone):
    pairs = _composable_pairs()
    assert "coop+rmadapter" in pairs and "rmadapter+kgcoop" in pairs and len(pairs) >= 20
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for name in pairs:
        torch.manual_seed(0)
        model = build_model(name, CLASSES, backbone=tiny_backbone).train()
        loss, _ = model.method.loss(model(images), labels)
        loss.backward()
        for part, method in model.method.parts().items():
            grads = [p.grad for p in method.parameters() if p.requires_grad]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), (name, part)


def test_cached_frozen_images_give_the_uncached_logits_loss_and_gradients(tiny_backbone):
    model = build_model("rmadapter+coop", CLASSES, backbone=tiny_backbone, **FAST_OPTIONS).train()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    block = model.method.first_active_blocks(tiny_backbone)[0]
    assert 0 < block < len(tiny_backbone.image_blocks)  # RMAdapter's first adapted block
    results = []
    for given in (images, model.frozen_images(images, block, with_final=True)):
        model.method.zero_grad()
        loss, _ = model.method.loss(model(given), labels)
        loss.backward()
        grads = {
            k: p.grad.clone() for k, p in model.method.named_parameters() if p.grad is not None
        }
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert set(grads_a) == set(grads_b) and "coop.ctx" in grads_a
    for key in grads_a:
        assert torch.allclose(grads_a[key], grads_b[key], atol=1e-5, rtol=1e-4), key
