"""PromptSRC against a forward and a loss written the way the official code computes them
(muzairkhattak/PromptSRC: trainers/promptsrc.py CustomCLIP.forward and PromptSRC.forward_backward,
clip/model.py VisionTransformer / ResidualAttentionBlock_IVLP), and the engine's epoch averaging (GPA)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed_model, run_until_interrupted

from clipadapt import build_dataset
from clipadapt.engine import TrainConfig, Trainer, seed_everything
from clipadapt.errors import ClipadaptError
from clipadapt.evaluation import evaluate
from clipadapt.methods.promptsrc import (
    gaussian_epoch_weights,
    official_adapter,
    promptsrc_templates,
)
from clipadapt.model import build_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["red disc", "green square", "blue disc", "yellow square"]
OTHERS = ["purple star", "orange ring", "grey cross"]

# trainers/imagenet_templates.py, IMAGENET_TEMPLATES: the templates the frozen text features average over.
OFFICIAL_TEMPLATES = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
]


def _text_features(model, prompts, ctx=None, deep=()):
    """The official TextEncoder on the full 77 tokens: learned context at 1..n, deep prompts replacing them."""
    bb = model.backbone
    text = bb._text
    ids = bb.tokenize(prompts)
    t = text.token_embedding(ids)
    if ctx is not None:
        t = torch.cat([t[:, :1], ctx.expand(len(ids), -1, -1), t[:, 1 + ctx.shape[0] :]], dim=1)
    t = t + text.positional_embedding
    for i, block in enumerate(text.transformer.resblocks):
        if 1 <= i <= len(deep):  # blocks 1..J-1 carry VPT_shallow
            n = deep[i - 1].shape[0]
            t = torch.cat([t[:, :1], deep[i - 1].expand(len(ids), -1, -1), t[:, 1 + n :]], dim=1)
        t = block(t, attn_mask=text.attn_mask)
    x = text.ln_final(t)[torch.arange(len(ids)), ids.argmax(dim=-1)]
    return x @ text.text_projection


def _image_features(model, images, vpt=None, deep=()):
    """The official VisionTransformer (IVLP): VPT appended before ln_pre, deep prompts replacing the last n."""
    vis = model.backbone.clip.visual
    x = vis.conv1(images).flatten(2).transpose(1, 2)
    x = (
        torch.cat([vis.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        + vis.positional_embedding
    )
    if vpt is not None:
        x = torch.cat([x, vpt.expand(x.shape[0], -1, -1)], dim=1)
    x = vis.ln_pre(x)
    for i, block in enumerate(vis.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat(
                [x[:, : -deep[i - 1].shape[0]], deep[i - 1].expand(x.shape[0], -1, -1)], dim=1
            )
        x = block(x)
    return vis.ln_post(x[:, 0]) @ vis.proj


def official_forward(model, images, classnames, with_frozen=False):
    """CustomCLIP.forward's pieces: prompted logits, normalised features, frozen features, zero-shot logits."""
    m, scale = model.method, model.backbone.logit_scale
    prompts = [f"{m.config.template.split(' {}')[0]} {c}." for c in classnames]
    text_f = F.normalize(_text_features(model, prompts, m.ctx, list(m.text_prompts)), dim=-1)
    image_f = F.normalize(
        _image_features(model, images, m.vision_ctx, list(m.vision_prompts)), dim=-1
    )
    logits = scale * image_f @ text_f.t()
    if not with_frozen:
        return (logits,)
    teacher = torch.stack(
        [
            _text_features(model, [t.replace("{}", c) for c in classnames])
            for t in OFFICIAL_TEMPLATES
        ],
        dim=1,
    ).mean(dim=1)
    fixed = F.normalize(teacher, dim=-1)
    zs_image = F.normalize(_image_features(model, images), dim=-1)
    return logits, text_f, fixed, zs_image, image_f, scale * zs_image @ fixed.t()


def official_loss(model, images, labels, classnames):
    """PromptSRC.forward_backward (the fp32 branch) with the base2novel config's weights."""
    logits, text_f, fixed, zs_image, image_f, zs_logits = official_forward(
        model, images, classnames, with_frozen=True
    )
    ce = F.cross_entropy(logits, labels)
    text = F.l1_loss(text_f, fixed, reduction="mean") * 25
    image = F.l1_loss(image_f, zs_image, reduction="mean") * 10
    kl = (
        F.kl_div(
            F.log_softmax(logits / 1, dim=1),
            F.log_softmax(zs_logits / 1, dim=1),
            reduction="sum",
            log_target=True,
        )
        * (1 * 1)
        / logits.numel()
    )
    return ce + kl + text + image


