"""CoCoOp and KgCoOp against forwards written the way their official trainers compute them.

The references run open_clip's modules in the official order (KaiyangZhou/CoOp trainers/cocoop.py,
htyao89/KgCoOp trainers/kgcoop.py): the full 77-token text, the prompt "a photo of a {class}." with
its context positions replaced, a Python loop over the images for CoCoOp, the frozen hand-crafted
class text through CLIP's own encode_text for KgCoOp.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed_model

from clipadapt import build_dataset
from clipadapt.engine import TrainConfig, Trainer, seed_everything
from clipadapt.errors import ClipadaptError
from clipadapt.evaluation import evaluate
from clipadapt.methods import cocoop, kgcoop
from clipadapt.model import build_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["red disc", "green square", "blue disc", "yellow square"]
OTHERS = ["purple star", "orange ring", "grey cross"]


def official_text_encoder(bb, prompts, tokenized):
    """TextEncoder.forward: positional embedding, the transformer, ln_final, pool at argmax, projection."""
    text = bb._text
    x = prompts + text.positional_embedding
    for block in text.transformer.resblocks:
        x = block(x, attn_mask=text.attn_mask)
    x = text.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ text.text_projection


def official_prompt_parts(model, ctx_init="a photo of a"):
    """PromptLearner.__init__: tokenized "<ctx_init> <name>." and its SOS / CLS+EOS embeddings."""
    bb, n = model.backbone, model.method.n_ctx
    tokenized = bb.tokenize([f"{ctx_init} {name}." for name in model.classnames])
    emb = bb._text.token_embedding(tokenized)
    return tokenized, emb[:, :1], emb[:, 1 + n :]


def cocoop_reference(model, images, labels=None):
    """CustomCLIP.forward of trainers/cocoop.py: per-image shifted context, a text pass per image."""
    bb, m = model.backbone, model.method
    tokenized, prefix, suffix = official_prompt_parts(model)
    image_features = bb.clip.visual(images)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    bias = m.meta_net(image_features).unsqueeze(1)
    ctx_shifted = m.ctx.unsqueeze(0) + bias
    logits = []
    for ctx_i, imf_i in zip(ctx_shifted, image_features, strict=True):
        pts_i = torch.cat(
            [prefix, ctx_i.unsqueeze(0).expand(len(tokenized), -1, -1), suffix], dim=1
        )
        text_features = official_text_encoder(bb, pts_i, tokenized)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits.append(bb.logit_scale * imf_i @ text_features.t())
    logits = torch.stack(logits)
    return logits if labels is None else F.cross_entropy(logits, labels)


def kgcoop_reference(model, images, template):
    """CustomCLIP.forward of trainers/kgcoop.py: CoOp's logits and score = 1 - mean cos(text, frozen text)."""
    bb, m = model.backbone, model.method
    tokenized, prefix, suffix = official_prompt_parts(model)
    prompts = torch.cat([prefix, m.ctx.unsqueeze(0).expand(len(tokenized), -1, -1), suffix], dim=1)
    text_features = official_text_encoder(bb, prompts, tokenized)
    with (
        torch.no_grad()
    ):  # PromptLearner: a second CLIP's encode_text of the CUSTOM_TEMPLATES prompts
        old = bb.clip.encode_text(
            bb.tokenize([template.format(c.replace("_", " ")) for c in model.classnames])
        )
        old = old / old.norm(dim=-1, keepdim=True)
    image_features = bb.clip.visual(images)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = bb.logit_scale * image_features @ text_features.t()
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
    score = 1.0 - torch.mean(cos(text_features, old / old.norm(dim=-1, keepdim=True)))
    return logits, score


# ---- CoCoOp ------------------------------------------------------------------------------------
@pytest.mark.vit
def test_cocoop_vit_b16_parameter_count():
    model = build_model("cocoop", ["a", "b"], backbone="ViT-B-16", pretrained="none")
    n, vis, ctx = 4, 512, 512  # N_CTX 4 ("a photo of a"), visual.output_dim, ln_final width
    expected = n * ctx + (vis * (vis // 16) + vis // 16) + ((vis // 16) * ctx + ctx)
    assert model.method.num_trainable() == expected == 35_360


def test_cocoop_equals_official_forward():
    model = perturbed_model("cocoop", CLASSES)
    assert model.prompts[0] == "X X X X red disc."
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images), cocoop_reference(model, images), rtol=1e-5, atol=1e-5
        )
        model.method.config.pair_chunk = 5  # evaluation in chunks of images: the same logits
        torch.testing.assert_close(
            model(images), cocoop_reference(model, images), rtol=1e-5, atol=1e-5
        )
        model.set_classes(OTHERS)
        torch.testing.assert_close(
            model(images), cocoop_reference(model, images), rtol=1e-5, atol=1e-5
        )


