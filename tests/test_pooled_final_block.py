"""The final block run at the pooled tokens only (Method.pooled_final_block): the same logits, losses
and gradients as the whole final block, for every method that opts in; the others untouched."""

import pytest
import torch

from clipadapt import build_model
from clipadapt.backbone import _block_at_queries, _run_block, at_queries, load_backbone
from clipadapt.methods import METHODS, method_class

DEEP = dict(
    backbone="clipadapt-tiny-deep", pretrained="none"
)  # 8 blocks a tower: adapters after block 4
# Prompts of different lengths, so that the end-of-text positions differ and the causal mask matters.
CLASSES = ["red disc", "blue square", "a much longer class name than the others here", "dog"]
OPTED_IN = {
    "mma": {"scale": 0.5},
    "mma_pp": {
        "train_scale": 0.5,
        "test_scale": 0.3,
        "dropout": 0.3,
    },  # dropout: the noise must match too
    "rmadapter": {"scale": 0.5},
    "coop": {},
    "kgcoop": {},
}


def test_the_methods_that_opt_in():
    assert sorted(m for m in METHODS if method_class(m).pooled_final_block) == sorted(OPTED_IN)


def _record_queries(monkeypatch, bb):
    """Record, per tower, the block indices run with queries."""
    seen = {"image": [], "text": []}
    for tower in seen:
        real = getattr(bb, f"{tower}_block")

        def run(index, x, queries=None, tower=tower, real=real):
            if queries is not None:
                seen[tower].append(index)
            return real(index, x, queries)

        monkeypatch.setattr(bb, f"{tower}_block", run)
    return seen


def _model(method):
    torch.manual_seed(0)
    model = build_model(method, CLASSES, **DEEP, **OPTED_IN[method])
    with torch.no_grad():  # away from the identity start: zero biases, a context of noise
        for p in model.method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _pass(model, inputs, train, seed=3):
    """Logits, loss, loss parts and gradients of the trainable parameters after one pass, and the
    logits of a pass without gradient (evaluation's path: text features computed once)."""
    torch.manual_seed(seed)
    model.seed_draws(seed)
    model.train(train)
    model.method.zero_grad(set_to_none=True)
    logits = model(inputs)
    loss, parts = model.method.loss(logits.float(), torch.tensor([0, 2, 3]))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.method.named_parameters() if p.grad is not None}
    torch.manual_seed(seed)
    model.seed_draws(seed)
    with torch.no_grad():
        no_grad_logits = model(inputs)
    return logits.detach(), loss.detach(), parts, grads, no_grad_logits


