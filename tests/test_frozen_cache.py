"""The frozen-prefix caches (clipadapt.frozen_cache): the same numbers as recomputing, dropped when
their inputs change, and the training guarantees with them on."""

import json

import pytest
import torch
from conftest import FAST_LEARNING, run_until_interrupted

from clipadapt import build_dataset, build_model
from clipadapt.engine import TrainConfig, Trainer, seed_everything
from clipadapt.frozen_cache import FrozenImages, bytes_per_image, plan_images
from clipadapt.methods import METHODS

# 8 blocks a tower: MMA's first adapter sits after block 4 (1-based), so blocks 1-3 are frozen prefix.
DEEP = dict(backbone="clipadapt-tiny-deep", pretrained="none")
OPTIONS = {name: FAST_LEARNING.get(name, ({}, {}))[0] for name in METHODS}
OPTIONS["rmma"] = {"first_block": 3}  # the default first block is 1: nothing to skip
OPTIONS["clip_lora"] = {**OPTIONS["clip_lora"], "position": "up", "dropout": 0.25}
OPTIONS["mmrl"] = {**OPTIONS["mmrl"], "reg_weight": 1.0}


def _weights(model):
    return {k: v.detach().clone() for k, v in model.method.state_dict().items()}


def _step(model, inputs, labels, seed=0):
    """Logits, loss and gradients of one training step, the method's random draws seeded."""
    torch.manual_seed(seed)
    model.seed_draws(seed)
    model.method.zero_grad(set_to_none=True)
    logits = model(inputs)
    loss, _ = model.method.loss(logits.float(), labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.method.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), grads


# A training step from the caches equals the step without (logits, loss, gradients) for every method:
# the "cached = uncached" invariant of clipadapt.testing.check_method (tests/test_conformance.py).


def test_first_active_blocks_of_the_methods():
    classes = ["a", "b"]
    depth = 8

    def blocks(method, **options):
        model = build_model(method, classes, **DEEP, **options)
        return model.method.first_active_blocks(model.backbone)

    assert (
        blocks("mma") == blocks("rmadapter") == blocks("mma_pp") == (3, 3)
    )  # first adapter after block 4
    assert blocks("mma", adapter_start=6) == (5, 5)
    assert blocks("rmma", first_block=4) == (3, 3) and blocks("rmma") == (0, 0)
    assert blocks("mmrl") == (3, 3)  # representation tokens join block round(5 * 8 / 12) + 1 = 4
    assert blocks("maple") == (0, 0)
    assert blocks("coop") == (depth, 0)
    assert blocks("clip_lora") == (0, 0) and blocks("clip_lora", position="up") == (4, 4)
    assert blocks("clip_lora", encoder="vision") == (0, depth)
    assert blocks("clip_adapter") == blocks("mma_attn") == blocks("zeroshot") == (depth, depth)


def test_rmadapter_reads_cached_frozen_features_instead_of_a_second_stream(monkeypatch):
    model = build_model("rmadapter", ["cat", "dog"], scale=0.5, **DEEP).train()
    images = torch.randn(2, 3, 32, 32)
    frozen = model.frozen_images(images, 3, with_final=True)
    calls = {"image": 0, "text": 0}
    real_image, real_text = model.backbone.image_block, model.backbone.text_block

    def counting(tower, real):
        def run(index, x, *queries):
            calls[tower] += 1
            return real(index, x, *queries)

        return run

    model.prompt_prefix()  # the prompt set's frozen work, done once
    model.frozen_prompt_features()
    monkeypatch.setattr(model.backbone, "image_block", counting("image", real_image))
    monkeypatch.setattr(model.backbone, "text_block", counting("text", real_text))
    model(frozen)
    assert calls == {"image": 5, "text": 5}  # blocks 4..8 once each: no frozen stream beside them
    zs = build_model("zeroshot", ["cat", "dog"], default_template="a photo of a {}.", **DEEP).eval()
    with torch.no_grad():
        ref_img, ref_txt = zs.encode(images)
    torch.testing.assert_close(
        model.method._frozen_features["image"], ref_img, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(model.method._frozen_features["text"], ref_txt, rtol=1e-5, atol=1e-5)
    calls.update(image=0, text=0)
    model(
        images
    )  # augmented images have no cached features: the frozen stream runs beside the adapted one
    assert calls == {"image": 8 + 5, "text": 5}


def test_prompt_prefix_is_dropped_with_the_classes_the_prompts_and_the_device_dtype():
    model = build_model("mma", ["cat", "dog"], scale=0.5, **DEEP).eval()
    first = model.prompt_prefix()
    assert first.tokens.shape[0] == 2 and model.prompt_prefix() is first  # computed once
    model.set_classes(["cat", "dog", "bird"])
    second = model.prompt_prefix()
    assert second is not first and second.tokens.shape[0] == 3
    model.method.config.prompts = ["a photo of a {}.", "a drawing of a {}."]
    model.set_classes(["cat", "dog", "bird"])
    third = model.prompt_prefix()
    assert third.tokens.shape[0] == 6
    model.double()
    assert model._prompt_prefix is None and model.prompt_prefix().tokens.dtype == torch.float64
    fresh = build_model("mma", ["cat", "dog", "bird"], scale=0.5, **DEEP).double().eval()
    fresh.load_state_dict(model.state_dict())
    fresh.method.config.prompts = model.method.config.prompts
    fresh.set_classes(["cat", "dog", "bird"])
    fresh.prefix_budget_mb = 0
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), fresh(images))


