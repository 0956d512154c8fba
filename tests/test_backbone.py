"""The stepped backbone reproduces open_clip's own encoders."""

import open_clip
import pytest
import torch
from torch import nn

from clipadapt.backbone import load_backbone
from clipadapt.model import build_model
from clipadapt.weights import resolve_quick_gelu

PROMPTS = [
    "a photo of a cat.",
    "a photo of a very long and elaborate class name with many words.",
    "x",
]


def _reference(bb, images, prompts):
    clip = bb.clip
    with torch.no_grad():
        img = clip.encode_image(images)
        txt = clip.encode_text(bb.tokenize(prompts))
        img_n, txt_n = nn.functional.normalize(img, dim=-1), nn.functional.normalize(txt, dim=-1)
        logits = clip.logit_scale.exp() * img_n @ txt_n.t()
    return img, txt, logits


def _check_parity(bb, image_size):
    torch.manual_seed(1)
    images = torch.randn(4, 3, image_size, image_size)
    model = build_model(
        "zeroshot", ["cat", "dog", "emu"], backbone=bb, pretrained="none", template="{}"
    )
    model.set_classes(PROMPTS, template="{}")
    model.eval()
    ref_img, ref_txt, ref_logits = _reference(bb, images, PROMPTS)
    with torch.no_grad():
        img, txt = model.encode(images)
        logits = model(images)
    torch.testing.assert_close(img, ref_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(txt, ref_txt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-4)


def test_tiny_parity_with_open_clip(tiny_backbone):
    _check_parity(tiny_backbone, 32)


@pytest.mark.vit
def test_vit_b16_parity_with_open_clip():
    torch.manual_seed(0)
    bb = load_backbone("ViT-B-16", "none")
    assert len(bb.image_blocks) == 12 and bb.image_width == 768 and bb.text_width == 512
    _check_parity(bb, 224)


def test_text_is_cut_to_longest_prompt(tiny_backbone):
    batch = tiny_backbone.text_batch(["a photo of a cat.", "dog"])
    length = tiny_backbone.text_length(batch)
    assert length == int(batch.pool_index.max()) + 1 < batch.embeddings.shape[1]
    assert tiny_backbone.text_stem(batch).shape[1] == length


def test_backbone_is_frozen(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.clip.training


def test_quick_gelu_chosen_for_openai_weights():
    assert resolve_quick_gelu("ViT-B-16", "openai") is True
    assert resolve_quick_gelu("ViT-B-32", "openai") is True
    assert resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert resolve_quick_gelu("ViT-B-16", "none") is False


def test_quick_gelu_reaches_the_model(monkeypatch):
    seen = {}
    real_create = open_clip.create_model

    def fake_create(name, pretrained=None, force_quick_gelu=False, **kw):
        seen["quick_gelu"] = force_quick_gelu
        return real_create("clipadapt-tiny", pretrained=None, force_quick_gelu=force_quick_gelu)

    monkeypatch.setattr(open_clip, "create_model", fake_create)
    import clipadapt.weights

    monkeypatch.setattr(
        clipadapt.weights, "check_weights_reachable", lambda *a, **k: None
    )  # no weights needed
    bb = load_backbone("ViT-B-16", "openai")
    assert seen["quick_gelu"] is True and bb.quick_gelu
    acts = {type(m).__name__ for m in bb.clip.modules()}
    assert "QuickGELU" in acts and "GELU" not in acts
    load_backbone("ViT-B-16", "laion2b_s34b_b88k")
    assert seen["quick_gelu"] is False


def test_unknown_pretrained_tag_is_a_clear_error():
    from clipadapt.errors import ClipadaptError

    with pytest.raises(ClipadaptError, match="neither a file nor a tag"):
        load_backbone("clipadapt-tiny", "no-such-tag")
    with pytest.raises(ClipadaptError, match="unknown backbone"):
        load_backbone("no-such-model", "none")


def test_local_checkpoint_file_loads(tmp_path, tiny_backbone):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.clip.state_dict(), path)
    bb = load_backbone("clipadapt-tiny", str(path))
    assert bb.identity.startswith("clipadapt-tiny/sha256:")
    for a, b in zip(bb.clip.parameters(), tiny_backbone.clip.parameters(), strict=True):
        assert torch.equal(a, b)


def test_evaluation_is_batch_independent(tiny_backbone):
    model = build_model(
        "zeroshot", ["a", "b", "c"], backbone=tiny_backbone, pretrained="none"
    ).eval()
    torch.manual_seed(3)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        alone = torch.cat([model(images[i : i + 1]) for i in range(6)])
        together = model(images)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def test_uncached_weights_without_network_fail_fast(tmp_path, monkeypatch):
    import time

    import pytest

    from clipadapt.errors import ClipadaptError

    def no_download(*args, **kwargs):
        raise AssertionError("no download may be tried")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the network is unreachable
    monkeypatch.setattr(open_clip, "create_model", no_download)
    start = time.time()
    with pytest.raises(ClipadaptError) as info:
        load_backbone("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert time.time() - start < 5
    message = str(info.value)
    assert "ViT-B-16" in message and str(tmp_path) in message and "--pretrained PATH" in message
    assert "\n" not in message
