"""MMRL (Guo et al., CVPR 2025): a shared space of representation tokens projected into both towers.
Follows the official code (yunncheng/MMRL, trainers/mmrl.py and clip/model_mmrl.py):

    R in R^{K x d_r}                                  K = 5 tokens, d_r = 512, init N(0, 0.02)
    R_l^v = W_l^v R + b_l^v,  R_l^t = W_l^t R + b_l^t  one pair of linear maps per block l in rep_layers
    image: [cls, R_l^v, patches]   text: [sos, R_l^t, words...]   inserted before the first rep block,
                                                                  replaced before every later one
    f_c = ln_post(x_cls) P          f_r = mean_k ln_post(x_{R,k}) P_r    (P frozen, P_r trained)
    logits_c = s cos(f_c, t),  logits_r = s cos(f_r, t),  fusion = a logits_c + (1 - a) logits_r
    L = a CE(logits_c) + (1 - a) CE(logits_r) + lam [(1 - cos(f_c, f_c^0)) + (1 - cos(t, t^0))]

f^0 and t^0 are the frozen CLIP's features of the same images and prompts. At inference the fused
logits score the classes trained on, the class logits alone any other classes (novel classes,
cross-dataset and domain-shifted targets); see `set_classes`.

The inserted text tokens lengthen the sequence: the backbone's causal mask grows with it, and the
tokens are removed again after the last text block, so CLIP's own pooling index stays right
(it points at the same end-of-text token the official code reaches with `eot + K`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone, TextBatch
from ..errors import ClipadaptError
from ..official_checkpoints import read_state_dict
from ..validation import Range
from .base import Method, MethodConfig, Paper

INFERENCE_MODES = ("auto", "fusion", "class")
# The official per-dataset settings (trainers/config.py), applied by its train.py after the config
# file for base-to-novel and few-shot; its cross-dataset scripts pass REG_WEIGHT 0.2 and REP_DIM 512
# on the command line instead, which win over this table.
OFFICIAL_REG_WEIGHT = {
    "stanford_cars": 7.0,
    "fgvc_aircraft": 6.0,
    "sun397": 6.0,
    "dtd": 6.0,
    "food101": 5.0,
    "oxford_flowers": 4.0,
    "ucf101": 3.0,
    "imagenet": 0.5,
    "caltech101": 0.5,
    "oxford_pets": 0.2,
    "eurosat": 0.01,
}
OFFICIAL_REP_DIM = {"eurosat": 2048}


def official_overrides(dataset: str, protocol: str) -> dict:
    """The method options the official code sets for one dataset under one protocol."""
    if protocol not in ("base2novel", "fewshot"):
        return {}
    out = {}
    if dataset in OFFICIAL_REG_WEIGHT:
        out["reg_weight"] = OFFICIAL_REG_WEIGHT[dataset]
    if dataset in OFFICIAL_REP_DIM:
        out["rep_dim"] = OFFICIAL_REP_DIM[dataset]
    return out


@dataclass
class MMRLConfig(MethodConfig):
    """MMRL's settings (official names: N_REP_TOKENS, REP_DIM, REP_LAYERS, ALPHA, REG_WEIGHT)."""

    option_ranges = {
        "alpha": Range(ge=0),
    }

    template: str | None = None  # the dataset's template, as the official CUSTOM_TEMPLATES
    n_rep_tokens: int = 5
    rep_dim: int = 512
    rep_layers: list[int] | None = None  # 1-based blocks; None: blocks 6..12 of 12 (the top 7/12)
    alpha: float = 0.7
    reg_weight: float = 1.0
    inference: str = (
        "auto"  # auto: fusion on trained-on classes, class logits elsewhere; or fusion | class
    )


def rep_block_range(config: MMRLConfig, depth: int) -> list[int]:
    """The 1-based blocks that receive representation tokens, for towers of `depth` blocks."""
    layers = config.rep_layers
    if layers is None:
        start = round(5 * depth / 12) + 1
        layers = list(range(start, depth + 1))
    layers = [int(b) for b in layers]
    if not layers or layers != sorted(set(layers)) or layers[0] < 1 or layers[-1] > depth:
        raise ClipadaptError(f"rep_layers {layers} must be increasing block numbers in 1..{depth}")
    if layers != list(range(layers[0], layers[-1] + 1)):
        # The official code replaces the tokens at every listed block; a gap would leave the
        # previous block's output tokens in place, which its counter logic does not allow for.
        raise ClipadaptError(f"rep_layers {layers} must be consecutive blocks")
    return layers


def _clones(layer: nn.Module, n: int) -> nn.ModuleList:
    # The official code deep-copies one freshly initialised layer: every block starts equal.
    return nn.ModuleList([copy.deepcopy(layer) for _ in range(n)])


