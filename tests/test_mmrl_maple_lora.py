"""MMRL, MaPLe and CLIP-LoRA against forwards written the way their official code computes them.

The references below run open_clip's modules in the official order (full 77-token text, the
official insertion points, pooling at `eot + K` for MMRL, prompts appended before ln_pre for
MaPLe, merged weights W + s B A for LoRA), independently of the methods' hook-based code.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed_model

from clipadapt.errors import ClipadaptError
from clipadapt.model import build_model, load_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["red disc", "green square", "blue disc", "yellow square"]
OTHERS = ["purple star", "orange ring", "grey cross"]


def _causal(length):
    return torch.full((length, length), float("-inf")).triu(1)


def _text_out(bb, x, pool):
    x = bb._text.ln_final(x)[torch.arange(x.shape[0]), pool]
    return x @ bb._text.text_projection


def _cos_logits(scale, img_f, txt_f):
    return scale * F.normalize(img_f, dim=-1) @ F.normalize(txt_f, dim=-1).t()


# ---- MMRL --------------------------------------------------------------------------------------
def mmrl_reference(model, images):
    """Class and representation logits as the official CustomCLIP.forward computes them."""
    bb, m = model.backbone, model.method
    k, layers = m.config.n_rep_tokens, m.layers
    vis, text = bb.clip.visual, bb._text
    x = vis._embeds(images)
    counter = 0
    for i, block in enumerate(vis.transformer.resblocks):
        if i + 1 in layers:
            tokens = m.rep_to_image[counter](m.rep_tokens).expand(x.shape[0], -1, -1)
            suffix = x[:, 1:] if i + 1 == layers[0] else x[:, 1 + k :]
            x = torch.cat([x[:, :1], tokens, suffix], dim=1)
            counter += 1
        x = block(x)
    rep_f = vis.ln_post(x[:, 1 : 1 + k]).mean(dim=1) @ m.proj_rep
    img_f = vis.ln_post(x[:, 0]) @ vis.proj
    ids = bb.tokenize(model.prompts)  # the full 77 tokens, nothing cut
    t = text.token_embedding(ids) + text.positional_embedding
    counter = 0
    for i, block in enumerate(text.transformer.resblocks):
        if i + 1 in layers:
            tokens = m.rep_to_text[counter](m.rep_tokens).expand(t.shape[0], -1, -1)
            suffix = t[:, 1:] if i + 1 == layers[0] else t[:, 1 + k :]
            t = torch.cat([t[:, :1], tokens, suffix], dim=1)
            counter += 1
        mask = _causal(t.shape[1]) if i + 1 >= layers[0] else text.attn_mask
        t = block(t, attn_mask=mask)
    txt_f = _text_out(bb, t, ids.argmax(dim=-1) + k)
    scale = bb.logit_scale
    return _cos_logits(scale, img_f, txt_f), _cos_logits(scale, rep_f, txt_f)


@pytest.mark.vit
def test_mmrl_vit_b16_parameter_count():
    model = build_model("mmrl", ["a", "b"], backbone="ViT-B-16", pretrained="none")
    k, d, dv, dt, out, blocks = 5, 512, 768, 512, 512, 7
    assert model.method.layers == [6, 7, 8, 9, 10, 11, 12]
    expected = k * d + blocks * (d * dv + dv) + blocks * (d * dt + dt) + dv * out
    assert model.method.num_trainable() == expected == 4_992_256
    eurosat = build_model("mmrl", ["a", "b"], backbone="ViT-B-16", pretrained="none", rep_dim=2048)
    assert (
        eurosat.method.num_trainable()
        == 5 * 2048 + 7 * (2048 * 768 + 768) + 7 * (2048 * 512 + 512) + 768 * 512
    )


def test_mmrl_equals_official_forward_and_switches_on_novel_classes():
    model = perturbed_model("mmrl", CLASSES, rep_layers=[2, 3, 4])
    alpha = model.method.config.alpha
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        class_logits, rep_logits = mmrl_reference(model, images)
        assert not torch.allclose(class_logits, rep_logits, atol=1e-3)
        # The classes it was built (trained) for: fused logits, as the official test() on base classes.
        torch.testing.assert_close(
            model(images), alpha * class_logits + (1 - alpha) * rep_logits, rtol=1e-5, atol=1e-5
        )
        # The same names declared unseen (a domain-shifted target such as ImageNet-V2): class logits.
        model.set_classes(CLASSES, trained_on=False)
        torch.testing.assert_close(model(images), class_logits, rtol=1e-5, atol=1e-5)
        # Other names (novel classes, cross-dataset targets): class logits only.
        model.set_classes(OTHERS)
        class_others, _ = mmrl_reference(model, images)
        torch.testing.assert_close(model(images), class_others, rtol=1e-5, atol=1e-5)
        model.set_classes(CLASSES)
        torch.testing.assert_close(
            model(images), alpha * class_logits + (1 - alpha) * rep_logits, rtol=1e-5, atol=1e-5
        )


def test_mmrl_inference_mode_overrides_the_switch():
    images = torch.randn(2, 3, 32, 32)
    fused = perturbed_model("mmrl", CLASSES, inference="fusion")
    only_class = perturbed_model("mmrl", CLASSES, inference="class")
    with torch.no_grad():
        c, r = mmrl_reference(fused, images)
        fused.set_classes(CLASSES, trained_on=False)
        torch.testing.assert_close(fused(images), 0.7 * c + 0.3 * r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            only_class(images), mmrl_reference(only_class, images)[0], rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ClipadaptError, match="inference"):
        build_model("mmrl", CLASSES, inference="both", **TINY)


def test_mmrl_loss_is_the_official_one():
    model = perturbed_model("mmrl", CLASSES, reg_weight=0.3)
    zs = build_model("zeroshot", CLASSES, default_template=model.template, **TINY).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    logits = model(images)
    loss, parts = model.method.loss(logits, labels)
    with torch.no_grad():
        c, r = mmrl_reference(model, images)
        img_f = model.method._img_f
        txt_f = model.method._txt_f
        frozen_img = zs.frozen_image_features(images)  # the frozen CLIP, run on its own
        frozen_txt = zs.frozen_text_features()
    reg = (1 - F.cosine_similarity(img_f, frozen_img).mean()) + (
        1 - F.cosine_similarity(txt_f, frozen_txt).mean()
    )
    expected = 0.7 * F.cross_entropy(c, labels) + 0.3 * F.cross_entropy(r, labels) + 0.3 * reg
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(logits, 0.7 * c + 0.3 * r, rtol=1e-5, atol=1e-5)  # training: fused
    assert parts["reg_image"] > 0 and parts["reg_text"] > 0
    loss.backward()
    assert all(p.grad is not None for p in model.method.parameters())


def test_mmrl_checkpoint_remembers_its_training_classes(tmp_path):
    model = perturbed_model("mmrl", CLASSES)
    path = str(tmp_path / "mmrl.safetensors")
    model.save_adapter(path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        c, r = mmrl_reference(model, images)
        same = load_model(path, CLASSES).eval()
        torch.testing.assert_close(same(images), 0.7 * c + 0.3 * r, rtol=1e-5, atol=1e-5)
        novel = load_model(path, OTHERS).eval()
        torch.testing.assert_close(
            novel(images), mmrl_reference(novel, images)[0], rtol=1e-5, atol=1e-5
        )


def test_mmrl_text_longer_than_the_context_keeps_a_causal_mask():
    long_name = " ".join(["red"] * 73)  # sos + 73 words + eot = 75 tokens; with 5 inserted, 80 > 77
    model = perturbed_model("mmrl", CLASSES, template="{}")
    with torch.no_grad():
        model.set_classes([long_name, "blue"])
        assert int(model.text_batch.pool_index.max()) + 1 + 5 > 77
        images = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(
            model(images), mmrl_reference(model, images)[0], rtol=1e-5, atol=1e-5
        )


# ---- MaPLe -------------------------------------------------------------------------------------
def maple_reference(model, images):
    """Logits as the official MaPLe CustomCLIP.forward computes them (VisionTransformer_MaPLe)."""
    bb, m = model.backbone, model.method
    n, depth = m.n_ctx, m.prompt_depth
    vis, text = bb.clip.visual, bb._text
    x = vis.conv1(images).flatten(2).transpose(1, 2)
    cls = vis.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + vis.positional_embedding
    x = torch.cat([x, m.proj(m.ctx).expand(x.shape[0], -1, -1)], dim=1)  # appended before ln_pre
    x = vis.ln_pre(x)
    for i, block in enumerate(vis.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat(
                [
                    x[:, :-n],
                    m.compound_prompt_projections[i - 1](m.compound_prompts_text[i - 1]).expand(
                        x.shape[0], -1, -1
                    ),
                ],
                dim=1,
            )
        x = block(x)
    img_f = vis.ln_post(x[:, 0]) @ vis.proj
    ids = bb.tokenize(model.prompts)
    emb = text.token_embedding(ids)
    t = (
        torch.cat([emb[:, :1], m.ctx.expand(len(ids), -1, -1), emb[:, 1 + n :]], dim=1)
        + text.positional_embedding
    )
    for i, block in enumerate(text.transformer.resblocks):
        if 1 <= i < depth:
            t = torch.cat(
                [t[:, :1], m.compound_prompts_text[i - 1].expand(len(ids), -1, -1), t[:, 1 + n :]],
                dim=1,
            )
        t = block(t, attn_mask=text.attn_mask)
    return _cos_logits(bb.logit_scale, img_f, _text_out(bb, t, ids.argmax(dim=-1)))


@pytest.mark.vit
def test_maple_vit_b16_parameter_count():
    model = build_model("maple", ["a", "b"], backbone="ViT-B-16", pretrained="none")
    n, dt, dv, depth = 2, 512, 768, 9
    assert model.method.prompt_depth == depth
    expected = n * dt + (dt * dv + dv) + (depth - 1) * n * dt + (depth - 1) * (dt * dv + dv)
    assert model.method.num_trainable() == expected == 3_555_072


def test_maple_equals_official_forward():
    model = perturbed_model("maple", CLASSES, prompt_depth=3)
    assert model.prompts[0] == "a photo of a red disc."
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images), maple_reference(model, images), rtol=1e-5, atol=1e-5
        )
        model.set_classes(OTHERS)
        torch.testing.assert_close(
            model(images), maple_reference(model, images), rtol=1e-5, atol=1e-5
        )


def test_maple_context_starts_as_the_words_it_replaces():
    model = build_model("maple", CLASSES, **TINY)
    words = model.backbone.embed_tokens(model.backbone.tokenize(["a photo of a"]))[0, 1:3]
    torch.testing.assert_close(model.method.ctx.detach(), words)
    zs = build_model("zeroshot", CLASSES, default_template="a photo of a {}.", **TINY)
    torch.testing.assert_close(
        model.method.prompt_embeddings(model.text_batch).embeddings.detach(),
        zs.text_batch.embeddings,
    )


def test_maple_vision_prompts_are_coupled_to_the_language_prompts():
    model = perturbed_model("maple", CLASSES, prompt_depth=3)
    images = torch.randn(2, 3, 32, 32)
    img_f = model.encode(images, with_text=False)[0]
    img_f.sum().backward()
    m = model.method
    # The image tower has no prompt of its own: its gradient reaches the language prompts of every
    # block through the coupling maps F_l.
    assert m.ctx.grad is not None and m.ctx.grad.abs().sum() > 0
    for p in m.compound_prompts_text:
        assert p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ClipadaptError, match="prompt_depth"):
        build_model("maple", CLASSES, prompt_depth=5, **TINY)


# ---- CLIP-LoRA ---------------------------------------------------------------------------------
@pytest.mark.vit
def test_clip_lora_vit_b16_parameter_count():
    model = build_model("clip_lora", ["a", "b"], backbone="ViT-B-16", pretrained="none")
    r, blocks, projections = 2, 12, 3
    expected = (
        blocks * projections * 2 * r * 768 + blocks * projections * 2 * r * 512
    )  # A: r x D, B: D x r
    assert model.method.num_trainable() == expected == 184_320
    assert model.method.scaling == pytest.approx(1 / math.sqrt(2))  # the official alpha / sqrt(r)


def test_untrained_clip_lora_is_zero_shot():
    zs = build_model("zeroshot", CLASSES, default_template="a photo of a {}.", **TINY).eval()
    model = build_model("clip_lora", CLASSES, **TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), zs(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "options", [{}, {"scaling": "linear", "rank": 4, "alpha": 2.0, "params": ["q", "v", "o"]}]
)
def test_clip_lora_equals_clip_with_merged_weights(options):
    model = perturbed_model("clip_lora", CLASSES, **options)
    m, bb = model.method, model.backbone
    frozen = {k: v.clone() for k, v in bb.state_dict().items()}
    merged_bb = copy.deepcopy(bb)
    with torch.no_grad():
        for tower, blocks, merged_blocks in (
            ("image", bb.image_blocks, merged_bb.image_blocks),
            ("text", bb.text_blocks, merged_bb.text_blocks),
        ):
            for index, block in enumerate(blocks):
                attn, d = merged_blocks[index].attn, block.attn.embed_dim
                for p, w in m.merged_weights(tower, index, block).items():
                    target = (
                        attn.out_proj.weight
                        if p == "o"
                        else attn.in_proj_weight["qkv".index(p) * d :][:d]
                    )
                    target.copy_(w)
    merged = build_model(
        "zeroshot", CLASSES, backbone=merged_bb, default_template="a photo of a {}."
    )
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        adapted = model(images)
        torch.testing.assert_close(adapted, merged.eval()(images), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(
            adapted, build_model("zeroshot", CLASSES, backbone=bb)(images), atol=1e-3
        )
    for k, v in bb.state_dict().items():  # no frozen weight was copied into or changed
        assert torch.equal(v, frozen[k]), k
    assert all(k.endswith((".A", ".B")) for k in m.state_dict())


def test_clip_lora_dropout_only_while_training():
    model = perturbed_model("clip_lora", CLASSES, dropout=0.5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
        model.train()
        torch.manual_seed(3)
        first = model(images)
        assert not torch.allclose(first, model(images))


@pytest.mark.parametrize(
    "bad",
    [
        {"encoder": "audio"},
        {"params": ["q", "x"]},
        {"position": "middle"},
        {"scaling": "cube"},
        {"rank": 0},
    ],
)
def test_clip_lora_rejects_bad_options(bad):
    with pytest.raises(ClipadaptError, match="clip_lora"):
        build_model("clip_lora", CLASSES, **bad, **TINY)


def test_clip_lora_positions_follow_the_official_index_lists():
    from clipadapt.methods.clip_lora import lora_blocks

    official = {
        "bottom": [0, 1, 2, 3],
        "mid": [4, 5, 6, 7],
        "up": [8, 9, 10, 11],
        "half-up": [6, 7, 8, 9, 10, 11],
        "half-bottom": [0, 1, 2, 3, 4, 5],
        "all": list(range(12)),
        "top3": [9, 10, 11],
    }
    for name, blocks in official.items():
        assert lora_blocks(name, 12) == blocks
    assert lora_blocks("half-up", 24) == list(range(12, 24))  # ViT-L/14's list
    text_only = build_model("clip_lora", CLASSES, encoder="text", position="up", **TINY).method
    assert len(text_only.image_lora) == 0 and list(text_only.text_lora) == ["2", "3"]


def test_info_counts_the_new_methods(capsys):
    from clipadapt.cli import main

    for method in ("mmrl", "maple", "clip_lora"):
        assert main(["info", "--method", method, "--backbone", "clipadapt-tiny", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (
            info["trainable_params"]
            == build_model(method, ["a", "b"], **TINY).method.num_trainable()
            > 0
        )


# ---- presets: the official settings ------------------------------------------------------------
def _preset(name):
    import os

    from clipadapt.runconfig import read_preset, resolve

    path = os.path.join(os.path.dirname(__file__), "..", "src", "clipadapt", "presets", name)
    data = read_preset(path)
    return resolve(data["method"], data)


@pytest.mark.parametrize(
    "name, method, train",
    [
        (
            "mmrl_base2novel.yaml",
            {"alpha": 0.7, "reg_weight": 1.0, "n_rep_tokens": 5, "rep_dim": 512},
            {
                "optimizer": "adamw",
                "lr": 1e-3,
                "epochs": 10,
                "batch_size": 4,
                "warmup_epochs": 1,
                "warmup_lr": 1e-5,
            },
        ),
        ("mmrl_fewshot.yaml", {}, {"epochs": 50, "batch_size": 32, "warmup_epochs": 1}),
        ("mmrl_imagenet.yaml", {"reg_weight": 0.5}, {"epochs": 5, "batch_size": 32}),
        (
            "mmrl_cross_dataset.yaml",
            {"reg_weight": 0.2, "rep_dim": 512},
            {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
        ),
        (
            "maple_base2novel.yaml",
            {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9},
            {"optimizer": "sgd", "lr": 0.0035, "epochs": 5, "batch_size": 4, "warmup_epochs": 1},
        ),
        (
            "maple_cross_dataset.yaml",
            {"prompt_depth": 3},
            {"lr": 0.0026, "epochs": 2, "batch_size": 4},
        ),
        (
            "clip_lora_fewshot.yaml",
            {"rank": 2, "alpha": 1.0, "dropout": 0.25, "params": ["q", "k", "v"]},
            {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-2, "batch_size": 32},
        ),
    ],
)
def test_presets_hold_the_official_settings(name, method, train):
    method_cfg, train_cfg, _ = _preset(name)
    for key, value in method.items():
        assert getattr(method_cfg, key) == value, key
    for key, value in train.items():
        assert getattr(train_cfg, key) == pytest.approx(value), key


def test_mmrl_official_per_dataset_settings():
    from clipadapt.methods.mmrl import official_overrides

    assert official_overrides("stanford_cars", "base2novel") == {"reg_weight": 7.0}
    assert official_overrides("eurosat", "fewshot") == {"reg_weight": 0.01, "rep_dim": 2048}
    assert (
        official_overrides("eurosat", "dg") == {}
    )  # the cross-dataset scripts pass 0.2 / 512 instead


def test_import_mmrl_reads_official_checkpoints(tmp_path):
    from clipadapt.cli import main

    model = perturbed_model("mmrl", CLASSES)
    m = model.method
    official = {
        "representation_learner.compound_rep_tokens": m.rep_tokens.detach(),
        "image_encoder.proj_rep": m.proj_rep.detach(),
        "prompt_embeddings": torch.zeros(4, 77, 64),  # frozen parts the official file also holds
        "image_encoder.conv1.weight": torch.zeros(64, 3, 8, 8),
    }
    for j, (to_image, to_text) in enumerate(zip(m.rep_to_image, m.rep_to_text, strict=True)):
        for name in ("weight", "bias"):
            official[f"module.representation_learner.compound_rep_tokens_r2vproj.{j}.{name}"] = (
                getattr(to_image, name)
            )
            official[f"representation_learner.compound_rep_tokens_r2tproj.{j}.{name}"] = getattr(
                to_text, name
            )
    path = tmp_path / "model.pth.tar-10"
    torch.save(
        {"state_dict": {k: v.detach().clone() for k, v in official.items()}, "epoch": 10}, path
    )
    out = str(tmp_path / "mmrl.safetensors")
    assert (
        main(
            [
                "import-mmrl",
                str(path),
                "--out",
                out,
                "--backbone",
                "clipadapt-tiny",
                "--pretrained",
                "none",
                "--last-block",
                "4",
                "--classes",
                ",".join(CLASSES),
            ]
        )
        == 0
    )
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(out, CLASSES).eval()(images), model(images), rtol=1e-5, atol=1e-5
        )
    torch.save(
        {"state_dict": {"visual_adapter.5.down.0.weight": torch.zeros(1)}}, tmp_path / "mma.pth"
    )
    assert main(["import-mmrl", str(tmp_path / "mma.pth"), "--out", out]) == 2