def test_templates_are_the_official_sixty():
    assert (
        sorted(promptsrc_templates()) == sorted(OFFICIAL_TEMPLATES)
        and len(OFFICIAL_TEMPLATES) == 60
    )


@pytest.mark.vit
def test_vit_b16_parameter_count():
    model = build_model("promptsrc", ["a", "b"], backbone="ViT-B-16", pretrained="none")
    # ctx (4 x 512) + 8 deep text prompts + VPT (4 x 768) + 8 deep vision prompts, as the official
    # trainer's requires_grad: names with "prompt_learner" (not ZS_image_encoder) or "VPT".
    assert model.method.num_trainable() == 4 * 512 + 8 * 4 * 512 + 4 * 768 + 8 * 4 * 768 == 46_080


def test_logits_equal_official_forward():
    model = perturbed_model("promptsrc", CLASSES)
    assert model.prompts[0] == "a photo of a red disc." and model.method.depth_text == 3
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images), official_forward(model, images, CLASSES)[0], rtol=1e-5, atol=1e-5
        )
        model.set_classes(OTHERS)
        torch.testing.assert_close(
            model(images), official_forward(model, images, OTHERS)[0], rtol=1e-5, atol=1e-5
        )


def test_logits_equal_official_forward_at_other_depths():
    model = perturbed_model(
        "promptsrc", CLASSES, prompt_depth_text=2, prompt_depth_vision=4, n_ctx_vision=2
    )
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images), official_forward(model, images, CLASSES)[0], rtol=1e-5, atol=1e-5
        )


def test_context_starts_as_the_words_it_replaces():
    model = build_model("promptsrc", CLASSES, **TINY)
    bb = model.backbone
    words = bb.embed_tokens(bb.tokenize(["a photo of a"]))[0, 1:5]
    assert torch.equal(model.method.ctx.data, words.float())


def test_training_loss_equals_official_loss():
    model = perturbed_model("promptsrc", CLASSES)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 1, 3])
    model.train()
    logits = model(images)
    loss, parts = model.method.loss(logits.float(), labels)
    with torch.no_grad():
        expected = official_loss(model, images, labels, CLASSES)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    assert parts["l1_text"] > 0 and parts["l1_image"] > 0 and parts["kl"] > 0


