"""MMA of arXiv 2409.02958: masked multi-head attention over the output embeddings of both towers.

For an image embedding f_I and a class prompt embedding f_T (width D), with a shared
down-projection P_d: D -> D/4, attention with 4 heads, up-projection P_u: D/4 -> D and residual
weight λ:

    z       = [P_d f_I ; P_d f_T]                      a two-token sequence: the image and ONE prompt
    z'      = MHA(z, z, z)                             the mask lets the image see only its paired prompt
    f_I'    = f_I + λ P_u z'_0,   f_T' = f_T + λ P_u z'_1
    logit_c = τ cos(f_I'(c), f_T,c'(c))

The paper pairs an image with its labelled prompt during training and masks every other prompt.
At test time the label is unknown, so every image is paired with every class prompt in turn and
scored by the cosine of the pair (`logits`); training uses the same pairwise scoring, so training
and testing compute one function, and an image's score never depends on other images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, MethodConfig


@dataclass
class MMAAttnConfig(MethodConfig):
    """Width reduction, heads and residual weight."""

    reduction: int = 4
    heads: int = 4
    residual: float = 0.1  # λ
    pair_chunk: int = 4096  # image-prompt pairs scored at once (memory only)


class MMAAttn(Method):
    """Attention adapter on output embeddings, scoring each image-prompt pair."""

    name = "mma_attn"
    Config = MMAAttnConfig
    output_only = True
    prompt_sets = "mean"  # frozen text: the ensemble mean is computed once
    training_defaults = {"optimizer": "adam", "lr": 0.005, "weight_decay": 0.0, "epochs": 5, "batch_size": 256,
                         "warmup_epochs": 0, "precision": "auto", "augment": False}

    def __init__(self, config: MMAAttnConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        d = backbone.embed_dim
        inner = d // config.reduction
        self.down = nn.Linear(d, inner)
        self.attn = nn.MultiheadAttention(inner, config.heads, batch_first=True)
        self.up = nn.Linear(inner, d)

    def adapt_pairs(self, img_f: torch.Tensor, txt_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted (image, prompt) embeddings of P pairs given as [P, D] and [P, D]."""
        z = self.down(torch.stack([img_f, txt_f], dim=1))  # [P, 2, D/4]
        z, _ = self.attn(z, z, z, need_weights=False)
        delta = self.up(z)
        lam = self.config.residual
        return img_f + lam * delta[:, 0], txt_f + lam * delta[:, 1]

    def logits(self, img_f, txt_f, logit_scale):
        """Score every image against every class prompt, one pair at a time."""
        if self.config.residual == 0:
            return super().logits(img_f, txt_f, logit_scale)
        b, c = img_f.shape[0], txt_f.shape[0]
        img_rep = img_f.unsqueeze(1).expand(b, c, -1).reshape(b * c, -1)
        txt_rep = txt_f.unsqueeze(0).expand(b, c, -1).reshape(b * c, -1)
        scores = []
        for start in range(0, b * c, self.config.pair_chunk):
            i, t = self.adapt_pairs(img_rep[start:start + self.config.pair_chunk],
                                    txt_rep[start:start + self.config.pair_chunk])
            scores.append((F.normalize(i, dim=-1) * F.normalize(t, dim=-1)).sum(-1))
        return logit_scale * torch.cat(scores).view(b, c)
