"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a small meta-net.

    pi(x)   = meta_net(f(x) / |f(x)|)                    f: image features, meta_net: d -> d/16 -> ReLU -> W
    ctx(x)  = [v_1 + pi(x), ..., v_M + pi(x)]            every context vector gets the same shift
    p(y=c|x) ~ exp(s * cos(f(x), g([SOS] ctx(x) [CLASS_c] . [EOS])))

The text therefore depends on the image: one text pass per (image, class) pair. The official code
loops over the images of a batch; here the [images x classes] prompts run through the text tower as
one batch. The image tower is CLIP's own (its features can be cached); the model's class-text pass is
the frozen one (cached once), and the real text pass runs in `after_heads`, where the image features
are known.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import TextBatch
from ..errors import ClipadaptError
from ..validation import Range
from .base import Paper
from .coop import CoOp, CoOpConfig, official_prompt_learner


@dataclass
class CoCoOpConfig(CoOpConfig):
    """CoOp's context (4 vectors from "a photo of a", as the official config) plus the meta-net's width."""

    option_ranges = {
        "meta_reduction": Range(ge=1),
        "pair_chunk": Range(ge=1),
    }

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    meta_reduction: int = 16  # hidden width of the meta-net = image feature width // 16 (official)
    # Prompts encoded in one text pass at evaluation (images x classes); only memory depends on it.
    pair_chunk: int = 4096


def official_adapter(path: str, **options) -> tuple[CoCoOpConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official CoCoOp checkpoint, under this module's names."""
    state = official_state_dict(path)
    vis_dim, hidden = (
        state["meta_net.linear1.weight"].shape[1],
        state["meta_net.linear1.weight"].shape[0],
    )
    # The context's length is read off the tensor; ctx_init only picks the start, so it is dropped.
    config = CoCoOpConfig(
        n_ctx=state["ctx"].shape[0],
        ctx_init="",
        meta_reduction=max(1, vis_dim // hidden),
        **options,
    )
    return config, state


class CoCoOp(CoOp):
    """Instance-conditioned context: per-image prompts, batched over images x classes."""

    name = "cocoop"
    paper = Paper(
        "Conditional Prompt Learning for Vision-Language Models (CoCoOp)",
        "CVPR 2022",
        "https://arxiv.org/abs/2203.05557",
    )
    official_adapter = staticmethod(official_adapter)
    Config = CoCoOpConfig
    text_depends_on_images = True
    pooled_final_block = (
        False  # the model's own text pass is the frozen one; ours pools in after_heads
    )
    # trainers/cocoop.py + configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml (Dassl's SGD defaults)
    training_defaults = {
        "optimizer": "sgd",
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 10,
        "batch_size": 1,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "precision": "auto",
    }

    def __init__(self, config: CoCoOpConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        vis_dim, ctx_dim = backbone.embed_dim, backbone.text_width
        if vis_dim // config.meta_reduction < 1:
            raise ClipadaptError(
                f"cocoop's meta_reduction {config.meta_reduction} leaves no hidden unit "
                f"for image features of width {vis_dim}"
            )
        hidden = vis_dim // config.meta_reduction
        self.meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(vis_dim, hidden)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("linear2", nn.Linear(hidden, ctx_dim)),
                ]
            )
        )
        self._class_prompts: TextBatch | None = None

    def begin_forward(self) -> None:
        """Forget the previous pass's class prompts."""
        self._class_prompts = None

    def first_active_blocks(self, backbone) -> tuple[int, int]:
        """Both towers as the model sees them are CLIP's own: the learned text pass is in after_heads."""
        return len(backbone.image_blocks), len(backbone.text_blocks)

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Keep the class prompts' embeddings; the model encodes them frozen (cached), we per image."""
        self._class_prompts = batch
        return batch

    def context(self, img_f: torch.Tensor | None) -> torch.Tensor:
        """Context per image [images, n_ctx, width] (the unshifted context [1, n, w] without images)."""
        if img_f is None:
            return self.ctx.unsqueeze(0)
        bias = self.meta_net(
            F.normalize(img_f.float(), dim=-1)
        )  # the official meta-net reads unit features
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def class_text(self, backbone, ctx: torch.Tensor) -> torch.Tensor:
        """Text features [groups, classes, dim] of the class prompts with each group's context."""
        batch = self._class_prompts
        emb, pool = batch.embeddings, batch.pool_index
        groups, classes, n = ctx.shape[0], emb.shape[0], self.n_ctx
        ctx = ctx.to(emb.dtype).unsqueeze(1).expand(-1, classes, -1, -1)
        prompts = torch.cat(
            [
                emb[:, :1].expand(groups, -1, -1, -1),
                ctx,
                emb[:, 1 + n :].expand(groups, -1, -1, -1),
            ],
            dim=2,
        )
        flat = TextBatch(prompts.reshape(groups * classes, *prompts.shape[2:]), pool.repeat(groups))
        x = backbone.text_stem(flat)
        last = len(backbone.text_blocks) - 1
        for index in range(last + 1):
            # The head reads the end-of-text token only: the last block runs there (same numbers).
            x = backbone.text_block(index, x, flat.pool_index if index == last else None)
        return backbone.text_head(x, flat.pool_index).view(groups, classes, -1)

    def after_heads(self, backbone, img_f, txt_f):
        """Replace the frozen class text by the per-image text features [images, classes, dim]."""
        if self._class_prompts is None:
            return img_f, txt_f
        ctx = self.context(img_f)
        if img_f is None:  # class text alone (no image to condition on): the unshifted context
            return img_f, self.class_text(backbone, ctx)[0]
        if torch.is_grad_enabled():
            return img_f, self.class_text(backbone, ctx)
        per_pass = max(1, self.config.pair_chunk // self._class_prompts.embeddings.shape[0])
        return img_f, torch.cat(
            [
                self.class_text(backbone, ctx[i : i + per_pass])
                for i in range(0, ctx.shape[0], per_pass)
            ]
        )

    def logits(self, img_f, txt_f, logit_scale):
        """Each image against its own class prompts ([images, classes, dim]; [classes, dim]: shared)."""
        if txt_f.dim() == 2:
            return super().logits(img_f, txt_f, logit_scale)
        return logit_scale * torch.einsum(
            "bd,bcd->bc", F.normalize(img_f, dim=-1), F.normalize(txt_f, dim=-1)
        )


def official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The learned tensors of an official CoCoOp checkpoint (Dassl saves the prompt_learner's state dict:
    ctx, meta_net.linear{1,2}.{weight,bias}, and the token_prefix/suffix buffers its load_model drops)."""
    return official_prompt_learner(
        path,
        "CoCoOp",
        (
            "meta_net.linear1.weight",
            "meta_net.linear1.bias",
            "meta_net.linear2.weight",
            "meta_net.linear2.bias",
        ),
    )
