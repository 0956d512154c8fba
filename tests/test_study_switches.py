"""The switches the seeds' studies need: each changes what it claims and nothing else."""

import pytest
import torch

from clipadapt.cli import main
from clipadapt.data import build_dataset, num_base_classes, parse_base_ratio, transforms
from clipadapt.errors import ClipadaptError, DataError
from clipadapt.model import build_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["red disc", "green square", "blue disc", "yellow square"]


@pytest.fixture()
def images():
    torch.manual_seed(3)
    return torch.randn(3, 3, 32, 32)


def _perturb(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# ---- protocol: --base-ratio ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes, ratio, base",
    [
        (10, "1:1", 5),
        (37, "1:1", 19),  # CoOp's ceil(C/2) (the authors' code: floor, 18 on 37 classes)
        (10, "4:1", 8),
        (37, "4:1", 30),  # the authors' C - C//5
        (37, "3:1", 28),
        (37, "5:1", 31),
        (100, "5:1", 84),
        (7, "1:2", 3),
    ],
)
def test_base_ratio_counts(classes, ratio, base):
    assert num_base_classes(classes, ratio) == base


def test_base_ratio_splits_sorted_classes_and_keeps_the_draw(learn_root):
    half = build_dataset("eurosat", learn_root, 4, 1, "base")
    base = build_dataset("eurosat", learn_root, 4, 1, "base", "4:1")
    new = build_dataset("eurosat", learn_root, 4, 1, "new", "4:1")
    assert (base.num_classes, new.num_classes) == (8, 2)
    assert (
        base.classnames + new.classnames
        == build_dataset("eurosat", learn_root, 4, 1, "all").classnames
    )
    assert base.classnames[:5] == half.classnames
    # the few-shot draw does not depend on the ratio: the first five classes keep the same images
    assert [d.impath for d in base.train if d.label < 5] == [d.impath for d in half.train]
    assert sorted({d.label for d in new.test}) == [0, 1]


@pytest.mark.parametrize("ratio", ["0:1", "1:0", "4", "a:b", "4:1:1", "-1:2"])
def test_impossible_base_ratio_is_refused(ratio):
    with pytest.raises(DataError, match="B:N"):
        parse_base_ratio(ratio)


def test_ratio_leaving_no_novel_class_is_refused(learn_root):
    with pytest.raises(DataError, match="leaves no novel class"):
        num_base_classes(3, "5:1")
    with pytest.raises(DataError, match="10 classes"):
        build_dataset("eurosat", learn_root, 4, 1, "new", "50:1")


@pytest.mark.parametrize(
    "ratio, fragment", [("0:1", "B:N with two integers >= 1"), ("50:1", "leaves no novel class")]
)
def test_cli_bad_base_ratio_is_one_line_and_exit_2(learn_root, tmp_path, capsys, ratio, fragment):
    code = main(
        [
            "train",
            "--method",
            "zeroshot",
            "--dataset",
            "eurosat",
            "--data-root",
            learn_root,
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
            "--config",
            "none",
            "--base-ratio",
            ratio,
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and fragment in err[0]
        and err[0].startswith("clipadapt: error:")
    )
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- data: noise and shots above 16 --------------------------------------------------------------


def _image():
    from PIL import Image

    pixels = torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(0))
    return Image.fromarray((pixels * 255).byte().numpy())


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_train_noise_is_gaussian_after_normalisation_and_fresh_each_load():
    clean = transforms.test_transform(32, MEAN, STD)(_image())
    noisy = transforms.train_transform(32, MEAN, STD, augment=False, noise_std=0.3)
    torch.manual_seed(5)
    a = noisy(_image()) - clean
    b = noisy(_image()) - clean
    assert abs(a.std().item() - 0.3) < 0.02 and abs(a.mean().item()) < 0.02
    assert not torch.equal(a, b)  # a new draw every time the image is loaded
    torch.manual_seed(5)
    assert torch.equal(
        noisy(_image()) - clean, a
    )  # the trainer reseeds every epoch: reruns draw the same
    assert torch.equal(transforms.train_transform(32, MEAN, STD, augment=False)(_image()), clean)


