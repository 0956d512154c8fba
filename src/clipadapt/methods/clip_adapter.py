"""CLIP-Adapter (Gao et al. 2021): a residual bottleneck MLP on the image features.

A(f) = ReLU(W_2 ReLU(W_1 f)),  W_1: D -> D/4, W_2: D/4 -> D, no biases
f'   = ρ A(f) + (1 - ρ) f,     ρ = 0.2
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..validation import Range
from .base import Method, MethodConfig, Paper


@dataclass
class CLIPAdapterConfig(MethodConfig):
    """Bottleneck reduction and residual ratio of the paper."""

    option_ranges = {
        "reduction": Range(ge=1),
        "ratio": Range(ge=0, le=1),
    }

    reduction: int = 4
    ratio: float = 0.2


class CLIPAdapter(Method):
    """Residual MLP on the frozen image features; text prompts as CoOp's hand-crafted ones."""

    name = "clip_adapter"
    paper = Paper(
        "CLIP-Adapter: Better Vision-Language Models with Feature Adapters",
        "IJCV 2023",
        "https://arxiv.org/abs/2110.04544",
    )
    Config = CLIPAdapterConfig
    off_options = {"ratio": 0.0}  # no adapted feature mixed in
    output_only = True
    prompt_sets = "mean"  # frozen text: the ensemble mean is computed once
    training_defaults = {
        "optimizer": "sgd",
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 200,
        "batch_size": 32,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "precision": "auto",
        "augment": False,
    }

    def __init__(self, config: CLIPAdapterConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        d = backbone.embed_dim
        self.adapter = nn.Sequential(
            nn.Linear(d, d // config.reduction, bias=False),
            nn.ReLU(),
            nn.Linear(d // config.reduction, d, bias=False),
            nn.ReLU(),
        )

    def after_heads(self, backbone, img_f, txt_f):
        """Mix the adapted image features into the frozen ones with ratio ρ."""
        if img_f is not None and self.config.ratio != 0:
            img_f = self.config.ratio * self.adapter(img_f) + (1 - self.config.ratio) * img_f
        return img_f, txt_f