def test_drawn_prompts_read_their_rows_of_the_prompt_set_prefix():
    prompts = ["a photo of a {}.", "a drawing of a big {} in the snow at night.", "{}."]
    model = build_model(
        "mma", ["cat", "dog", "a very long bird name"], scale=0.5, prompts=prompts, **DEEP
    ).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    model.prefix_budget_mb = 0
    ref = _step(model, images, labels, seed=5)
    model.prefix_budget_mb = 64
    model._drop_prompt_caches()
    got = _step(model, images, labels, seed=5)
    assert model.prompt_prefix().tokens.shape[0] == 9
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)


def test_bytes_per_image_and_the_budget(tiny_backbone):
    model = build_model("mma", ["a", "b"], backbone=tiny_backbone)
    tokens = (32 // 8) ** 2 + 1  # class token and 4x4 patches
    assert bytes_per_image(tiny_backbone, 1, torch.float32, with_final=False) == tokens * 64 * 4
    assert (
        bytes_per_image(tiny_backbone, 1, torch.bfloat16, with_final=True)
        == tokens * 64 * 2 + 32 * 4
    )
    assert (
        bytes_per_image(tiny_backbone, 4, torch.float32, with_final=False) == 32 * 4
    )  # output features
    per = tokens * 64 * 4
    assert plan_images(
        tiny_backbone, model.method, 1000, False, 1000 * per / 2**20, 0.0, torch.float32
    ).cached
    over = plan_images(
        tiny_backbone, model.method, 1001, False, 1000 * per / 2**20, 0.0, torch.float32
    )
    assert not over.cached and "over prefix_cache_mb" in over.reason
    assert not plan_images(
        tiny_backbone, model.method, 10, True, 4096, 0.0, torch.float32
    ).cached  # augmentation
    noisy = plan_images(
        tiny_backbone, model.method, 10, False, 4096, 0.3, torch.float32
    )  # fresh noise each load
    assert not noisy.cached and "train_noise_std" in noisy.reason
    assert not plan_images(tiny_backbone, model.method, 10, False, 0, 0.0, torch.float32).cached


# ---- whole runs -------------------------------------------------------------------------------------
def _data(learn_root):
    return build_dataset("eurosat", learn_root, shots=4, seed=1, subsample="base")


def _run(method, data, out_dir=None, interrupt_at=None, **train):
    options, cfg = FAST_LEARNING[method]
    cfg = TrainConfig(**{**cfg, "epochs": 2, "augment": False, "batch_size": 8, **train})
    if method == "rmma":
        options = OPTIONS["rmma"]

    def trainer():
        seed_everything(0)
        model = build_model(method, data.classnames, **DEEP, **options)
        return model, Trainer(
            model,
            data.train,
            cfg,
            out_dir=None if out_dir is None else str(out_dir),
            progress=False,
        )

    model, t = trainer()
    if interrupt_at is not None:
        run_until_interrupted(t, interrupt_at)
        model, t = trainer()
    result = t.run()
    with torch.no_grad():
        logits = model.eval()(torch.ones(2, 3, 32, 32))
    return _weights(model), result, logits


def _assert_same_weights(a, b, exact=False):
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("method", ["mma", "clip_adapter"])  # rmadapter: the budget test below
def test_a_run_with_the_caches_ends_with_the_weights_of_a_run_without(method, learn_root, tmp_path):
    data = _data(learn_root)
    cached = _run(method, data, out_dir=tmp_path / "on")
    plain = _run(method, data, out_dir=tmp_path / "off", prefix_cache_mb=0)
    _assert_same_weights(cached[0], plain[0])
    assert cached[1].final_loss == pytest.approx(plain[1].final_loss, rel=1e-5)
    torch.testing.assert_close(cached[2], plain[2], rtol=1e-5, atol=1e-5)
    events = [json.loads(line) for line in (tmp_path / "on" / "log.jsonl").read_text().splitlines()]
    path = next(e for e in events if e.get("event") == "feature_path")
    assert path["image_cache"] is True and "computed once for the run" in path["path"]
    events = [
        json.loads(line) for line in (tmp_path / "off" / "log.jsonl").read_text().splitlines()
    ]
    path = next(e for e in events if e.get("event") == "feature_path")
    assert path["image_cache"] is False and "prefix_cache_mb=0" in path["path"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", ["mma_pp", "rmma", "mma_attn", "coop", "mmrl", "maple", "clip_lora"]
)
def test_every_method_runs_to_the_same_weights_with_and_without_the_caches(method, learn_root):
    data = _data(learn_root)
    _assert_same_weights(_run(method, data)[0], _run(method, data, prefix_cache_mb=0)[0])


def test_a_budget_too_small_recomputes_to_the_same_numbers(learn_root, tmp_path):
    data = _data(learn_root)
    cached = _run("rmadapter", data)
    tiny = _run(
        "rmadapter", data, out_dir=tmp_path, prefix_cache_mb=0.01
    )  # 20 images need ~0.09 MB
    _assert_same_weights(cached[0], tiny[0])
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    path = next(e for e in events if e.get("event") == "feature_path")
    assert path["image_cache"] is False and "over prefix_cache_mb=0.01" in path["path"]


@pytest.mark.parametrize("method", ["mma", pytest.param("rmadapter", marks=pytest.mark.slow)])
def test_an_interrupted_cached_run_resumes_to_the_same_numbers(method, learn_root, tmp_path):
    data = _data(learn_root)
    straight = _run(method, data, out_dir=tmp_path / "a")
    resumed = _run(
        method, data, out_dir=tmp_path / "b", interrupt_at=3
    )  # 2 steps an epoch: dies in epoch 2
    _assert_same_weights(straight[0], resumed[0], exact=True)
    assert torch.equal(straight[2], resumed[2])
    again = _run(method, data, out_dir=tmp_path / "c")  # same seed, same numbers
    _assert_same_weights(straight[0], again[0], exact=True)


def test_a_new_training_set_is_cached_anew(learn_root, monkeypatch):
    data = _data(learn_root)
    model = build_model("mma", data.classnames, scale=0.1, **DEEP)
    trainer = Trainer(
        model, data.train, TrainConfig(epochs=1, batch_size=8, augment=False), progress=False
    )
    calls = {"n": 0}
    real = model.frozen_images

    def counting(images, block, with_final=False):
        calls["n"] += 1
        return real(images, block, with_final)

    monkeypatch.setattr(model, "frozen_images", counting)
    trainer.run()
    assert calls["n"] == 1 and torch.equal(
        trainer._frozen[2], torch.tensor([d.label for d in data.train])
    )
    trainer.run()
    assert calls["n"] == 1  # the same images: the run's cache is reused
    other = list(reversed(data.train))
    trainer.items = other
    trainer.run()
    assert calls["n"] == 2 and torch.equal(
        trainer._frozen[2], torch.tensor([d.label for d in other])
    )


def test_evaluation_with_the_prompt_prefix_is_batch_independent():
    for method, options in (("mma", {"scale": 0.5}), ("rmma", {"first_block": 3, "alpha": 0.5})):
        torch.manual_seed(0)
        model = build_model(method, ["cat", "dog", "bird"], **DEEP, **options).eval()
        for p in model.method.parameters():  # adapters away from their identity start
            torch.nn.init.normal_(p, std=0.1)
        images = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            together = model(images)
            alone = torch.cat([model(images[i : i + 1]) for i in range(4)])
        assert model.prompt_prefix() is not None
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_frozen_images_move_and_slice():
    frozen = FrozenImages(torch.arange(24.0).view(4, 3, 2), 2, final=torch.arange(8.0).view(4, 2))
    part = frozen[torch.tensor([3, 1])]
    assert (
        len(part) == 2
        and part.block == 2
        and torch.equal(part.final, torch.tensor([[6.0, 7.0], [2.0, 3.0]]))
    )
    assert part.to("cpu").tokens.shape == (2, 3, 2) and frozen.nbytes == 24 * 4 + 8 * 4


def test_blocks_run_with_a_gradient_compute_open_clips_block(tiny_backbone):
    from clipadapt.backbone import _block_with_grad, _plain_attention_block

    torch.manual_seed(0)
    for block, x, mask in (
        (tiny_backbone.image_blocks[1], torch.randn(3, 17, 64), None),
        (tiny_backbone.text_blocks[1], torch.randn(4, 9, 64), tiny_backbone.text_attn_mask(9)),
    ):
        assert _plain_attention_block(block)
        outs, grads = [], []
        for run in (lambda z: block(z, attn_mask=mask), lambda z: _block_with_grad(block, z, mask)):
            z = x.clone().requires_grad_(True)
            out = run(z)
            out.square().sum().backward()
            outs.append(out.detach())
            grads.append(z.grad)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
