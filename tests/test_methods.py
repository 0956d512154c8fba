"""Every method behind the one interface: what each declares, RMMA, presets and the command line
(the invariants every method keeps: tests/test_conformance.py)."""

import glob
import os

import pytest
import torch

from clipadapt.methods import METHODS
from clipadapt.model import build_model
from clipadapt.registry import builtin_method_names
from clipadapt.runconfig import read_preset, resolve

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["red disc", "green square", "blue disc", "yellow square"]


# Switched off (Method.off_options) = zero-shot and batch independence: every method passes
# clipadapt.testing.check_method in tests/test_conformance.py.
def test_the_methods_that_declare_an_off_switch():
    # No option switches MMRL or MaPLe off: their tokens enter the attention of every block they
    # reach (docs/methods.md); the prompt learners' context has no strength to set to zero.
    # CLIP-LoRA is also zero-shot untrained (B = 0), tested in test_mmrl_maple_lora.py.
    built_in = {name: METHODS[name] for name in builtin_method_names()}  # plugins may be installed
    declared = {
        name: cls.off_options for name, cls in built_in.items() if cls.off_options is not None
    }
    assert declared == {
        "zeroshot": {},
        "clip_adapter": {"ratio": 0.0},
        "mma": {"scale": 0.0},
        "mma_pp": {"test_scale": 0.0},
        "rmadapter": {"scale": 0.0},
        "rmma": {"alpha": 0.0},
        "mma_attn": {"residual": 0.0},
        "clip_lora": {"alpha": 0.0},
    }


def test_untrained_rmma_is_zero_shot():
    zs = build_model("zeroshot", CLASSES, default_template="a photo of a {}.", **TINY).eval()
    model = build_model("rmma", CLASSES, **TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), zs(images), rtol=0, atol=1e-5)


def test_rmma_parameter_count_does_not_grow_with_depth():
    shallow = build_model("rmma", CLASSES, backbone="clipadapt-tiny", pretrained="none")
    deep = build_model("rmma", CLASSES, backbone="clipadapt-tiny-deep", pretrained="none")
    assert len(deep.backbone.image_blocks) == 2 * len(shallow.backbone.image_blocks)
    assert deep.method.num_trainable() == shallow.method.num_trainable() > 0
    mma_shallow = build_model(
        "mma", CLASSES, backbone="clipadapt-tiny", pretrained="none"
    ).method.num_trainable()
    mma_deep = build_model(
        "mma", CLASSES, backbone="clipadapt-tiny-deep", pretrained="none"
    ).method.num_trainable()
    assert mma_deep > mma_shallow  # unlike MMA's, whose adapters are per block


def _fake_vit_b16():
    from types import SimpleNamespace

    return SimpleNamespace(
        image_width=768, text_width=512, image_blocks=[None] * 12, text_blocks=[None] * 12
    )


@pytest.mark.parametrize(
    "attn_proj, expected", [("none", 173_568), ("qkv", 337_664), ("qkvo", 502_912)]
)
@pytest.mark.vit
def test_rmma_vit_b16_parameter_counts(attn_proj, expected):
    from clipadapt.methods.rmma import RMMA, RMMAConfig

    d, di, dt = 64, 768, 512
    routing, down, fuse = (
        (d * di + di) + (d * dt + dt),
        (di * d + d) + (dt * d + d),
        2 * d * d + d + d,
    )  # + v0
    qkv = 3 * (di * d + d) + 3 * (dt * d + d)
    out = (d * di + di) + (d * dt + dt)
    formula = {
        "none": routing + down + fuse,
        "qkv": routing + fuse + qkv,
        "qkvo": routing + down + fuse + qkv + out,
    }
    method = RMMA(RMMAConfig(attn_proj=attn_proj), _fake_vit_b16(), [])
    assert method.num_trainable() == formula[attn_proj] == expected