def test_cocoop_loss_is_the_official_one():
    model = perturbed_model("cocoop", CLASSES).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 1, 1])
    loss, parts = model.method.loss(model(images), labels)
    expected = cocoop_reference(model, images, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert (
        model.method.meta_net.linear2.bias.grad.abs().sum() > 0
    )  # the meta-net is trained through the text


def test_cocoop_context_starts_as_the_words_it_replaces():
    model = build_model("cocoop", CLASSES, **TINY)
    bb = model.backbone
    words = bb._text.token_embedding(bb.tokenize(["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(model.method.ctx, words)
    zero = model.method.meta_net.linear2  # with a zero shift CoCoOp is CoOp with that context
    with torch.no_grad():
        zero.weight.zero_(), zero.bias.zero_()
        coop = build_model("coop", CLASSES, ctx_init="a photo of a", n_ctx=4, **TINY).eval()
        images = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model.eval()(images), coop(images), rtol=1e-5, atol=1e-5)


def _official_cocoop_file(path, m, half=True):
    cast = (lambda t: t.detach().half()) if half else (lambda t: t.detach().clone())
    state = {
        "ctx": cast(m.ctx),
        "token_prefix": torch.zeros(4, 1, 64),
        "token_suffix": torch.zeros(4, 72, 64),
    }
    for layer in ("linear1", "linear2"):
        for part in ("weight", "bias"):
            state[f"meta_net.{layer}.{part}"] = cast(getattr(getattr(m.meta_net, layer), part))
    torch.save({"state_dict": state, "epoch": 10, "optimizer": {}, "scheduler": {}}, path)


def test_cocoop_official_checkpoint_loads_to_the_same_tensors(tmp_path):
    model = perturbed_model("cocoop", CLASSES)
    path = tmp_path / "model.pth.tar-10"
    _official_cocoop_file(path, model.method)  # PREC fp16: the official tensors are half precision
    config, state = cocoop.official_adapter(str(path))
    assert set(state) == {
        "ctx",
        "meta_net.linear1.weight",
        "meta_net.linear1.bias",
        "meta_net.linear2.weight",
        "meta_net.linear2.bias",
    }  # token_prefix/suffix dropped
    for key, value in state.items():
        assert torch.equal(value, model.method.state_dict()[key].half().float()), key
    loaded = build_model("cocoop", CLASSES, **TINY, **config.to_dict())
    loaded.method.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), model(images), rtol=2e-3, atol=2e-3)
    torch.save({"state_dict": {"ctx": torch.zeros(4, 64)}}, tmp_path / "bad.pth")
    with pytest.raises(ClipadaptError, match="meta_net"):
        cocoop.official_adapter(str(tmp_path / "bad.pth"))


# ---- KgCoOp ------------------------------------------------------------------------------------
@pytest.mark.vit
def test_kgcoop_vit_b16_parameter_count():
    model = build_model("kgcoop", ["a", "b"], backbone="ViT-B-16", pretrained="none")
    # The official trainer freezes every parameter whose name lacks "ctx": bias_vectors and meta_net
    # (built but never used in the forward) are not trained; only the 4 x 512 context is.
    assert model.method.num_trainable() == 4 * 512 == 2048


@pytest.mark.parametrize(
    "dataset, coop_template, template",
    [
        ("dtd", "{} texture.", "a photo of a {}, a type of texture."),  # KgCoOp's own, not CoOp's
        ("oxford_pets", "a photo of a {}, a type of pet.", "a photo of a {}, a type of pet."),
        (None, None, "a photo of a {}."),
    ],
)
def test_kgcoop_logits_and_loss_are_the_official_ones(dataset, coop_template, template):
    torch.manual_seed(1)
    model = build_model("kgcoop", CLASSES, **TINY, default_template=coop_template, dataset=dataset)
    with torch.no_grad():
        model.method.ctx.add_(0.05 * torch.randn_like(model.method.ctx))
    assert model.method.knowledge_template() == template
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 1, 1])
    logits_ref, score = kgcoop_reference(model, images, template)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), logits_ref, rtol=1e-5, atol=1e-5)
    model.train()
    loss, parts = model.method.loss(model(images), labels)
    expected = F.cross_entropy(logits_ref, labels) + 8.0 * score  # scripts/run.sh: W = 8.0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["kg"], score.detach(), rtol=1e-5, atol=1e-6)
    assert parts["kg"] > 0


def test_kgcoop_paper_distance_is_twice_the_code():
    torch.manual_seed(1)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    parts = {}
    for distance in ("cosine", "l2"):
        torch.manual_seed(2)
        model = build_model("kgcoop", CLASSES, **TINY, kg_distance=distance).train()
        parts[distance] = model.method.loss(model(images), labels)[1]["kg"]
    torch.testing.assert_close(parts["l2"], 2 * parts["cosine"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ClipadaptError):
        build_model("kgcoop", CLASSES, **TINY, kg_distance="L1")
    with pytest.raises(ClipadaptError):
        build_model("kgcoop", CLASSES, **TINY, kg_weight=-1.0)


def test_kgcoop_official_checkpoint_loads_to_the_same_tensors(tmp_path):
    torch.manual_seed(3)
    model = build_model("kgcoop", CLASSES, **TINY).eval()
    official = {
        "ctx": model.method.ctx.detach().clone(),
        "bias_vectors": torch.randn(1, 512),
        "meta_net.linear1.weight": torch.randn(512, 512),
        "meta_net.linear1.bias": torch.randn(512),
        "token_prefix": torch.zeros(4, 1, 64),
        "token_suffix": torch.zeros(4, 72, 64),
    }
    path = tmp_path / "model-best.pth.tar"
    torch.save({"state_dict": official, "epoch": 100}, path)
    config, state = kgcoop.official_adapter(str(path))
    assert set(state) == {"ctx"} and torch.equal(state["ctx"], official["ctx"])
    loaded = build_model("kgcoop", CLASSES, **TINY, **config.to_dict())
    loaded.method.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), model(images), rtol=1e-5, atol=1e-5)
    torch.save({"state_dict": {"shared_adapter.5.0.weight": torch.zeros(1)}}, tmp_path / "mma.pth")
    with pytest.raises(ClipadaptError, match="ctx"):
        kgcoop.official_adapter(str(tmp_path / "mma.pth"))


