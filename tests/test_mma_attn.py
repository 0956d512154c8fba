"""mma_attn computes the function of its authors' code (reprostudy/mm-adapter), re-derived here."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipadapt.errors import ClipadaptError
from clipadapt.methods.mma_attn import MMAAttn, MMAAttnConfig, load_reference_state
from clipadapt.model import build_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")


def reference_logits(adapter, img_f, txt_f, logit_scale, mask_kind="bias", ratio=0.2):
    """CLIPTransformerAdapterText.forward with MaskedMultiheadAttentionDownsampled, step by step."""
    txt = F.normalize(txt_f.float(), dim=-1)  # encode_text / encode_images normalise
    img = F.normalize(img_f.float(), dim=-1)
    c, b = txt.shape[0], img.shape[0]
    seq = torch.cat([txt.unsqueeze(1).expand(-1, b, -1), img.unsqueeze(0)], dim=0)  # [C + 1, B, D]
    mask = torch.zeros(c + 1, c + 1)
    if mask_kind != "none":
        mask[:c, c] = 1  # prompt -> image
        mask[c, :c] = 1  # image -> prompt
    if mask_kind == "blocked":
        mask[:c, :c] = float("-inf")
        mask[range(c), range(c)] = 0
    mask = mask.unsqueeze(0).repeat(b * adapter.config.heads, 1, 1)
    z = adapter.downsampler(seq)
    z, _ = adapter.mha.forward(z, z, z, attn_mask=mask)  # nn.MultiheadAttention, sequence first
    out = adapter.upsampler(z)
    ai, at = F.normalize(out[c:], dim=-1), F.normalize(out[:c], dim=-1)
    img = F.normalize(ratio * ai + (1 - ratio) * img.unsqueeze(0), dim=-1)
    txt = F.normalize(ratio * at + (1 - ratio) * txt.unsqueeze(1), dim=-1)
    return logit_scale * torch.bmm(img.permute(1, 0, 2), txt.permute(1, 2, 0)).squeeze(1)


def _perturb(module, scale=0.3):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("mask", ["bias", "blocked", "none"])
@pytest.mark.parametrize("classes", [1, 3, 17])
def test_logits_equal_the_reference_function(mask, classes):
    bb = SimpleNamespace(embed_dim=48)
    adapter = MMAAttn(MMAAttnConfig(mask=mask, image_chunk=4), bb, [])
    _perturb(adapter)
    torch.manual_seed(4)
    img_f, txt_f = 3 * torch.randn(9, 48), 2 * torch.randn(classes, 48)
    scale = torch.tensor(100.0)
    with torch.no_grad():
        ours = adapter.logits(img_f, txt_f, scale)
        ref = reference_logits(adapter, img_f, txt_f, scale, mask)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_masks_differ_and_the_image_sees_every_prompt():
    bb = SimpleNamespace(embed_dim=48)
    adapters = {m: MMAAttn(MMAAttnConfig(mask=m), bb, []) for m in ("bias", "blocked", "none")}
    state = adapters["bias"].state_dict()
    _perturb(adapters["bias"])
    for a in adapters.values():
        a.load_state_dict(adapters["bias"].state_dict())
    img_f, txt_f = torch.randn(2, 48), torch.randn(5, 48)
    with torch.no_grad():
        out = {m: a.logits(img_f, txt_f, torch.tensor(10.0)) for m, a in adapters.items()}
        # The image attends with all class prompts: changing one class moves the others' scores.
        other = txt_f.clone()
        other[4] = torch.randn(48)
        moved = adapters["bias"].logits(img_f, other, torch.tensor(10.0))
    assert not torch.allclose(out["bias"], out["blocked"])
    assert not torch.allclose(out["bias"], out["none"])
    assert not torch.allclose(moved[:, :4], out["bias"][:, :4])
    assert state.keys() == adapters["none"].state_dict().keys()


def test_parameter_count_and_reference_state_dict_names():
    adapter = MMAAttn(MMAAttnConfig(), SimpleNamespace(embed_dim=512), [])
    assert adapter.num_trainable() == 107_712

    class ReferenceAdapter(
        nn.Module
    ):  # the submodule layout of MaskedMultiheadAttentionDownsampled
        def __init__(self):
            super().__init__()
            self.downsampler = nn.Sequential(nn.Linear(512, 32), nn.Linear(32, 128))
            self.mha = nn.MultiheadAttention(128, num_heads=4)
            self.upsampler = nn.Sequential(nn.Linear(128, 32), nn.GELU(), nn.Linear(32, 512))

    torch.manual_seed(5)
    ref = ReferenceAdapter()
    state = {f"adapter.{k}": v for k, v in ref.state_dict().items()}
    state["_clip.logit_scale"] = torch.tensor(4.6)  # CLIP's own keys sit beside the adapter's
    load_reference_state(adapter, state)
    for k, v in ref.state_dict().items():
        assert torch.equal(adapter.state_dict()[k], v), k
    with pytest.raises(ClipadaptError, match="adapter"):
        load_reference_state(adapter, {"_clip.logit_scale": torch.tensor(1.0)})


def test_model_logits_use_clip_features_and_scale():
    model = build_model("mma_attn", ["red disc", "green square", "blue disc"], **TINY).eval()
    _perturb(model.method)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        img_f = model.frozen_image_features(images)
        txt_f = model.frozen_text_features()
        ref = reference_logits(model.method, img_f, txt_f, model.backbone.logit_scale)
        torch.testing.assert_close(model(images), ref, rtol=1e-5, atol=1e-4)


def test_bad_mask_is_refused():
    with pytest.raises(ClipadaptError, match="mask"):
        MMAAttn(MMAAttnConfig(mask="diagonal"), SimpleNamespace(embed_dim=48), [])


@pytest.mark.learning
def test_training_learns_from_separable_features():
    # Images drawn around five class prototypes; the class prompts' features are unrelated to them,
    # so CLIP's own scores are at chance and only the adapter can recover the classes.
    torch.manual_seed(0)
    d, c = 32, 5
    prototypes, txt_f = torch.randn(c, d), torch.randn(c, d)

    def sample(n):
        y = torch.randint(0, c, (n,))
        return prototypes[y] + 0.5 * torch.randn(n, d), y

    adapter = MMAAttn(MMAAttnConfig(), SimpleNamespace(embed_dim=d), [])
    scale = torch.tensor(100.0)
    test_x, test_y = sample(500)
    with torch.no_grad():
        before = (adapter.logits(test_x, txt_f, scale).argmax(1) == test_y).float().mean().item()
    optimizer = torch.optim.Adam(adapter.parameters(), lr=0.005, weight_decay=1e-4)  # the paper's
    x, y = sample(80)
    for _ in range(200):
        idx = torch.randperm(80)[:32]
        loss = F.cross_entropy(adapter.logits(x[idx], txt_f, scale), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = (adapter.logits(test_x, txt_f, scale).argmax(1) == test_y).float().mean().item()
    assert before < 0.4 and after > 0.85, (before, after)
