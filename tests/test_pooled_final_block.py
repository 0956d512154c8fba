"""The final block run at the pooled tokens only (Method.pooled_final_block): which methods opt in,
the others untouched, and the backbone's block at queries."""

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
OPTED_IN = {"mma", "mma_pp", "rmadapter", "coop", "kgcoop"}


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


# The pooled final block gives the logits, losses and gradients of the whole block (training and
# evaluation, from the stems and with the prefix caches) for every method that opts in: the "pooled
# final block = whole block" invariant of clipadapt.testing.check_method (tests/test_conformance.py).


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
