"""MMA and RMAdapter against the official MMA code's equations."""

import pytest
import torch

from clipadapt.methods import mma as mma_module
from clipadapt.model import build_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(3, 3, 32, 32)


@pytest.mark.vit
def test_vit_b16_parameter_count_and_blocks():
    model = build_model("mma", ["a", "b"], backbone="ViT-B-16", pretrained="none")
    assert model.method.num_trainable() == 674_560
    assert (model.method.start, model.method.end) == (5, 12)
    assert sorted(model.method.shared_adapter.keys(), key=int) == [str(b) for b in range(5, 13)]


@pytest.mark.parametrize("method", ["mma", "rmadapter"])
def test_scale_zero_gives_zero_shot_logits(method, images):
    zs = build_model("zeroshot", ["cat", "dog"], default_template="a photo of a {}.", **TINY).eval()
    adapted = build_model(method, ["cat", "dog"], scale=0.0, **TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(images), zs(images), rtol=0, atol=1e-6)


def test_adapter_reads_ln1_and_adds_after_the_block(images):
    model = build_model("mma", ["cat", "dog"], scale=0.3, adapter_start=2, adapter_end=4, **TINY)
    bb, m = model.backbone, model.method
    x = bb.image_stem(images)
    x = bb.image_block(0, x)  # block 1 carries no adapter
    block = bb.image_blocks[1]
    a = m.visual_adapter["2"]
    expected = block(x) + 0.3 * a.up(m.shared_adapter["2"](a.down(block.ln_1(x))))
    got, _ = m.step(1, bb, x, None)
    torch.testing.assert_close(got, expected)
    assert m.step(0, bb, x, None)[0].equal(bb.image_block(0, x))


def test_initialisation_follows_official_code():
    model = build_model("mma", ["a", "b"], **TINY)
    for name, p in model.method.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    w = model.method.visual_adapter["3"].down[0].weight  # fan_out = 32 rows
    assert abs(w.std().item() - (2 / w.shape[0]) ** 0.5) < 0.1 * (2 / w.shape[0]) ** 0.5


def test_adapter_gradient_is_rescaled_as_if_scale_were_one(monkeypatch, images):
    labels = torch.tensor([0, 1, 0])
    s = 0.01

    def grads(identity_scaling):
        if identity_scaling:
            monkeypatch.setattr(mma_module, "grad_scale", lambda x, f: x)
        torch.manual_seed(0)
        model = build_model("mma", ["cat", "dog"], scale=s, **TINY).train()
        model.zero_grad()
        inp = images.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(inp), labels).backward()
        monkeypatch.undo()
        return {n: p.grad.clone() for n, p in model.method.named_parameters()}, inp.grad.clone()

    true_grads, true_input_grad = grads(identity_scaling=True)
    scaled_grads, input_grad = grads(identity_scaling=False)
    for name in true_grads:
        torch.testing.assert_close(scaled_grads[name], true_grads[name] / s, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(
        input_grad, true_input_grad, rtol=1e-3, atol=1e-7
    )  # the frozen path stays exact


def _official_checkpoint(tmp_path, model):
    # The official AdapterLearner's state dict: our adapter keys plus its two fixed buffers, saved by Dassl.
    state = {k: v.clone().half() for k, v in model.method.state_dict().items()}
    state["token_embedding"] = torch.zeros(2, 77, 64)
    state["tokenized_prompts"] = torch.zeros(2, 77, dtype=torch.long)
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": state, "epoch": 5, "optimizer": {}, "scheduler": {}}, path)
    return path


def test_official_checkpoint_imports(tmp_path, images):
    torch.manual_seed(5)
    source = build_model("mma", ["cat", "dog"], scale=0.5, adapter_start=2, **TINY).eval()
    path = _official_checkpoint(tmp_path, source)
    target = build_model("mma", ["cat", "dog"], scale=0.5, adapter_start=2, **TINY).eval()
    mma_module.load_official(target, str(path))
    with torch.no_grad():
        torch.testing.assert_close(
            target(images), source(images), rtol=1e-2, atol=1e-3
        )  # fp16-stored weights
    wrong = build_model("mma", ["cat", "dog"], scale=0.5, adapter_start=3, **TINY)
    with pytest.raises(Exception, match="does not fit"):
        mma_module.load_official(wrong, str(path))


def test_import_mma_command(tmp_path, images):
    from clipadapt.cli import main
    from clipadapt.model import load_model

    source = build_model("mma", ["cat", "dog"], scale=0.5, adapter_start=2, **TINY).eval()
    path = _official_checkpoint(tmp_path, source)
    out = tmp_path / "adapter.safetensors"
    assert (
        main(
            [
                "import-mma",
                str(path),
                "--out",
                str(out),
                "--backbone",
                "clipadapt-tiny",
                "--pretrained",
                "none",
                "--scale",
                "0.5",
            ]
        )
        == 0
    )
    model = load_model(str(out), ["cat", "dog"]).eval()
    assert (model.method.start, model.method.end, model.method.config.adapter_dim) == (2, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), source(images), rtol=1e-2, atol=1e-3)