@pytest.mark.parametrize("cached", [False, True], ids=["stems", "prefix-caches"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("method", sorted(OPTED_IN))
def test_the_pooled_final_block_gives_the_numbers_of_the_whole_block(
    method, train, cached, monkeypatch
):
    model = _model(method)
    depth = len(model.backbone.image_blocks)
    images = torch.randn(3, 3, 32, 32)
    model.prefix_budget_mb = 64 if cached else 0
    inputs = images
    if cached:
        block = model.method.first_active_blocks(model.backbone)[0]
        inputs = model.frozen_images(images, block, with_final=model.method.compares_with_frozen)

    model.method.pooled_final_block = False
    ref = _pass(model, inputs, train)
    del model.method.pooled_final_block  # back to the class's promise
    seen = _record_queries(monkeypatch, model.backbone)
    got = _pass(model, inputs, train)

    assert seen["text"] and set(seen["text"]) == {depth - 1}  # the pooled path really ran
    if model.method.image_tower_is_frozen(
        model.backbone
    ):  # coop: CLIP's own image tower, run whole
        assert seen["image"] == []
    else:
        assert seen["image"] and set(seen["image"]) == {depth - 1}
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[4], ref[4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)
    assert got[2].keys() == ref[2].keys()
    for name in ref[2]:
        torch.testing.assert_close(
            torch.as_tensor(got[2][name]),
            torch.as_tensor(ref[2][name]),
            rtol=1e-5,
            atol=1e-6,
            msg=name,
        )
    assert got[3].keys() == ref[3].keys() and ref[3]
    for name in ref[3]:
        torch.testing.assert_close(got[3][name], ref[3][name], rtol=1e-4, atol=1e-6, msg=name)


# cocoop leaves the model's frozen class-text pass whole and pools its own per-image text pass in after_heads
# (its logits are checked against the official forward in tests/test_cocoop_kgcoop.py).
OWN_POOLING = {"cocoop"}


@pytest.mark.parametrize(
    "method", sorted(m for m in METHODS if m not in set(OPTED_IN) | OWN_POOLING)
)
def test_a_method_that_does_not_opt_in_runs_every_final_block_whole(method, monkeypatch):
    options = {"first_block": 3} if method == "rmma" else {}
    torch.manual_seed(0)
    model = build_model(method, CLASSES, **DEEP, **options)
    seen = _record_queries(monkeypatch, model.backbone)
    images = torch.randn(3, 3, 32, 32)
    model.train().method.loss(model(images).float(), torch.tensor([0, 2, 3]))
    with torch.no_grad():
        model.eval()(images)
    assert seen == {"image": [], "text": []}


def test_block_at_queries_is_the_whole_block_at_those_tokens(tiny_backbone):
    torch.manual_seed(0)
    pool = torch.tensor([2, 8, 5, 0])
    for block, x, mask, queries in (
        (tiny_backbone.image_blocks[3], torch.randn(3, 17, 64), None, 0),
        (
            tiny_backbone.text_blocks[3],
            torch.randn(4, 9, 64),
            tiny_backbone.text_attn_mask(9),
            pool,
        ),
    ):
        outs, grads = [], []
        for run in (
            lambda z: at_queries(block(z, attn_mask=mask), queries),
            lambda z: _block_at_queries(block, z, mask, queries),
        ):
            z = x.clone().requires_grad_(True)
            out = run(z)
            out.square().sum().backward()
            outs.append(out.detach())
            grads.append(z.grad)
        assert outs[1].shape == (x.shape[0], 1, 64)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    # A text query reads only the tokens up to its own position (the causal mask's row).
    x = torch.randn(4, 9, 64)
    later = x.clone()
    later[0, 3:] += 1.0  # after prompt 0's end-of-text (position 2)
    block, mask = tiny_backbone.text_blocks[0], tiny_backbone.text_attn_mask(9)
    with torch.no_grad():
        torch.testing.assert_close(
            _block_at_queries(block, later, mask, pool)[0],
            _block_at_queries(block, x, mask, pool)[0],
            rtol=0,
            atol=0,
        )


def test_other_blocks_run_whole_then_keep_the_queried_tokens(tiny_backbone):
    block = tiny_backbone.image_blocks[0]

    class Wrapped(torch.nn.Module):  # not open_clip's ResidualAttentionBlock: no shortcut is taken
        def __init__(self):
            super().__init__()
            self.inner = block

        def forward(self, x, attn_mask=None):
            return self.inner(x, attn_mask=attn_mask) * 2

    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        got = _run_block(Wrapped(), x, None, batch_first=True, queries=0)
        torch.testing.assert_close(got, 2 * block(x)[:, :1])


def test_heads_pool_the_one_token_left():
    bb = load_backbone("clipadapt-tiny", "none")
    x = torch.randn(4, 9, 64)
    pool = torch.tensor([2, 8, 5, 0])
    with torch.no_grad():
        torch.testing.assert_close(bb.text_head(at_queries(x, pool), pool), bb.text_head(x, pool))
        torch.testing.assert_close(bb.image_head(x[:, :1]), bb.image_head(x))
    assert bb.image_query == 0
    bb.clip.visual.pool_type = "avg"  # the head reads every patch token: no image query
    assert bb.image_query is None
    model = build_model("mma", ["cat", "dog"], backbone=bb, scale=0.5)
    seen = {"image": []}
    real = bb.image_block
    bb.image_block = lambda index, x, queries=None: seen["image"].append(queries) or real(
        index, x, queries
    )
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 32, 32))
    assert seen["image"] == [None] * len(bb.image_blocks)
