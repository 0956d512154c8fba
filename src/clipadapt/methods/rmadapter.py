"""RMAdapter (arXiv 2512.06811): MMA plus a reconstruction branch and a consistency loss.

At each adapted block l of each tower, with u = ln_1(x_l) the adapter's input:

    h   = ReLU(W_down u + b_down)                      shared by both branches (share="down")
    y   = s * W_up shared_l(h)                         adaptation branch, as MMA
    û   = head(h)                                      reconstruction branch: Linear, ReLU, Linear
    L_rec^m = mean over blocks of mean over real tokens ||u - û||²   (text: up to end-of-text)

and on the final features (L2-normalised) of the adapted (x_a, w_a) and frozen (x, w) model:

    L_con = λ3 mean_i Σ_d |x_a - x| + λ4 mean_c Σ_d |w_a - w|      (consistency: l1, the paper's)
          = λ3 mean_i (1 - cos(x_a, x)) + λ4 mean_c (1 - cos(w_a, w))   (consistency: cosine)
          = λ3 KL(softmax(τ x W^T) || softmax(τ x_a W_a^T))       (consistency: kl; λ4 unused)
    L     = CE + λ1 L_rec^V + λ2 L_rec^T + L_con

The reconstruction loss is computed at each block (no decoder through the network), and its
gradient reaches the block input, hence the adapters of the blocks below (the target u is a
constant); `recon_detach: true` stops it there, so that each block's loss trains only its own branch.
The frozen features come from the model's frozen-work caches (clipadapt.frozen_cache): the class
prompts' once per prompt set, the training images' once per run when augmentation is off. Without
a cached one (augmented images) the frozen stream forks from the adapted one at the first adapted
block (the blocks below it are shared) and runs beside it without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone
from ..errors import ClipadaptError
from ..validation import Range
from .base import Paper
from .mma import MMA, MMAConfig, init_adapter_weights

RECON_TOWERS = ("both", "vision", "text", "none")
SHARING = ("down", "up", "none")
CONSISTENCY = ("l1", "cosine", "kl", "none")


@dataclass
class RMAdapterConfig(MMAConfig):
    """MMA's settings plus the reconstruction branch, its ablation switches and the loss weights."""

    option_ranges = {
        "head_hidden": Range(ge=1),
        "lambda_rec_vision": Range(ge=0),
        "lambda_rec_text": Range(ge=0),
        "lambda_con_vision": Range(ge=0),
        "lambda_con_text": Range(ge=0),
    }

    recon_towers: str = "both"  # which towers reconstruct: both | vision | text | none
    share: str = "down"  # what the branches share: down | up | none
    head_layers: int = 2  # reconstruction head depth: 1, 2 or 3 Linear layers
    head_hidden: int | None = None  # width between head layers; None: adapter_dim
    recon_target: str = (
        "ln_1"  # what is reconstructed: ln_1 (the adapter's input) | input (the block input)
    )
    recon_detach: bool = (
        False  # True: the reconstruction branch reads the block input as a constant
    )
    lambda_rec_vision: float = 1.0  # λ1
    lambda_rec_text: float = 1.0  # λ2
    # λ3, λ4: PromptSRC's L1 weights (10 image, 25 text on a mean over dims) on our sum over the 512
    # dims of ViT-B/16: 10/512 and 25/512.
    lambda_con_vision: float = 0.0195  # λ3
    lambda_con_text: float = 0.0488  # λ4
    # The consistency distance: l1 (the paper) | cosine | kl | none (no consistency term). The seed's
    # "next checks" propose cosine and KL; docs/methods.md gives each one's equation.
    consistency: str = "l1"


def _head(
    in_dim: int, hidden: int, out_dim: int, layers: int, with_last: bool = True
) -> nn.Sequential:
    dims = [in_dim] + [hidden] * (layers - 1)
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        mods += [nn.Linear(a, b), nn.ReLU()]
    if with_last:
        mods.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*mods)