# ---- RMAdapter ---------------------------------------------------------------------------------


def _count(**options):
    return build_model("rmadapter", ["a", "b"], **TINY, **options).method.num_trainable()


def test_rmadapter_ablation_switches_change_the_structure():
    mma = build_model("mma", ["a", "b"], **TINY).method.num_trainable()
    assert _count(recon_towers="none") == mma
    both, vision, text = _count(), _count(recon_towers="vision"), _count(recon_towers="text")
    assert both - mma == (vision - mma) + (text - mma) and vision > mma and text > mma
    down, up, none = _count(share="down"), _count(share="up"), _count(share="none")
    assert none > down and none > up  # sharing removes a projection
    assert _count(head_layers=1) < _count(head_layers=2) < _count(head_layers=3)
    m = build_model("rmadapter", ["a", "b"], share="down", **TINY).method
    assert (
        len(m.recon_down) == 0
    )  # the reconstruction branch reads the adaptation branch's bottleneck


def test_rmadapter_bad_switch_is_a_clear_error():
    from clipadapt.errors import ClipadaptError

    with pytest.raises(ClipadaptError, match="share must be one of"):
        build_model("rmadapter", ["a", "b"], share="left", **TINY)
    with pytest.raises(ClipadaptError, match="unknown option"):
        build_model("rmadapter", ["a", "b"], lambda5=1.0, **TINY)


