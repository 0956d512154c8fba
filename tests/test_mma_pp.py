"""MMA++ against the official VLM-MMApp code's equations: α-decoupling, α-consistency, reuse of MMA."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed_model

from clipadapt.methods import mma as mma_module
from clipadapt.model import build_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["red disc", "green_square", "blue disc"]


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(3, 3, 32, 32)


def _perturbed(**options):
    """MMA++ in training mode (its scale is drawn per step there), adapters off their initial values."""
    return perturbed_model("mma_pp", CLASSES, **options).train()


@pytest.mark.vit
def test_vit_b16_parameter_count(capsys):
    from clipadapt.cli import main

    assert main(["info", "--method", "mma_pp", "--backbone", "ViT-B-16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 674_560


def test_structure_and_initialisation_follow_official_code():
    model = build_model("mma_pp", CLASSES, dropout=0.2, **TINY)
    m = model.method
    mma = build_model("mma", CLASSES, **TINY).method
    assert set(m.state_dict()) == set(mma.state_dict())  # MMA's modules and official keys
    shared = m.shared_adapter["3"]
    assert [type(x).__name__ for x in shared] == ["Linear", "ReLU", "Dropout"] and shared[
        2
    ].p == 0.2
    for name, p in m.named_parameters():
        if name.endswith(
            "bias"
        ):  # nn.Linear's default, which the official MMA++ keeps (MMA zeroes them)
            bound = p.new_tensor(1.0 / m.get_submodule(name.rsplit(".", 1)[0]).in_features ** 0.5)
            assert torch.count_nonzero(p) > 0 and p.abs().max() <= bound, name
    w = m.text_adapter["3"].up.weight  # fan_out = 64 rows
    assert abs(w.std().item() - (2 / w.shape[0]) ** 0.5) < 0.15 * (2 / w.shape[0]) ** 0.5


def _reference_logits(model, images, prompts_per_class, scale):
    """The official equations, written against open_clip's modules directly (full 77-token text, no cut)."""
    clip, m = model.backbone.clip, model.method

    def adapted(tower, blocks, x, mask=None):
        for i, block in enumerate(blocks):
            out = block(x, attn_mask=mask)
            if m.start <= i + 1 <= m.end:
                adapters = m.visual_adapter if tower == "image" else m.text_adapter
                a, shared = adapters[str(i + 1)], m.shared_adapter[str(i + 1)]
                u = block.ln_1(x)
                out = out + scale * a.up(
                    shared[1](shared[0](a.down(u)))
                )  # dropout is off at evaluation
            x = out
        return x

    x = adapted("image", clip.visual.transformer.resblocks, clip.visual._embeds(images))
    img = clip.visual.ln_post(x[:, 0]) @ clip.visual.proj
    class_feats = []
    for prompts in prompts_per_class:
        tokens = model.backbone.tokenize(prompts)
        t = clip.token_embedding(tokens) + clip.positional_embedding
        t = adapted("text", clip.transformer.resblocks, t, clip.attn_mask)
        f = clip.ln_final(t)[torch.arange(len(prompts)), tokens.argmax(-1)] @ clip.text_projection
        class_feats.append(F.normalize(F.normalize(f, dim=-1).mean(0), dim=-1))
    txt = torch.stack(class_feats)
    return clip.logit_scale.exp() * F.normalize(img, dim=-1) @ txt.t()


def test_eval_logits_follow_the_equations(images, tmp_path):
    assert model_transformer_is_batch_first()
    descriptions = {
        "Red disc": ["a round red thing.", "a red circle on a plain background.", "a red disc."],
        "green square": ["a green square."],
        "blue_disc": ["a blue disc.", "something round and blue."],
    }
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps(descriptions))
    model = _perturbed(train_scale=0.9, test_scale=0.4, adapter_start=2, prompts=str(path)).eval()
    per_class = [descriptions["Red disc"], descriptions["green square"], descriptions["blue_disc"]]
    with torch.no_grad():
        expected = _reference_logits(model, images, per_class, scale=0.4)
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)
        # ... and not the training scale's logits
        assert not torch.allclose(
            _reference_logits(model, images, per_class, scale=0.9), expected, atol=1e-2
        )


def model_transformer_is_batch_first():
    model = build_model("zeroshot", CLASSES, **TINY)
    return (
        model.backbone.clip.transformer.batch_first
        and model.backbone.clip.visual.transformer.batch_first
    )


def _train_pass(model, images, labels):
    model.train()
    model.zero_grad()
    logits = model(images)
    return logits, *model.method.loss(logits, labels)


def test_consistency_is_at_its_minimum_and_adds_no_gradient_at_equal_scales(images, monkeypatch):
    labels = torch.tensor([0, 1, 2])
    model = _perturbed(dropout=0.0, train_scale=0.5, reg_weight=2.5)
    monkeypatch.setattr(model.method, "draw_scale", lambda: model.method.config.train_scale)
    logits, total, parts = _train_pass(model, images, labels)
    assert parts["cos_text"] == pytest.approx(1.0, abs=1e-5) and parts[
        "cos_image"
    ] == pytest.approx(1.0, abs=1e-5)
    total.backward()
    with_term = {n: p.grad.clone() for n, p in model.method.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    for name, p in model.method.named_parameters():
        torch.testing.assert_close(with_term[name], p.grad, rtol=1e-4, atol=1e-6)
    # At another scale the term is not at its minimum and does move the adapters.
    monkeypatch.setattr(model.method, "draw_scale", lambda: 0.0)
    _, total, parts = _train_pass(model, images, labels)
    assert parts["cos_text"] < 0.9999 and parts["cos_image"] < 0.9999


def test_no_gradient_flows_through_the_drawn_scale_pass(images):
    model = _perturbed(dropout=0.0, train_scale=0.5)
    _, total, parts = _train_pass(model, images, torch.tensor([0, 1, 2]))
    m = model.method
    drawn = m._drawn_features
    assert all(not f.requires_grad for f in drawn.values())
    assert 0 <= parts["drawn_scale"] < 0.5
    # The consistency term's gradient is that of -w·cos(main, constant target).
    cons = sum(-m.config.reg_weight * c for c in m.consistency().values())
    cons.backward(retain_graph=True)
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    model.zero_grad()
    ref = sum(
        -m.config.reg_weight * F.cosine_similarity(m._features[t], drawn[t].clone(), dim=-1).mean()
        for t in ("text", "image")
    )
    ref.backward()
    for name, p in m.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-7)