def official_adapter(
    path: str, last_block: int = 12, **options
) -> tuple[MMRLConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official MMRL checkpoint (options: alpha, inference, ...)."""
    state = official_state_dict(path)
    return official_config(state, last_block, **options), state


class MMRL(Method):
    """Multi-Modal Representation Learning: shared representation tokens in the upper blocks."""

    name = "mmrl"
    paper = Paper(
        "MMRL: Multi-Modal Representation Learning for Vision-Language Models",
        "CVPR 2025",
        "https://arxiv.org/abs/2503.08497",
    )
    official_adapter = staticmethod(official_adapter)
    Config = MMRLConfig
    acts_on_blocks = True
    compares_with_frozen = True
    training_defaults = {
        "optimizer": "adamw",
        "lr": 0.001,
        "weight_decay": 5e-4,
        "epochs": 10,
        "batch_size": 4,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "precision": "auto",
    }

    def __init__(self, config: MMRLConfig, backbone: Backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        if config.inference not in INFERENCE_MODES:
            raise ClipadaptError(
                f"mmrl inference must be one of {INFERENCE_MODES}, got '{config.inference}'"
            )
        if config.n_rep_tokens < 1 or config.rep_dim < 1:
            raise ClipadaptError("mmrl needs n_rep_tokens >= 1 and rep_dim >= 1")
        if not 0.0 <= config.alpha <= 1.0:
            raise ClipadaptError(f"mmrl alpha must lie in [0, 1], got {config.alpha}")
        depth = min(len(backbone.image_blocks), len(backbone.text_blocks))
        self.layers = rep_block_range(config, depth)
        self.n_image_blocks, self.n_text_blocks = (
            len(backbone.image_blocks),
            len(backbone.text_blocks),
        )
        k, d = config.n_rep_tokens, config.rep_dim
        self.rep_tokens = nn.Parameter(torch.empty(k, d).normal_(std=0.02))
        self.rep_to_image = _clones(nn.Linear(d, backbone.image_width), len(self.layers))
        self.rep_to_text = _clones(nn.Linear(d, backbone.text_width), len(self.layers))
        width = backbone.image_width
        self.proj_rep = nn.Parameter(width**-0.5 * torch.randn(width, backbone.embed_dim))
        self.trained_classnames = list(classnames)
        self.fuse = True
        self.begin_forward()

    def first_active_blocks(self, backbone: Backbone) -> tuple[int, int]:
        """The representation tokens join the first rep block (1-based `rep_layers[0]`) of both towers."""
        return self.layers[0] - 1, self.layers[0] - 1

    # ---- which logits score the current classes -------------------------------------------------
    def set_classes(self, classnames: list[str], trained_on: bool | None = None) -> None:
        """Fused logits for classes trained on, class logits alone for any others (as the official test())."""
        self.fuse = (
            list(classnames) == self.trained_classnames if trained_on is None else bool(trained_on)
        )

    def uses_fusion(self) -> bool:
        """Whether logits() returns the fused logits (always while training, as the official forward)."""
        if self.config.inference == "auto":
            return self.fuse or self.training
        return self.config.inference == "fusion"

    # ---- forward --------------------------------------------------------------------------------
    def begin_forward(self) -> None:
        """Clear what one pass leaves for logits() and loss()."""
        self._batch: TextBatch | None = None
        self._img_rep = self._img_rep_f = None
        self._frozen_img = self._frozen_txt = None
        self._frozen_img_f = self._frozen_text_features = None
        self._img_f = self._txt_f = None
        self._class_logits = self._rep_logits = None

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Unchanged prompts; their end-of-text positions are needed by the frozen text head."""
        self._batch = batch
        return batch

    def _insert(self, x: torch.Tensor, tokens: torch.Tensor, first: bool) -> torch.Tensor:
        k = self.config.n_rep_tokens
        tokens = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        rest = x[:, 1:] if first else x[:, 1 + k :]
        return torch.cat([x[:, :1], tokens, rest], dim=1)

    def step(self, index, backbone, img, txt):
        """Insert (first rep block) or replace (later ones) the tokens, run the blocks, strip them at the top."""
        layer, k = index + 1, self.config.n_rep_tokens
        j = self.layers.index(layer) if layer in self.layers else None
        first = layer == self.layers[0]
        if img is not None and index < self.n_image_blocks:
            if first and self.training and self.given_frozen["image"] is None:
                self._frozen_img = img  # the frozen tower's stream is shared up to here
            if j is not None:
                img = self._insert(img, self.rep_to_image[j](self.rep_tokens), first)
            img = backbone.image_block(index, img)
            if self._frozen_img is not None:
                with torch.no_grad():
                    self._frozen_img = backbone.image_block(index, self._frozen_img)
            if index == self.n_image_blocks - 1:
                self._img_rep = img[:, 1 : 1 + k]
                img = torch.cat([img[:, :1], img[:, 1 + k :]], dim=1)
        if txt is not None and index < self.n_text_blocks:
            if first and self.training and self.given_frozen["text"] is None:
                self._frozen_txt = txt
            if j is not None:
                txt = self._insert(txt, self.rep_to_text[j](self.rep_tokens), first)
            txt = backbone.text_block(
                index, txt
            )  # the causal mask is built for the lengthened sequence
            if self._frozen_txt is not None:
                with torch.no_grad():
                    self._frozen_txt = backbone.text_block(index, self._frozen_txt)
            if index == self.n_text_blocks - 1:
                txt = torch.cat([txt[:, :1], txt[:, 1 + k :]], dim=1)
        return img, txt

    def after_heads(self, backbone: Backbone, img_f, txt_f):
        """Representation features of the images; the frozen features the regularizer compares with."""
        if img_f is not None:
            rep = backbone.image_output_norm(self._img_rep).mean(dim=1)
            self._img_rep_f = rep @ self.proj_rep.to(rep.dtype)
            if self._frozen_img is not None:
                with torch.no_grad():
                    self._frozen_img_f = backbone.image_head(self._frozen_img)
            else:
                self._frozen_img_f = self.given_frozen["image"]
        if txt_f is not None and self._frozen_txt is not None:
            with torch.no_grad():
                self._frozen_text_features = backbone.text_head(
                    self._frozen_txt, self._batch.pool_index
                )
        elif txt_f is not None:
            self._frozen_text_features = self.given_frozen["text"]
        self._img_f, self._txt_f = img_f, txt_f
        return img_f, txt_f

    def logits(self, img_f, txt_f, logit_scale):
        """Fused logits a*class + (1-a)*representation on trained-on classes, class logits otherwise."""
        txt_n = F.normalize(txt_f, dim=-1)
        self._class_logits = logit_scale * F.normalize(img_f, dim=-1) @ txt_n.t()
        self._rep_logits = logit_scale * F.normalize(self._img_rep_f, dim=-1) @ txt_n.t()
        if not self.uses_fusion():
            return self._class_logits
        a = self.config.alpha
        return a * self._class_logits + (1 - a) * self._rep_logits

    def loss(self, logits, labels):
        """a*CE(class) + (1-a)*CE(representation) + lam*(cosine distances to the frozen features)."""
        if self._img_f is None or self._frozen_img_f is None or self._frozen_text_features is None:
            raise ClipadaptError(
                "mmrl's loss needs a training forward pass over images and class prompts first"
            )
        a, lam = self.config.alpha, self.config.reg_weight
        ce_class = F.cross_entropy(self._class_logits.float(), labels)
        ce_rep = F.cross_entropy(self._rep_logits.float(), labels)
        reg_img = (
            1 - F.cosine_similarity(self._img_f.float(), self._frozen_img_f.float(), dim=-1).mean()
        )
        reg_txt = (
            1
            - F.cosine_similarity(
                self._txt_f.float(), self._frozen_text_features.float(), dim=-1
            ).mean()
        )
        total = a * ce_class + (1 - a) * ce_rep + lam * (reg_img + reg_txt)
        return total, {
            "ce_class": ce_class.detach(),
            "ce_rep": ce_rep.detach(),
            "reg_image": reg_img.detach(),
            "reg_text": reg_txt.detach(),
        }


# ---- checkpoints of the official code --------------------------------------------------------------
_OFFICIAL_PREFIXES = {
    "representation_learner.compound_rep_tokens_r2vproj.": "rep_to_image.",
    "representation_learner.compound_rep_tokens_r2tproj.": "rep_to_text.",
}
_OFFICIAL_NAMES = {
    "representation_learner.compound_rep_tokens": "rep_tokens",
    "image_encoder.proj_rep": "proj_rep",
}


def official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The trained tensors of a checkpoint saved by the official MMRL code, under this module's names."""
    state = read_state_dict(path, "MMRL")
    out = {}
    for key, value in state.items():
        if key in _OFFICIAL_NAMES:
            out[_OFFICIAL_NAMES[key]] = value
        for prefix, ours in _OFFICIAL_PREFIXES.items():
            if key.startswith(prefix):
                out[ours + key[len(prefix) :]] = value
    if "rep_tokens" not in out or "proj_rep" not in out:
        raise ClipadaptError(
            f"'{path}' has no MMRL weights (representation_learner.compound_rep_tokens, "
            "image_encoder.proj_rep)"
        )
    return out


def official_config(state: dict[str, torch.Tensor], last_block: int = 12, **options) -> MMRLConfig:
    """The MMRLConfig an official state dict fits: tokens and width read off it, blocks ending at `last_block`."""
    n_layers = len({k.split(".")[1] for k in state if k.startswith("rep_to_image.")})
    k, d = state["rep_tokens"].shape
    layers = list(range(last_block - n_layers + 1, last_block + 1))
    return MMRLConfig(n_rep_tokens=int(k), rep_dim=int(d), rep_layers=layers, **options)