def test_gaussian_weights_equal_the_official_formula():
    for epochs, mean, std in ((20, 15, 1), (20, 6, 10), (50, 30, 30)):
        gauss = np.array(
            [
                (1 / (std * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((a - mean) / std) ** 2)
                for a in range(1, epochs + 1)
            ]
        )
        np.testing.assert_allclose(
            gaussian_epoch_weights(epochs, mean, std), gauss / sum(gauss), rtol=1e-12
        )
    with pytest.raises(ClipadaptError, match="underflow"):
        gaussian_epoch_weights(3, 1e6, 1)


def _learn_data(learn_root):
    return build_dataset("eurosat", learn_root, shots=4, seed=1, subsample="base")


GPA_TRAIN = dict(
    optimizer="adamw", weight_decay=0.0, lr=0.01, epochs=3, batch_size=8, augment=False
)


def test_run_ends_with_the_gaussian_average_of_its_epochs(learn_root, tmp_path):
    data = _learn_data(learn_root)
    seed_everything(3)
    model = build_model("promptsrc", data.classnames, **TINY, gpa_mean=2.0, gpa_std=1.0)
    trainer = Trainer(
        model, data.train, TrainConfig(**GPA_TRAIN), out_dir=str(tmp_path), progress=False
    )
    after_epoch = []
    real_save = trainer.save_checkpoint

    def record_then_save(epoch):
        after_epoch.append({k: v.clone() for k, v in model.method.state_dict().items()})
        real_save(epoch)

    trainer.save_checkpoint = record_then_save
    trainer.run()
    weights = gaussian_epoch_weights(3, 2.0, 1.0)
    for key, value in model.method.state_dict().items():
        expected = sum(w * s[key] for w, s in zip(weights, after_epoch, strict=True))
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    assert not torch.equal(
        model.method.ctx, after_epoch[-1]["ctx"]
    )  # the average, not the last epoch


@pytest.mark.slow  # ~30 s on the shared CPUs
def test_killed_and_resumed_gpa_run_ends_with_the_same_adapter(learn_root, tmp_path):
    data = _learn_data(learn_root)
    cfg = TrainConfig(**GPA_TRAIN)

    def final_state(out_dir, interrupt_at=None):
        seed_everything(3)
        model = build_model("promptsrc", data.classnames, **TINY, gpa_mean=2.0, gpa_std=1.0)
        trainer = Trainer(model, data.train, cfg, out_dir=str(out_dir), progress=False)
        if interrupt_at is not None:
            run_until_interrupted(trainer, interrupt_at)
            model = build_model("promptsrc", data.classnames, **TINY, gpa_mean=2.0, gpa_std=1.0)
            trainer = Trainer(model, data.train, cfg, out_dir=str(out_dir), progress=False)
        trainer.run()
        return model.method.state_dict()

    straight = final_state(tmp_path / "a")
    resumed = final_state(
        tmp_path / "b", interrupt_at=6
    )  # 20 images, batch 8: 2 steps an epoch; dies in epoch 3
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.slow  # ~25 s on the shared CPUs
def test_trains_above_zero_shot_on_base_classes(learn_root):
    data = build_dataset("eurosat", learn_root, shots=8, seed=1, subsample="base")
    seed_everything(0)
    model = build_model(
        "promptsrc",
        data.classnames,
        **TINY,
        gpa_mean=15.0,
        gpa_std=3.0,
        text_loss_weight=1.0,
        image_loss_weight=1.0,
    )  # random tiny CLIP: 25/10 hold it at zero-shot
    zero_shot = evaluate(model, data.test, progress=False).accuracy
    cfg = TrainConfig(
        optimizer="adamw", weight_decay=0.0, lr=0.01, epochs=15, batch_size=8, augment=False
    )
    Trainer(model, data.train, cfg, progress=False).run()
    trained = evaluate(model, data.test, progress=False).accuracy
    assert trained > zero_shot + 10, (zero_shot, trained)


def _official_checkpoint(model, path, epoch=20):
    """A Dassl checkpoint as the official trainer saves CustomCLIP's whole state dict (frozen CLIP included)."""
    m = model.method
    state = {
        "prompt_learner.ctx": m.ctx.detach().half(),
        "prompt_learner.token_prefix": torch.zeros(4, 1, 32),
        "prompt_learner.token_suffix": torch.zeros(4, 7, 32),
        "prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(8, 3, 4, 4),
        "image_encoder.VPT": m.vision_ctx.detach().clone(),
        "image_encoder.conv1.weight": torch.zeros(8, 3, 4, 4),
        "text_encoder.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(6, 2),
        "logit_scale": torch.tensor(4.6),
    }
    for i, p in enumerate(m.text_prompts, start=1):
        state[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = p.detach().clone()
    for i, p in enumerate(m.vision_prompts, start=1):
        state[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = p.detach().clone()
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": None, "scheduler": None}, path)


def test_official_checkpoint_reads_into_the_same_model(tmp_path):
    source = perturbed_model(
        "promptsrc", CLASSES, prompt_depth_text=2, prompt_depth_vision=3, n_ctx_vision=2
    )
    path = tmp_path / "model.pth.tar-20"
    _official_checkpoint(source, path)
    config, state = official_adapter(str(path), gpa=False)
    assert (
        config.n_ctx_text,
        config.n_ctx_vision,
        config.prompt_depth_text,
        config.prompt_depth_vision,
    ) == (4, 2, 2, 3)
    assert not config.gpa
    target = build_model(
        "promptsrc",
        CLASSES,
        **TINY,
        **{k: v for k, v in config.to_dict().items() if k != "template"},
    )
    target.method.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = official_forward(source, images, CLASSES)[0]
        source.method.ctx.copy_(
            source.method.ctx.half().float()
        )  # the checkpoint stored ctx in half precision
        torch.testing.assert_close(target.eval()(images), source(images), rtol=0, atol=0)
        torch.testing.assert_close(target(images), expected, rtol=1e-2, atol=1e-2)


def test_official_checkpoint_without_prompts_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"visual_adapter.0.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ClipadaptError, match="no PromptSRC weights"):
        official_adapter(str(path))
    with pytest.raises(ClipadaptError, match="does not exist"):
        official_adapter(str(tmp_path / "missing.pth"))