class RMAdapter(MMA):
    """MMA with a reconstruction branch sharing the down-projection, and L1 consistency."""

    name = "rmadapter"
    paper = Paper(
        "RMAdapter: reconstruction-based multi-modal adapter",
        "arXiv 2512.06811",
        "https://arxiv.org/abs/2512.06811",
    )
    Config = RMAdapterConfig
    compares_with_frozen = True
    training_defaults = dict(MMA.training_defaults)

    def __init__(self, config: RMAdapterConfig, backbone: Backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        if config.recon_towers not in RECON_TOWERS:
            raise ClipadaptError(
                f"recon_towers must be one of {RECON_TOWERS}, got '{config.recon_towers}'"
            )
        if config.share not in SHARING:
            raise ClipadaptError(f"share must be one of {SHARING}, got '{config.share}'")
        if config.head_layers not in (1, 2, 3):
            raise ClipadaptError(f"head_layers must be 1, 2 or 3, got {config.head_layers}")
        if config.consistency not in CONSISTENCY:
            raise ClipadaptError(
                f"consistency must be one of {CONSISTENCY}, got '{config.consistency}'"
            )
        if config.recon_target not in ("ln_1", "input"):
            raise ClipadaptError(
                f"recon_target must be 'ln_1' or 'input', got '{config.recon_target}'"
            )
        r = config.adapter_dim
        hidden = config.head_hidden or r
        if config.share == "up" and config.head_layers > 1 and hidden != r:
            raise ClipadaptError(
                "share='up' needs head_hidden == adapter_dim (the shared up-projection reads r)"
            )
        towers = {"both": ("image", "text"), "vision": ("image",), "text": ("text",), "none": ()}[
            config.recon_towers
        ]
        self.recon_towers = towers
        widths = {"image": backbone.image_width, "text": backbone.text_width}
        self.recon_down = nn.ModuleDict()
        self.recon_head = nn.ModuleDict()
        for tower in towers:
            adapters = self.visual_adapter if tower == "image" else self.text_adapter
            for b in adapters:
                key = f"{tower}_{b}"
                if config.share != "down":
                    self.recon_down[key] = nn.Sequential(nn.Linear(widths[tower], r), nn.ReLU())
                # share="up": the head ends in the adaptation branch's up-projection, applied in adapt()
                self.recon_head[key] = _head(
                    r, hidden, widths[tower], config.head_layers, with_last=config.share != "up"
                )
        init_adapter_weights(self.recon_head)
        init_adapter_weights(self.recon_down)
        self._rec_losses: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
        self._frozen: dict[str, torch.Tensor | None] = {"image": None, "text": None}
        self._frozen_features: dict[str, torch.Tensor | None] = {"image": None, "text": None}
        self._pool_index: torch.Tensor | None = None

    def _needs_frozen(self, tower: str) -> bool:
        cfg = self.config
        if cfg.consistency == "none":
            return False
        if (
            cfg.consistency == "kl"
        ):  # one term on the class distributions: both towers' frozen features
            return self.training and cfg.lambda_con_vision > 0
        weight = cfg.lambda_con_vision if tower == "image" else cfg.lambda_con_text
        return self.training and weight > 0

    def logits(self, img_f, txt_f, logit_scale):
        """MMA's logits; the scale is kept for the KL consistency's frozen logits."""
        self._logit_scale = logit_scale
        return super().logits(img_f, txt_f, logit_scale)

    def begin_forward(self) -> None:
        """Clear the reconstruction losses and frozen features of the previous pass."""
        self._rec_losses = {"image": [], "text": []}
        self._frozen = {"image": None, "text": None}
        self._frozen_features = {"image": None, "text": None}

    def prompt_embeddings(self, batch):
        """Remember where prompts are pooled, for the text reconstruction mask and the frozen text head."""
        self._pool_index = batch.pool_index
        return batch

    def adapt(self, tower, index, block, x, queries=None):
        """MMA's residual (at the query positions only, when given), plus this block's local
        reconstruction loss while training, over every token of the block input."""
        y = super().adapt(tower, index, block, x, queries)
        key = f"{tower}_{index + 1}"
        if self.training and key in self.recon_head:
            if self.config.recon_detach:  # trains only this block's branch
                x = x.detach()
            u = block.ln_1(x)
            h = (
                self.bottleneck(tower, index, u)
                if self.config.share == "down"
                else self.recon_down[key](u)
            )
            target = (u if self.config.recon_target == "ln_1" else x).detach()
            recon = self.recon_head[key](h)
            if self.config.share == "up":
                recon = (self.visual_adapter if tower == "image" else self.text_adapter)[
                    str(index + 1)
                ].up(recon)
            # Mean over the real tokens of the mean square over the width: every token has the same
            # width, so one fused mean square error over the real tokens (one operator forward and
            # backward instead of sub, pow, mean and theirs).
            if tower == "text":  # tokens after a prompt's end-of-text are padding
                real = (
                    torch.arange(recon.shape[1], device=recon.device)[None, :]
                    <= self._pool_index[:, None]
                )
                recon, target = recon[real], target[real]
            self._rec_losses[tower].append(F.mse_loss(recon.float(), target.float()))
        return y

    def step(self, index, backbone, img, txt, queries=None):
        """Adapted blocks as MMA; without cached frozen features the frozen stream forks at the first adapted block."""
        if index + 1 == self.start:
            for tower, x in (("image", img), ("text", txt)):
                if x is not None and self._needs_frozen(tower) and self.given_frozen[tower] is None:
                    self._frozen[tower] = x.detach()
        queries = queries or {}
        with torch.no_grad():
            if self._frozen["image"] is not None and index < len(backbone.image_blocks):
                self._frozen["image"] = backbone.image_block(
                    index, self._frozen["image"], queries.get("image")
                )
            if self._frozen["text"] is not None and index < len(backbone.text_blocks):
                self._frozen["text"] = backbone.text_block(
                    index, self._frozen["text"], queries.get("text")
                )
        return super().step(index, backbone, img, txt, queries)

    def after_heads(self, backbone, img_f, txt_f):
        """Frozen final features for the consistency loss: cached, or the head of the forked stream."""
        with torch.no_grad():
            for tower, feats in (("image", img_f), ("text", txt_f)):
                if feats is None or not self._needs_frozen(tower):
                    continue
                stream = self._frozen[tower]
                if stream is None:
                    self._frozen_features[tower] = self.given_frozen[tower]
                elif tower == "image":
                    self._frozen_features[tower] = backbone.image_head(stream)
                else:
                    self._frozen_features[tower] = backbone.text_head(stream, self._pool_index)
        self._adapted_features = {"image": img_f, "text": txt_f}
        return img_f, txt_f

    def loss(self, logits, labels):
        """Cross-entropy + λ1 L_rec^V + λ2 L_rec^T + λ3 L_con^V + λ4 L_con^T."""
        cfg = self.config
        total, parts = super().loss(logits, labels)
        terms = {
            "rec_vision": (cfg.lambda_rec_vision, self._rec_losses["image"]),
            "rec_text": (cfg.lambda_rec_text, self._rec_losses["text"]),
        }
        for name, (weight, losses) in terms.items():
            if losses and weight > 0:
                value = torch.stack(losses).mean()
                total = total + weight * value
                parts[name] = value.detach()
        if cfg.consistency == "kl":
            frozen_img, frozen_txt = self._frozen_features["image"], self._frozen_features["text"]
            if frozen_img is not None and frozen_txt is not None and cfg.lambda_con_vision > 0:
                # KL(p_frozen || p_adapted) of the image's distribution over the classes, as PromptSRC's
                # logit consistency; frozen logits at the same temperature as the adapted ones.
                frozen_logits = self._logit_scale.detach().float() * (
                    F.normalize(frozen_img.float(), dim=-1)
                    @ F.normalize(frozen_txt.float(), dim=-1).t()
                )
                value = F.kl_div(
                    logits.float().log_softmax(dim=-1),
                    frozen_logits.log_softmax(dim=-1),
                    reduction="batchmean",
                    log_target=True,
                )
                total = total + cfg.lambda_con_vision * value
                parts["con_kl"] = value.detach()
            return total, parts
        for tower, weight in (("image", cfg.lambda_con_vision), ("text", cfg.lambda_con_text)):
            frozen = self._frozen_features[tower]
            if frozen is None or weight <= 0:
                continue
            adapted = F.normalize(self._adapted_features[tower].float(), dim=-1)
            frozen = F.normalize(frozen.float(), dim=-1)
            if cfg.consistency == "cosine":  # 1 - cos, averaged over the images (classes)
                value = (1 - (adapted * frozen).sum(dim=-1)).mean()
            else:  # L1 over the dimensions, averaged over the images (classes)
                value = (adapted - frozen).abs().sum(dim=-1).mean()
            total = total + weight * value
            parts[f"con_{'vision' if tower == 'image' else 'text'}"] = value.detach()
        return total, parts