# ---- both: learning, info counts --------------------------------------------------------------
# On the random tiny backbone the frozen hand-crafted text carries no knowledge: KgCoOp's pull towards
# it (W = 8 in the paper's runs) is lightened here, as FAST_LEARNING lightens other regularizers.
LEARNING_OPTIONS = {"cocoop": ({}, 0.01), "kgcoop": ({"kg_weight": 0.1}, 0.03)}


@pytest.mark.slow  # minutes on 2 shared cores (CoCoOp: a text pass per image)
@pytest.mark.parametrize("method", ["cocoop", "kgcoop"])
def test_training_beats_zero_shot_on_base_classes(method, learn_root):
    data = build_dataset("eurosat", learn_root, shots=8, seed=1, subsample="base")
    seed_everything(0)
    model = build_model(
        method,
        data.classnames,
        **TINY,
        default_template=data.template,
        dataset="eurosat",
        **LEARNING_OPTIONS[method][0],
    )
    zero_shot = evaluate(model, data.test, progress=False).accuracy
    cfg = TrainConfig(
        optimizer="adamw",
        weight_decay=0.0,
        lr=LEARNING_OPTIONS[method][1],
        epochs=30,
        augment=False,
        batch_size=8,
    )
    Trainer(model, data.train, cfg, progress=False).run()
    trained = evaluate(model, data.test, progress=False).accuracy
    assert trained >= zero_shot + 40, (zero_shot, trained)


def test_info_counts_the_new_methods(capsys):
    import json

    from clipadapt.cli import main

    for method in ("cocoop", "kgcoop"):
        assert main(["info", "--method", method, "--backbone", "clipadapt-tiny", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (
            info["trainable_params"]
            == build_model(method, ["a", "b"], **TINY).method.num_trainable()
            > 0
        )


# ---- presets: the official settings ------------------------------------------------------------
@pytest.mark.parametrize(
    "name, method, train",
    [
        (
            "cocoop_base2novel.yaml",
            {"n_ctx": 4, "ctx_init": "a photo of a", "meta_reduction": 16},
            {
                "optimizer": "sgd",
                "lr": 0.002,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "epochs": 10,
                "batch_size": 1,
                "warmup_epochs": 1,
                "warmup_lr": 1e-5,
            },
        ),
        (
            "kgcoop_base2novel.yaml",
            {"n_ctx": 4, "ctx_init": "a photo of a", "kg_weight": 8.0, "kg_distance": "cosine"},
            {
                "optimizer": "sgd",
                "lr": 0.002,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "epochs": 100,
                "batch_size": 128,
                "warmup_epochs": 1,
                "warmup_lr": 1e-5,
            },
        ),
        ("synthetic/cocoop.yaml", {"n_ctx": 4, "ctx_init": "a photo of a"}, {"augment": False}),
        ("synthetic/kgcoop.yaml", {"kg_weight": 8.0}, {"augment": False}),
    ],
)
def test_presets_hold_the_official_settings(name, method, train):
    import os

    from clipadapt.runconfig import find_preset, read_preset, resolve

    path = os.path.join(os.path.dirname(__file__), "..", "src", "clipadapt", "presets", name)
    data = read_preset(path)
    method_cfg, train_cfg, _ = resolve(data["method"], data)
    for key, value in method.items():
        assert getattr(method_cfg, key) == value, key
    for key, value in train.items():
        assert getattr(train_cfg, key) == pytest.approx(value), key
    if not name.startswith("synthetic/"):
        assert find_preset(data["method"], "base2novel", "ViT-B-16") == name


@pytest.mark.parametrize("method", ["coop", "cocoop", "kgcoop"])
def test_an_n_ctx_the_initial_words_contradict_is_refused_not_recorded(method):
    from clipadapt.errors import ClipadaptError

    with pytest.raises(
        ClipadaptError, match="ctx_init 'a photo of a' is 4 tokens but n_ctx is 16: set n_ctx=4"
    ):
        build_model(method, CLASSES, ctx_init="a photo of a", n_ctx=16, **TINY)
    assert perturbed_model(method, CLASSES, ctx_init="", n_ctx=16).method.ctx.shape[0] == 16