def test_eval_noise_is_a_function_of_the_image():
    clean = transforms.test_transform(32, MEAN, STD)(_image())
    noisy = transforms.test_transform(32, MEAN, STD, noise_std=0.3)
    torch.manual_seed(1)
    first = noisy(_image())
    torch.manual_seed(2)
    assert torch.equal(noisy(_image()), first)  # the same noise whatever the global generator holds
    assert abs((first - clean).std().item() - 0.3) < 0.02
    assert torch.equal(transforms.GaussianNoise(0.0, fixed=True)(clean), clean)


def _test_inputs_of_a_run(learn_root, monkeypatch, **settings):
    """The image tensors the test-time evaluation feeds the model during one base-to-novel run."""
    from clipadapt import protocols
    from clipadapt.runconfig import resolve_run
    from clipadapt.runspec import RunSpec

    seen = []
    real_evaluate = protocols.evaluate

    def spy(model, items, **kwargs):
        original = model.forward

        def forward(images, *a, **k):
            seen.append(images.clone())
            return original(images, *a, **k)

        model.forward = forward
        try:
            return real_evaluate(model, items, **kwargs)
        finally:
            model.__dict__.pop("forward", None)

    monkeypatch.setattr(protocols, "evaluate", spy)
    run = resolve_run(
        RunSpec.from_arguments(
            "mma",
            "eurosat",
            learn_root,
            protocol="base2novel",
            shots=2,
            backbone="clipadapt-tiny",
            pretrained="none",
            config="none",
            **{"epochs": 1, "batch_size": 8, "augment": False, **settings},
        )
    )
    execution = protocols.Execution(None, progress=False)
    metrics = protocols.run_protocol(run, execution)
    return torch.cat(seen), metrics


def test_train_noise_leaves_the_evaluation_images_unchanged(learn_root, monkeypatch):
    clean, clean_metrics = _test_inputs_of_a_run(learn_root, monkeypatch)
    trained_noisy, metrics = _test_inputs_of_a_run(learn_root, monkeypatch, train_noise_std=0.5)
    assert torch.equal(trained_noisy, clean)
    assert metrics["train_noise_std"] == 0.5 and metrics["eval_noise_std"] == 0.0
    evaluated_noisy, metrics = _test_inputs_of_a_run(learn_root, monkeypatch, eval_noise_std=0.5)
    assert abs((evaluated_noisy - clean).std().item() - 0.5) < 0.05
    assert metrics["base_ratio"] == "1:1" and (
        metrics["num_base_classes"],
        metrics["num_novel_classes"],
    ) == (5, 5)
    for key in (
        "trainable_params",
        "train_step_ms_per_image",
        "train_epoch_ms_per_image",
        "train_seconds",
        "peak_memory_mb",
        "eval_images_per_s",
    ):
        assert clean_metrics[key] > 0


def test_noise_settings_are_checked():
    from clipadapt.runconfig import resolve

    with pytest.raises(ClipadaptError, match="train_noise_std"):
        resolve("mma", {}, {"train_noise_std": -0.1})
    with pytest.raises(ClipadaptError, match="base_ratio"):
        resolve("mma", {}, {"base_ratio": "0:1"})


def test_shots_above_16_keep_short_classes_whole(learn_root):
    # 16 training images a class: K = 32, 64, 128 keep every one of them, as Dassl (repeat=False)
    for shots in (32, 64, 128):
        data = build_dataset("eurosat", learn_root, shots, 1, "all")
        assert len(data.train) == 10 * 16
    assert len(build_dataset("eurosat", learn_root, 12, 1, "all").train) == 10 * 12


# ---- RMAdapter: the consistency distance ---------------------------------------------------------


def _rmadapter_loss(images, **options):
    torch.manual_seed(0)
    model = _perturb(
        build_model("rmadapter", ["cat", "dog"], **{"scale": 0.5, **options}, **TINY)
    ).train()
    torch.manual_seed(0)
    logits = model(images)
    loss, parts = model.method.loss(logits, torch.tensor([0, 1, 0]))
    return logits.detach(), loss.item(), parts