def test_test_scale_never_leaks_into_training(images):
    model = _perturbed(dropout=0.0, train_scale=0.5, test_scale=0.1)
    twin = _perturbed(dropout=0.0, train_scale=0.5, test_scale=0.1)
    with torch.no_grad():
        eval_logits = model.eval()(images)
        after_eval = model.train()(images)
        never_evaluated = twin.train()(images)
    torch.testing.assert_close(after_eval, never_evaluated, rtol=0, atol=0)
    assert not torch.allclose(after_eval, eval_logits, atol=1e-3)
    assert (model.method.config.train_scale, model.method.config.test_scale) == (0.5, 0.1)


def test_drawn_scale_pass_starts_at_the_first_adapted_block(images, monkeypatch):
    model = _perturbed(adapter_start=3)  # blocks 1-2 frozen, 3-4 adapted (1-based)
    bb = model.backbone
    calls = {"image": [], "text": []}
    real_image, real_text = bb.image_block, bb.text_block
    monkeypatch.setattr(
        bb, "image_block", lambda i, x, *q: calls["image"].append(i) or real_image(i, x, *q)
    )
    monkeypatch.setattr(
        bb, "text_block", lambda i, x, *q: calls["text"].append(i) or real_text(i, x, *q)
    )
    _train_pass(model, images, torch.tensor([0, 1, 2]))
    for tower in ("image", "text"):
        assert sorted(calls[tower]) == [0, 1, 2, 2, 3, 3], (
            tower
        )  # the drawn pass reuses blocks 1-2's output
    calls = {"image": [], "text": []}
    with torch.no_grad():
        model.eval()(images)
    assert sorted(calls["image"]) == [0, 1, 2, 3]  # evaluation runs one pass


def test_drawn_scales_follow_the_seeded_generator(images):
    model = _perturbed()
    seen = []
    for seed in (3, 3, 4):
        model.seed_draws(seed)
        _train_pass(model, images, torch.tensor([0, 1, 2]))
        seen.append(model.method.drawn_scale)
    assert seen[0] == seen[1] != seen[2]
    assert all(0 <= s < model.method.config.train_scale for s in seen)


def _official_checkpoint(tmp_path, model, name="model.pth.tar-50"):
    state = {
        k: v.clone() for k, v in model.method.state_dict().items()
    }  # the official AdapterLearner's keys
    path = tmp_path / name
    torch.save({"state_dict": state, "epoch": 50, "optimizer": {}, "scheduler": {}}, path)
    return path


def test_import_mma_pp_command(tmp_path, images, capsys):
    from clipadapt.cli import main
    from clipadapt.model import load_model

    source = _perturbed(adapter_start=2, test_scale=0.3).eval()
    path = _official_checkpoint(tmp_path, source)
    out = tmp_path / "adapter.safetensors"
    assert (
        main(
            [
                "import-mma-pp",
                str(path),
                "--out",
                str(out),
                "--backbone",
                "clipadapt-tiny",
                "--pretrained",
                "none",
                "--test-scale",
                "0.3",
            ]
        )
        == 0
    )
    model = load_model(str(out), CLASSES).eval()
    assert model.method.name == "mma_pp" and (
        model.method.start,
        model.method.config.test_scale,
    ) == (2, 0.3)
    with torch.no_grad():
        torch.testing.assert_close(model(images), source(images), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    # The adapted blocks are read off the keys; a tensor of the wrong shape is named, and nothing is written.
    assert (
        main(
            [
                "import-mma-pp",
                str(_official_checkpoint(tmp_path, _perturbed(adapter_start=3), "b")),
                "--out",
                str(tmp_path / "x.safetensors"),
                "--backbone",
                "clipadapt-tiny",
                "--pretrained",
                "none",
                "--test-scale",
                "0.3",
            ]
        )
        == 0
    )
    wrong = tmp_path / "wrong.pth.tar"
    state = dict(torch.load(path)["state_dict"])
    state["text_adapter.2.up.weight"] = torch.zeros(5, 5)
    torch.save({"state_dict": state}, wrong)
    assert (
        main(
            [
                "import-mma-pp",
                str(wrong),
                "--out",
                str(tmp_path / "y.safetensors"),
                "--backbone",
                "clipadapt-tiny",
                "--pretrained",
                "none",
            ]
        )
        == 2
    )
    assert "text_adapter.2.up.weight" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists()
    loaded = build_model("mma_pp", CLASSES, adapter_start=2, **TINY)
    mma_module.load_official(loaded, str(path))
    assert torch.equal(
        loaded.method.text_adapter["2"].up.weight, source.method.text_adapter["2"].up.weight
    )
