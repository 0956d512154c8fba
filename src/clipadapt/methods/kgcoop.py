"""KgCoOp (Yao et al., CVPR 2023): CoOp's context kept near CLIP's hand-crafted class text.

    w_c     = g([SOS] v_1..v_M [CLASS_c] . [EOS]) / |.|     learned class text (CoOp's prompt)
    w_c^clip = g("a photo of a {c}, a type of pet.") / |.|   frozen CLIP, the dataset's hand-crafted prompt
    L = CE(s * cos(f, w), y) + W * L_kg

The official code (trainers/kgcoop.py, CustomCLIP.forward) computes
    L_kg = 1 - mean_c cos(w_c, w_c^clip)          (torch CosineSimilarity, eps 1e-7)
while the paper writes the mean squared Euclidean distance  (1/C) sum_c |w_c - w_c^clip|^2, which
for unit vectors is 2 (1 - cos): twice the code's value. `kg_distance: cosine` (default) is the
code, `kg_distance: l2` the paper. W = 8.0 is what scripts/run.sh passes (TRAINER.COOP.W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ClipadaptError
from ..frozen_cache import frozen_text_features
from ..validation import Range
from .base import Paper
from .coop import CoOp, CoOpConfig, official_prompt_learner

# trainers/kgcoop.py CUSTOM_TEMPLATES, under clipadapt's dataset names. They are CoOp's templates but
# for DTD ("a photo of a {}, a type of texture." instead of "{} texture.").
KNOWLEDGE_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}


@dataclass
class KgCoOpConfig(CoOpConfig):
    """CoOp's context (4 vectors from "a photo of a", as the official script) and the knowledge term."""

    option_ranges = {
        "kg_weight": Range(ge=0),
    }

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    kg_weight: float = 8.0  # W in scripts/run.sh
    kg_distance: Literal["cosine", "l2"] = "cosine"  # cosine: the official code; l2: the paper (2x)
    # Hand-crafted prompt of the frozen text features; None: the dataset's (KNOWLEDGE_TEMPLATES, else
    # the dataset's CoOp template, else "a photo of a {}.")
    knowledge_template: str | None = None


def official_adapter(path: str, **options) -> tuple[KgCoOpConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official KgCoOp checkpoint, under this module's names."""
    state = official_state_dict(path)
    return KgCoOpConfig(n_ctx=state["ctx"].shape[0], ctx_init="", **options), state


class KgCoOp(CoOp):
    """CoOp plus the distance of its class text to CLIP's hand-crafted class text."""

    name = "kgcoop"
    paper = Paper(
        "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization (KgCoOp)",
        "CVPR 2023",
        "https://arxiv.org/abs/2303.13283",
    )
    official_adapter = staticmethod(official_adapter)
    Config = KgCoOpConfig
    # configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml (Dassl's SGD momentum and weight decay)
    training_defaults = {
        "optimizer": "sgd",
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 100,
        "batch_size": 128,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "precision": "auto",
    }

    def __init__(self, config: KgCoOpConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        if config.knowledge_template is not None and "{}" not in config.knowledge_template:
            raise ClipadaptError(
                f"kgcoop's knowledge_template needs '{{}}' for the class name, "
                f"got '{config.knowledge_template}'"
            )
        self.classnames = list(classnames)
        self.dataset: str | None = None
        self.dataset_template: str | None = None
        self._knowledge: torch.Tensor | None = None
        self._text_f: torch.Tensor | None = None

    def set_dataset(self, dataset: str | None, dataset_template: str | None) -> None:
        """The dataset (and its CoOp template) the knowledge prompts are taken for."""
        if (
            dataset is not None or dataset_template is not None
        ):  # kept when a later call knows neither
            self.dataset, self.dataset_template = dataset, dataset_template
            self._knowledge = None

    def set_classes(self, classnames, trained_on=None) -> None:
        """New classes: their hand-crafted features are computed when a loss first needs them."""
        self.classnames = list(classnames)
        self._knowledge = None

    def knowledge_template(self) -> str:
        """The hand-crafted prompt the frozen class text is encoded with."""
        return (
            self.config.knowledge_template
            or KNOWLEDGE_TEMPLATES.get(self.dataset or "")
            or self.dataset_template
            or "a photo of a {}."
        )

    def knowledge_features(self, backbone) -> torch.Tensor:
        """Frozen CLIP's unit text features of the hand-crafted prompts [classes, dim], once per class set."""
        if self._knowledge is None:
            template = self.knowledge_template()
            prompts = [template.format(c.replace("_", " ")) for c in self.classnames]
            self._knowledge = F.normalize(frozen_text_features(backbone, prompts), dim=-1)
        return self._knowledge

    def begin_forward(self) -> None:
        """Forget the previous pass's class text."""
        self._text_f = None

    def after_heads(self, backbone, img_f, txt_f):
        """Keep the learned class text of a training pass and the frozen one it is compared with."""
        if txt_f is not None and torch.is_grad_enabled():
            self._text_f = (txt_f, self.knowledge_features(backbone).to(txt_f.device))
        return img_f, txt_f

    def knowledge_distance(self, txt_f: torch.Tensor, knowledge: torch.Tensor) -> torch.Tensor:
        """L_kg: 1 - mean cosine (the code) or the mean squared distance of unit vectors (the paper)."""
        learned = F.normalize(txt_f.float(), dim=-1)
        if self.config.kg_distance == "l2":
            return (learned - knowledge).pow(2).sum(-1).mean()
        return 1.0 - F.cosine_similarity(learned, knowledge, dim=1, eps=1e-7).mean()

    def loss(self, logits, labels):
        """CE plus W times the knowledge distance (CE alone for a pass without class text)."""
        ce = F.cross_entropy(logits, labels)
        if self._text_f is None or self.config.kg_weight == 0:
            return ce, {"ce": ce.detach()}
        kg = self.knowledge_distance(*self._text_f)
        return ce + self.config.kg_weight * kg, {"ce": ce.detach(), "kg": kg.detach()}


def official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The learned context of an official KgCoOp checkpoint. Dassl saves the prompt_learner's state dict
    (ctx, bias_vectors, meta_net.linear1.*, token_prefix, token_suffix); only `ctx` is trained (the
    trainer freezes every parameter without 'ctx' in its name) and the forward reads no other."""
    return official_prompt_learner(path, "KgCoOp")