def test_rmadapter_consistency_distance_changes_only_the_consistency_term(images):
    results = {d: _rmadapter_loss(images, consistency=d) for d in ("l1", "cosine", "kl", "none")}
    for name, (logits, _, parts) in results.items():
        torch.testing.assert_close(
            logits, results["l1"][0], rtol=0, atol=0
        )  # the forward pass is the same
        assert parts["rec_vision"] == results["l1"][2]["rec_vision"]
    assert {"con_vision", "con_text"} <= set(results["l1"][2]) and {
        "con_vision",
        "con_text",
    } <= set(results["cosine"][2])
    assert "con_kl" in results["kl"][2] and not any(k.startswith("con") for k in results["none"][2])
    base = results["none"][1]
    for name in ("l1", "cosine", "kl"):
        con = sum(v for k, v in results[name][2].items() if k.startswith("con"))
        assert con > 0 and results[name][1] > base
    assert results["l1"][2]["con_vision"] != results["cosine"][2]["con_vision"]


def test_rmadapter_consistency_is_zero_when_nothing_is_adapted(images):
    for distance in ("l1", "cosine", "kl"):
        _, _, parts = _rmadapter_loss(images, consistency=distance, scale=0.0)
        assert all(abs(v) < 1e-5 for k, v in parts.items() if k.startswith("con")), (
            distance,
            parts,
        )


def test_rmadapter_consistency_off_computes_no_frozen_stream(images):
    model = build_model("rmadapter", ["cat", "dog"], consistency="none", **TINY).train()
    model(images)
    assert model.method._frozen_features == {"image": None, "text": None}
    with pytest.raises(ClipadaptError, match="consistency must be one of"):
        build_model("rmadapter", ["cat", "dog"], consistency="l3", **TINY)


def test_rmadapter_bottleneck_width_sets_the_adapter_size():
    narrow = build_model("rmadapter", ["a", "b"], adapter_dim=8, **TINY).method
    wide = build_model("rmadapter", ["a", "b"], adapter_dim=16, **TINY).method
    assert narrow.num_trainable() < wide.num_trainable()
    assert all(a.down[0].out_features == 8 for a in narrow.visual_adapter.values())


# ---- R-MMA: every component of the ablation table ------------------------------------------------


def _rmma(**options):
    torch.manual_seed(0)
    return build_model("rmma", CLASSES, **options, **TINY)


def test_rmma_recurrent_false_multiplies_the_adapter_by_the_adapted_blocks():
    d = 16
    shared = _rmma(latent_dim=d).method.num_trainable() - d  # v^(0) is one vector either way
    for first, last, blocks in ((1, None, 4), (2, 3, 2), (3, 3, 1)):
        per_block = _rmma(latent_dim=d, recurrent=False, first_block=first, last_block=last).method
        assert per_block.num_trainable() - d == blocks * shared
    deep = build_model(
        "rmma",
        CLASSES,
        backbone="clipadapt-tiny-deep",
        pretrained="none",
        latent_dim=d,
        recurrent=False,
    ).method
    assert deep.num_trainable() - d == 2 * (
        _rmma(latent_dim=d, recurrent=False).method.num_trainable() - d
    )


@pytest.mark.parametrize(
    "options",
    [
        {"routing": "shared"},
        {"align": "none"},
        {"fusion": False},
        {"recurrent": False},
        {"fusion": False, "attn_proj": "qkvo"},
    ],
)
def test_rmma_ablations_start_zero_shot_and_change_the_trained_function(options, images):
    zs = build_model("zeroshot", CLASSES, default_template="a photo of a {}.", **TINY).eval()
    model = _rmma(**options).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), zs(images), rtol=0, atol=1e-5)
        full = _perturb(_rmma()).eval()(images)
        ablated = _perturb(model)(images)
    assert not torch.allclose(ablated, full, atol=1e-4)


def test_rmma_shared_routing_is_one_projection():
    d = 16
    full, shared = _rmma(latent_dim=d).method, _rmma(latent_dim=d, routing="shared").method
    assert full.num_trainable() - shared.num_trainable() == d * 64 + 64  # one Linear(d, 64) fewer
    assert not hasattr(shared, "route_image") and shared.route_shared.out_features == 64


