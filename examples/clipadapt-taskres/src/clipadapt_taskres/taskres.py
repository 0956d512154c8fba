"""Task Residual tuning (TaskRes, Yu et al., CVPR 2023), following geekyutao/TaskRes.

The zero-shot classifier is kept as a frozen base and a learned residual is added to it:

    t'_c = t_c + α x_c,    x_c ∈ R^D initialised to 0,    logits = s · cos(f, t'_c)

where t_c is frozen CLIP's text feature of class c (before normalisation) and f the frozen image
feature. Only x trains. The residual belongs to a class *name*: scoring classes that were never
trained on (novel classes, ImageNet-A/R's subsets) uses x_c = 0 for them, i.e. zero-shot CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipadapt import Method, MethodConfig, Paper


@dataclass
class TaskResConfig(MethodConfig):
    """α, the residual's scale (the official RESIDUAL_SCALE: 0.5, 1.0 for Flowers102)."""

    residual_scale: float = 0.5


class TaskRes(Method):
    """A learned per-class residual on frozen CLIP's text classifier."""

    name = "taskres"
    Config = TaskResConfig
    paper = Paper(
        "Task Residual for Tuning Vision-Language Models",
        "CVPR 2023",
        "https://arxiv.org/abs/2211.10277",
    )
    off_options = {"residual_scale": 0.0}  # no residual: frozen CLIP's classifier
    output_only = True  # image and text towers stay CLIP's: their features are computed once
    prompt_sets = None  # one prompt a class, as the official code outside ImageNet
    # configs/trainers/TaskRes/adam_lr2e-3_B256_ep200.yaml (8 and 16 shots) with Dassl's defaults
    training_defaults = {
        "optimizer": "adam",
        "lr": 0.002,
        "weight_decay": 5e-4,
        "epochs": 200,
        "batch_size": 256,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "schedule": "cosine",
    }

    def __init__(self, config: TaskResConfig, backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        self.trained_classes = list(classnames)
        self.residuals = nn.Parameter(torch.zeros(len(classnames), backbone.embed_dim))
        self.set_classes(classnames)

    def set_classes(self, classnames: list[str], trained_on: bool | None = None) -> None:
        """Map each class scored next to its residual row (-1: a class never trained on)."""
        row = {name: i for i, name in enumerate(self.trained_classes)}
        self.class_rows = torch.tensor([row.get(name, -1) for name in classnames])

    def after_heads(self, backbone, img_f, txt_f):
        """t + α x for the classes trained on; the frozen t for the others."""
        if txt_f is None or self.config.residual_scale == 0:
            return img_f, txt_f
        rows = self.class_rows.to(txt_f.device)
        known = rows >= 0
        residual = torch.zeros_like(txt_f)
        residual[known] = self.residuals[rows[known]].to(txt_f.dtype)
        return img_f, txt_f + self.config.residual_scale * residual
