"""MMA++ (Yang et al., T-PAMI 2026): MMA's adapters, trained with α-consistency and evaluated at a
smaller scale. Follows the official code (ZjjConan/VLM-MMApp, trainers/mmadapter_pp.py):

    y_l(s) = s * up_l^m( drop( shared_l( down_l^m( ln_1(x_l) ) ) ) )     MMA's adapter, dropout on the shared output
    training:   logits from s = train_scale, plus, without gradient, a pass at s' ~ U[0, train_scale)
                L = CE - reg_weight * (mean_c cos(t_c, t'_c) + mean_b cos(i_b, i'_b))
    evaluation: s = test_scale, text features averaged over each class's prompts

There is no gradient rescaling (MMA's GradientScaleLayer is gone in MMA++). The drawn-scale pass
forks from the main one at the input of the first adapted block: the frozen blocks below it are
the same at any scale, so they run once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone, at_queries
from ..errors import ClipadaptError
from ..validation import Range
from .base import Method, MethodConfig, Paper
from .mma import MMA, official_config, official_state_dict


@dataclass
class MMAPPConfig(MethodConfig):
    """MMA's adapter structure plus MMA++'s two scales, consistency weight and dropout."""

    option_ranges = {
        "adapter_start": Range(ge=1),
        "adapter_end": Range(ge=1),
        "adapter_dim": Range(ge=1),
    }

    template: str | None = "a photo of a {}."
    adapter_start: int | None = (
        None  # None: the top two thirds of the blocks (5 of 12 for ViT-B/16)
    )
    adapter_end: int | None = None
    adapter_dim: int = 32
    dropout: float = (
        0.1  # on the shared layer's output (0.2 in the official hand-crafted-template config)
    )
    train_scale: float = 0.01  # α in training
    test_scale: float = 0.0065  # α at evaluation (α-decoupling)
    reg_weight: float = 2.5  # weight of the α-consistency term


def init_like_official_pp(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) weights; biases as nn.Linear's default, which the official MMA++ keeps."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            bound = 1 / math.sqrt(m.in_features)
            nn.init.uniform_(m.bias, -bound, bound)


def official_adapter(
    path: str,
    train_scale: float = MMAPPConfig.train_scale,
    test_scale: float = MMAPPConfig.test_scale,
    reg_weight: float = MMAPPConfig.reg_weight,
    dropout: float = MMAPPConfig.dropout,
) -> tuple[MMAPPConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official MMA++ checkpoint; it saves MMA's keys (its dropout has no
    parameters), so the scales, weight and dropout it was trained with are given here."""
    state = official_state_dict(path)
    blocks = official_config(state, path=path)
    config = MMAPPConfig(
        adapter_start=blocks.adapter_start,
        adapter_end=blocks.adapter_end,
        adapter_dim=blocks.adapter_dim,
        dropout=dropout,
        train_scale=train_scale,
        test_scale=test_scale,
        reg_weight=reg_weight,
    )
    return config, state