def test_rmma_without_alignment_the_latent_ignores_the_tokens(images):
    for align, same in (("none", True), ("attention", False)):
        model = _perturb(_rmma(align=align)).eval()
        with torch.no_grad():
            model(images)
        latent = model.method._img_latent
        assert torch.allclose(latent, latent[:1].expand_as(latent)) == same


def test_rmma_without_fusion_the_image_latent_ignores_the_class_prompts(images):
    for fusion, same in ((False, True), (True, False)):
        model = _perturb(_rmma(fusion=fusion)).eval()
        with torch.no_grad():
            model(images)
            first = model.method._img_latent.clone()
            model.set_classes(["one", "two", "three"])
            model(images)
        assert torch.allclose(model.method._img_latent, first) == same
        if not fusion:
            assert not hasattr(model.method, "fuse")


def test_rmma_lambda_zero_removes_only_the_separation_term(images):
    def loss(lam):
        model = _perturb(_rmma(lambda_sep=lam)).train()
        logits = model(images)
        return logits.detach(), model.method.loss(logits, torch.tensor([0, 1, 2]))

    logits0, (total0, parts0) = loss(0.0)
    logits6, (total6, parts6) = loss(0.6)
    torch.testing.assert_close(logits0, logits6, rtol=0, atol=0)
    assert total0.item() == pytest.approx(parts0["clip"])
    assert total6.item() == pytest.approx(parts6["clip"] + 0.6 * parts6["sep"])


def test_rmma_bad_ablation_options_are_clear_errors():
    with pytest.raises(ClipadaptError, match="routing must be one of"):
        _rmma(routing="crossed")
    with pytest.raises(ClipadaptError, match="align must be one of"):
        _rmma(align="cross")
    with pytest.raises(ClipadaptError, match="attn_proj"):
        _rmma(align="none", attn_proj="qkv")
    with pytest.raises(ClipadaptError, match="fusion: false"):
        _rmma(fusion=False, attn_proj="qkv")


# ---- attention MMA: heads, mask, residual --------------------------------------------------------


@pytest.mark.parametrize("heads", [2, 8, 16])
def test_mma_attn_heads_change_the_function_not_the_parameter_count(heads, images):
    torch.manual_seed(0)
    four = _perturb(build_model("mma_attn", CLASSES, heads=4, **TINY)).eval()
    torch.manual_seed(0)
    other = _perturb(build_model("mma_attn", CLASSES, heads=heads, **TINY)).eval()
    assert other.method.num_trainable() == four.method.num_trainable()
    assert other.method.mha.num_heads == heads
    assert all(
        torch.equal(a, b)
        for a, b in zip(four.method.parameters(), other.method.parameters(), strict=True)
    )
    with torch.no_grad():
        assert not torch.allclose(other(images), four(images), atol=1e-5)


def test_mma_attn_residual_and_mask_switches(images):
    with torch.no_grad():
        outs = {}
        for mask in ("bias", "blocked", "none"):
            for r in (0.2, 0.5):
                torch.manual_seed(0)
                outs[mask, r] = _perturb(
                    build_model("mma_attn", CLASSES, mask=mask, residual=r, **TINY)
                ).eval()(images)
    for a in outs:
        for b in outs:
            if a != b:
                assert not torch.allclose(outs[a], outs[b], atol=1e-5), (a, b)
    with pytest.raises(ClipadaptError, match="not divisible by heads"):
        build_model("mma_attn", CLASSES, heads=3, **TINY)


def test_base_ratio_as_key_value_and_unquoted_yaml():
    from clipadapt.runconfig import parse_overrides, resolve

    assert parse_overrides(["base_ratio=4:1"]) == {"base_ratio": "4:1"}
    assert resolve("mma", {}, parse_overrides(["base_ratio=4:1"]))[1].base_ratio == "4:1"
    with pytest.raises(ClipadaptError, match="in quotes"):
        resolve("mma", {"base_ratio": 241}, {})  # what YAML makes of an unquoted `base_ratio: 4:1`