@pytest.mark.parametrize("attn_proj", ["qkv", "qkvo"])
def test_rmma_attention_projections_keep_untrained_model_zero_shot_and_learn(attn_proj):
    zs = build_model("zeroshot", CLASSES, default_template="a photo of a {}.", **TINY).eval()
    model = build_model("rmma", CLASSES, attn_proj=attn_proj, **TINY)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), zs(images), rtol=0, atol=1e-5)
    m = build_model(
        "rmma", CLASSES, attn_proj=attn_proj, **TINY
    )  # trained-looking: batch independent
    with torch.no_grad():
        for p in m.method.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.eval()
        together = m(images)
        alone = torch.cat([m(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together, zs(images), atol=1e-3)


def test_rmma_separation_loss_is_zero_for_disjoint_latent_directions():
    for sep_norm in ("gram", "frobenius"):
        model = build_model("rmma", CLASSES, sep_norm=sep_norm, **TINY)
        m = model.method
        w = m.route_image.weight.shape[0]
        with torch.no_grad():
            for layer in (m.route_image, m.route_text, m.down_image, m.down_text):
                layer.weight.zero_()
            m.route_image.weight[:, :32] = torch.randn(w, 32)  # image uses latent dims 0..31
            m.route_text.weight[:, 32:] = torch.randn(w, 32)  # text uses 32..63
            m.down_image.weight[:32] = torch.randn(32, w)
            m.down_text.weight[32:] = torch.randn(32, w)
            assert m.separation_loss().item() == pytest.approx(0.0, abs=1e-6)
            m.route_text.weight.copy_(m.route_image.weight)  # identical routing: full overlap
            expected = (
                1.0
                if sep_norm == "gram"
                else (m.route_image.weight @ m.route_text.weight.t()).norm().item()
            )
            assert m.separation_loss().item() == pytest.approx(expected, rel=1e-5)


def test_rmma_separation_loss_is_scale_free_and_weighs_like_the_task_loss():
    from clipadapt.methods.rmma import RMMA, RMMAConfig

    torch.manual_seed(0)
    gram = RMMA(RMMAConfig(), _fake_vit_b16(), [])
    torch.manual_seed(0)
    frob = RMMA(RMMAConfig(sep_norm="frobenius"), _fake_vit_b16(), [])
    at_init = gram.separation_loss()
    assert 0.0 < 0.6 * at_init.item() <= 1.2  # two cosines in [0, 1], weighted by λ = 0.6
    assert (
        0.6 * frob.separation_loss().item() > 10
    )  # the unnormalised norm swamps a cross-entropy of 1-2
    at_init.backward()
    for layer in (gram.route_image, gram.route_text, gram.down_image, gram.down_text):
        # Scale-free: the gradient is orthogonal to each weight, so descent does not shrink it.
        g, w = layer.weight.grad, layer.weight
        assert abs((g * w).sum().item()) < 1e-5 * g.norm().item() * w.norm().item() + 1e-8
    with torch.no_grad():
        gram.route_image.weight.mul_(10)
        gram.down_text.weight.mul_(0.1)
        torch.testing.assert_close(gram.separation_loss(), at_init.detach())


def test_rmma_text_context_switch_changes_the_image_keys():
    outs = {}
    for context in ("eot", "all"):
        torch.manual_seed(1)
        model = build_model("rmma", CLASSES, text_context=context, **TINY)
        with torch.no_grad():
            for p in model.method.parameters():
                p.add_(0.05 * torch.randn_like(p))
            model.eval()
            outs[context] = model(torch.ones(2, 3, 32, 32))
        ctx = model.method._text_context[model.method.first]
        assert ctx.shape[0] == (
            len(CLASSES) if context == "eot" else int((model.text_batch.pool_index + 1).sum())
        )
    assert not torch.allclose(outs["eot"], outs["all"])


def test_rmma_contrastive_loss_terms_and_the_image_to_text_switch():
    torch.manual_seed(3)
    logits = 10 * torch.randn(6, len(CLASSES))
    labels = torch.tensor([0, 2, 0, 3, 2, 0])  # class 1 absent, classes 0 and 2 repeated
    # Text to image by loops: each present class against the batch's images, its images all positive.
    t2i = []
    for c in sorted(set(labels.tolist())):
        column = logits[:, c].exp()
        t2i.append(-torch.log(column[labels == c].sum() / column.sum()))
    t2i = torch.stack(t2i).mean()
    i2t = torch.nn.functional.cross_entropy(logits, labels)
    for contrastive, expected_clip in (("symmetric", 0.5 * (i2t + t2i)), ("image_to_text", i2t)):
        method = build_model("rmma", CLASSES, contrastive=contrastive, **TINY).method
        total, parts = method.loss(logits, labels)
        torch.testing.assert_close(parts["t2i"], t2i)
        torch.testing.assert_close(parts["clip"], expected_clip)
        torch.testing.assert_close(total, expected_clip + 0.6 * method.separation_loss())
    from clipadapt.errors import ClipadaptError

    with pytest.raises(ClipadaptError, match="contrastive"):
        build_model("rmma", CLASSES, contrastive="text_to_image", **TINY)


def test_rmma_images_need_the_class_text_pass_first():
    from clipadapt.errors import ClipadaptError

    model = build_model("rmma", CLASSES, **TINY).eval()
    with pytest.raises(ClipadaptError, match="encode the text first"):
        model.encode(torch.randn(1, 3, 32, 32), with_text=False)


def test_coop_context_sits_after_start_token():
    model = build_model("coop", CLASSES, n_ctx=4, **TINY)
    assert model.prompts[0] == "X X X X red disc."
    emb = model.method.prompt_embeddings(model.text_batch).embeddings
    assert torch.equal(emb[:, 1:5], model.method.ctx.unsqueeze(0).expand(4, -1, -1))
    assert torch.equal(emb[:, 0], model.text_batch.embeddings[:, 0])
    assert torch.equal(emb[:, 5:], model.text_batch.embeddings[:, 5:])


def test_output_only_methods_compute_frozen_features_once(learn_root, monkeypatch):
    from clipadapt import build_dataset
    from clipadapt.engine import TrainConfig, Trainer

    data = build_dataset("eurosat", learn_root, shots=4, seed=1, subsample="base")
    for augment, expected_calls in (
        (False, 1),
        (True, 2 * 3),
    ):  # 20 images: one cache batch, or 2 full batches x 3 epochs
        model = build_model("clip_adapter", data.classnames, **TINY)
        calls = {"n": 0}
        real = model.frozen_image_features

        def counting(images):
            calls["n"] += 1
            return real(images)

        monkeypatch.setattr(model, "frozen_image_features", counting)
        Trainer(
            model, data.train, TrainConfig(epochs=3, batch_size=8, augment=augment), progress=False
        ).run()
        assert calls["n"] == expected_calls, augment


@pytest.mark.parametrize("folder", ["", "synthetic"])
def test_every_method_has_presets_that_resolve(folder):
    presets = glob.glob(
        os.path.join(
            os.path.dirname(__file__), "..", "src", "clipadapt", "presets", folder, "*.yaml"
        )
    )
    covered = set()
    for path in presets:
        data = read_preset(path)
        resolve(data["method"], data)
        covered.add(data["method"])
    # Every built-in has presets (an installed plugin's presets are its own); hybrids
    # (rmadapter+coop) may have their own.
    assert {m for m in covered if "+" not in m} == set(builtin_method_names())


def test_train_help_and_info_list_every_method(capsys):
    import json
    import subprocess
    import sys

    from clipadapt.cli import main

    out = subprocess.run(
        [sys.executable, "-m", "clipadapt.cli", "train", "--help"], capture_output=True, text=True
    )
    for method in METHODS:
        assert method in out.stdout
        assert main(["info", "--method", method, "--backbone", "clipadapt-tiny", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["method"] == method


@pytest.mark.parametrize(
    "name, image_frozen",
    [
        ("zeroshot", True),
        ("coop", True),
        ("clip_adapter", True),
        ("mma_attn", True),
        ("mma", False),
        ("rmma", False),
        ("clip_lora", False),
    ],
)
def test_image_tower_frozen_declaration(tiny_backbone, name, image_frozen):
    model = build_model(name, ["cat", "dog"], backbone=tiny_backbone)
    assert model.method.image_tower_is_frozen(tiny_backbone) == image_frozen
    if name == "coop":
        assert model.method.first_active_blocks(tiny_backbone)[1] == 0