class MMAPP(MMA):
    """MMA's adapters with α-consistency in training and α-decoupling at evaluation."""

    name = "mma_pp"
    paper = Paper(
        "MMA++, the journal extension of MMA",
        "T-PAMI 2026",
        "https://github.com/ZjjConan/VLM-MMApp",
    )
    official_adapter = staticmethod(official_adapter)
    Config = MMAPPConfig
    off_options = {"test_scale": 0.0}  # the evaluation scale α
    prompt_sets = "draw"
    training_defaults = {
        "optimizer": "sgd",
        "lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 50,
        "batch_size": 16,
        "warmup_epochs": 0,
        "precision": "auto",
    }

    def __init__(self, config: MMAPPConfig, backbone: Backbone, classnames: list[str]):
        if not 0 <= config.dropout < 1:
            raise ClipadaptError(f"mma_pp: dropout must be in [0, 1), got {config.dropout}")
        for key in ("train_scale", "test_scale", "reg_weight"):
            if getattr(config, key) < 0:
                raise ClipadaptError(f"mma_pp: {key} must be >= 0, got {getattr(config, key)}")
        super().__init__(config, backbone, classnames)
        for shared in self.shared_adapter.values():
            shared.append(
                nn.Dropout(config.dropout)
            )  # no parameters: the official state dict keys still fit
        init_like_official_pp(self)
        self._pool_index: torch.Tensor | None = None
        self.drawn_scale: float | None = None
        self._drawn: dict[str, torch.Tensor | None] | None = None
        self._drawn_features: dict[str, torch.Tensor | None] = {}
        self._features: dict[str, torch.Tensor | None] = {}

    # ---- scales -------------------------------------------------------------------------------
    def scale(self) -> float:
        """The fusion scale of the main pass: train_scale in training, test_scale at evaluation."""
        return self.config.train_scale if self.training else self.config.test_scale

    def draw_scale(self) -> float:
        """A scale drawn uniformly from [0, train_scale) with the run's generator."""
        return float(torch.rand((), generator=self.draws)) * self.config.train_scale

    def residual(
        self, tower: str, index: int, block: nn.Module, x: torch.Tensor, scale: float, queries=None
    ):
        """s * adapter(ln_1(x)) for block `index`: MMA's adapter without its gradient rescaling; at the
        query positions only when given."""
        if scale == 0:
            return 0.0
        down = self.bottleneck(tower, index, block.ln_1(at_queries(x, queries)))
        shared = self.shared_adapter[str(index + 1)]
        dropout = shared[-1]
        if queries is None or not (dropout.training and dropout.p > 0):
            return self.adapter_output(tower, index, down) * scale
        # The dropout noise is drawn for every token, as the whole block draws it, and read at the
        # queries: the same random stream, so the same numbers as the whole block for a seed.
        hidden = shared[:-1](down)
        noise = F.dropout(
            torch.ones(
                x.shape[0], x.shape[1], hidden.shape[-1], dtype=hidden.dtype, device=hidden.device
            ),
            dropout.p,
        )
        up = (self.visual_adapter if tower == "image" else self.text_adapter)[str(index + 1)].up
        return up(hidden * at_queries(noise, queries)) * scale

    def adapt(self, tower, index, block, x, queries=None):
        """The main pass's residual, at the current scale (at the query positions only, when given)."""
        return self.residual(tower, index, block, x, self.scale(), queries)

    # ---- hooks --------------------------------------------------------------------------------
    def begin_forward(self) -> None:
        """Forget the previous pass's drawn-scale stream and features."""
        self._drawn = None
        self._drawn_features, self._features = {}, {}

    def prompt_embeddings(self, batch):
        """Remember where prompts are pooled, for the drawn-scale text head."""
        self._pool_index = batch.pool_index
        return batch

    def _drawn_block(
        self, tower: str, index: int, backbone: Backbone, x: torch.Tensor | None, queries=None
    ):
        blocks = backbone.image_blocks if tower == "image" else backbone.text_blocks
        if x is None or index >= len(blocks):
            return x
        out = (
            backbone.image_block(index, x, queries)
            if tower == "image"
            else backbone.text_block(index, x, queries)
        )
        if self.is_adapted(index):
            out = out + self.residual(tower, index, blocks[index], x, self.drawn_scale, queries)
        return out

    def step(self, index, backbone, img, txt, queries=None):
        """MMA's block; while training, the drawn-scale stream runs beside it from the first adapted block."""
        if index + 1 == self.start and self.training and self.config.reg_weight > 0:
            self.drawn_scale = self.draw_scale()
            self._drawn = {
                "image": None if img is None else img.detach(),
                "text": None if txt is None else txt.detach(),
            }
        if self._drawn is not None:
            with torch.no_grad():
                for tower in ("image", "text"):
                    self._drawn[tower] = self._drawn_block(
                        tower, index, backbone, self._drawn[tower], (queries or {}).get(tower)
                    )
        return super().step(index, backbone, img, txt, queries)

    def after_heads(self, backbone, img_f, txt_f):
        """Final features of the drawn-scale stream, kept with the main ones for the loss."""
        if self._drawn is not None:
            with torch.no_grad():
                image, text = self._drawn["image"], self._drawn["text"]
                self._drawn_features = {
                    "image": None if image is None else backbone.image_head(image),
                    "text": None if text is None else backbone.text_head(text, self._pool_index),
                }
            self._features = {"image": img_f, "text": txt_f}
        return img_f, txt_f

    def consistency(self) -> dict[str, torch.Tensor]:
        """Mean cosine between each tower's features at train_scale and at the drawn scale."""
        out = {}
        for tower in ("text", "image"):
            drawn, main = self._drawn_features.get(tower), self._features.get(tower)
            if drawn is not None and main is not None:
                out[tower] = F.cosine_similarity(main.float(), drawn.float(), dim=-1).mean()
        return out

    def loss(self, logits, labels):
        """Cross-entropy - reg_weight * (cos_text + cos_image), as the official code."""
        total, parts = Method.loss(self, logits, labels)
        for tower, cos in self.consistency().items():
            total = total - self.config.reg_weight * cos
            parts[f"cos_{tower}"] = cos.detach()
        if self.drawn_scale is not None and self._drawn_features:
            parts["drawn_scale"] = self.drawn_scale
        return total, parts