def test_rmadapter_frozen_features_equal_a_separate_frozen_pass(images):
    model = build_model("rmadapter", ["cat", "dog"], scale=0.5, **TINY).train()
    logits = model(images)
    zs = build_model("zeroshot", ["cat", "dog"], default_template="a photo of a {}.", **TINY).eval()
    with torch.no_grad():
        ref_img, ref_txt = zs.encode(images)
    torch.testing.assert_close(
        model.method._frozen_features["image"], ref_img, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(model.method._frozen_features["text"], ref_txt, rtol=1e-5, atol=1e-5)
    loss, parts = model.method.loss(logits, torch.tensor([0, 1, 0]))
    assert {"ce", "rec_vision", "rec_text", "con_vision", "con_text"} <= set(parts)
    assert parts["con_vision"] > 0 and parts["rec_text"] > 0


def _grads_of_top_reconstruction_loss(images, **options):
    model = build_model(
        "rmadapter", ["cat", "dog"], lambda_con_vision=0, lambda_con_text=0, **options, **TINY
    ).train()
    model(images)
    model.method._rec_losses["image"][-1].backward()  # the top block's loss
    grads = {
        n
        for n, p in model.method.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert all(p.grad is None for p in model.backbone.parameters())
    return model, grads


def test_rmadapter_reconstruction_gradient_reaches_the_adapters_below(images):
    model, grads = _grads_of_top_reconstruction_loss(images)
    top, first = model.method.end, model.method.start
    assert any(n.startswith(f"visual_adapter.{top}.down") for n in grads)
    assert any(n.startswith(f"recon_head.image_{top}.") for n in grads)
    assert any(n.startswith(f"visual_adapter.{first}.") for n in grads)  # through the block input
    assert not any(n.startswith("text_adapter.") for n in grads)


def test_rmadapter_detached_reconstruction_trains_only_its_branch(images):
    model, grads = _grads_of_top_reconstruction_loss(images, recon_detach=True)
    top = str(model.method.end)
    expected = {
        n
        for n, _ in model.method.named_parameters()
        if n.startswith(f"visual_adapter.{top}.down") or n.startswith(f"recon_head.image_{top}.")
    }
    assert grads == expected


def test_rmadapter_share_none_changes_training(learn_root):
    from clipadapt import build_dataset
    from clipadapt.engine import TrainConfig, Trainer, seed_everything

    data = build_dataset("eurosat", learn_root, shots=4, seed=1, subsample="base")
    cfg = TrainConfig(
        optimizer="adamw", lr=0.01, weight_decay=0.0, epochs=2, batch_size=8, augment=False
    )

    def adaptation_weights(**options):
        seed_everything(0)
        model = build_model(
            "rmadapter", data.classnames, scale=0.1, lambda_rec_vision=10.0, **options, **TINY
        )
        Trainer(model, data.train, cfg, progress=False).run()
        return {
            k: v
            for k, v in model.method.state_dict().items()
            if k.startswith(("visual_", "text_", "shared_"))
        }

    without = adaptation_weights(recon_towers="none")
    independent = adaptation_weights(share="none")
    local = adaptation_weights(share="none", recon_detach=True)
    assert all(
        torch.equal(without[k], local[k]) for k in without
    )  # detached: exactly "no reconstruction"
    assert not all(torch.allclose(without[k], independent[k]) for k in without)


@pytest.mark.parametrize("target", ["ln_1", "input"])
def test_rmadapter_reconstruction_loss_is_the_mean_square_over_real_tokens(target):
    torch.manual_seed(0)
    model = build_model(
        "rmadapter",
        ["cat", "dog", "a much longer class name here"],
        scale=0.5,
        recon_target=target,
        **TINY,
    ).train()
    m, bb = model.method, model.backbone
    m.begin_forward()
    m.prompt_embeddings(model.text_batch)
    pool = model.text_batch.pool_index
    for tower, blocks, x in (
        ("image", bb.image_blocks, torch.randn(2, 17, 64)),
        ("text", bb.text_blocks, torch.randn(3, int(pool.max()) + 3, 64)),
    ):
        index = m.end - 1
        m.adapt(tower, index, blocks[index], x)
        with torch.no_grad():
            u = blocks[index].ln_1(x)
            recon = m.recon_head[f"{tower}_{m.end}"](m.bottleneck(tower, index, u))
            per_token = (
                (recon - (u if target == "ln_1" else x)).pow(2).mean(dim=-1)
            )  # [sequences, tokens]
            if tower == "text":  # up to each prompt's end-of-text
                per_token = per_token[torch.arange(x.shape[1])[None, :] <= pool[:, None]]
        torch.testing.assert_close(
            m._rec_losses[tower][-1].detach(), per_token.mean(), rtol=1e-5, atol=1e-7
        )


def test_rmadapter_text_reconstruction_ignores_padding():
    model = build_model(
        "rmadapter", ["cat", "a much longer class name here"], scale=0.5, **TINY
    ).train()
    losses = {}
    for cut in (True, False):  # uncut: 77 tokens, most of them padding after end-of-text
        model.backbone.cut_text = cut
        model(torch.randn(1, 3, 32, 32))
        losses[cut] = torch.stack(model.method._rec_losses["text"]).detach()
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)


def test_rmadapter_frozen_features_with_towers_of_unequal_depth():
    # The shipped synthetic CLIP has 6 image blocks and 4 text blocks.
    model = build_model(
        "rmadapter", ["cat", "dog"], backbone="synthetic", pretrained="none", scale=0.5
    ).train()
    images = torch.randn(2, 3, 48, 48)
    model(images)
    zs = build_model(
        "zeroshot",
        ["cat", "dog"],
        backbone="synthetic",
        pretrained="none",
        default_template="a photo of a {}.",
    ).eval()
    with torch.no_grad():
        ref_img, ref_txt = zs.encode(images)
    torch.testing.assert_close(
        model.method._frozen_features["image"], ref_img, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(model.method._frozen_features["text"], ref_txt, rtol=1e-5, atol=1e-5)
