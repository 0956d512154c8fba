"""PromptSRC (Khattak et al., ICCV 2023): deep independent vision and language prompts, regularised
towards frozen CLIP. Follows the official code (muzairkhattak/PromptSRC, trainers/promptsrc.py and
clip/model.py, ResidualAttentionBlock_IVLP / VisionTransformer with design "IVLP"):

    text:  block 1 sees [sos, P_1 + pos, "{class}." + pos]   P_1: the embeddings of "a photo of a"
           block l = 2..J_t replaces the n_t prompt outputs of block l-1 by P_l  (N(0, 0.02))
    image: block 1 sees [cls, patches, ln_pre(V_1)]           V_1 appended after the patches
           block l = 2..J_v replaces the last n_v tokens by V_l                  (all N(0, 0.02))

The image head pools CLIP's class token. Training adds three self-regularising terms against frozen
CLIP (the official forward_backward):

    L = CE(z, y) + 25 * L1(t_hat, t_zs) + 10 * L1(f_hat, f_zs) + KL(z_zs || z) summed / z.numel()

with t_hat, f_hat the normalised prompted features, f_zs the normalised frozen image features, t_zs
the normalised mean over 60 CLIP ImageNet templates of the frozen text features (averaged before
normalising), z_zs = scale * f_zs @ t_zs^T. Gaussian prompt aggregation (GPA) averages the state
after each epoch with weights N(epoch; mean, std), normalised over the epochs; the engine applies it
through `epoch_weights` (clipadapt.engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone, TextBatch
from ..errors import ClipadaptError
from ..frozen_cache import frozen_text_features
from ..official_checkpoints import read_state_dict
from ..prompts import format_prompt, openai_templates
from .base import Method, MethodConfig, Paper, with_learned_context

# The official IMAGENET_TEMPLATES (trainers/imagenet_templates.py) hold 60 of CLIP's 80 templates:
# these 20 are the ones it leaves out. The order does not matter (a mean).
_NOT_IN_PROMPTSRC = frozenset(
    {
        "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.",
        "a plushie {}.",
        "a photo of the nice {}.",
        "a photo of the small {}.",
        "a photo of the weird {}.",
        "the cartoon {}.",
        "art of the {}.",
        "a drawing of the {}.",
        "a photo of the large {}.",
        "a black and white photo of a {}.",
        "the plushie {}.",
        "a dark photo of a {}.",
        "itap of a {}.",
        "graffiti of the {}.",
        "a toy {}.",
        "itap of my {}.",
        "a photo of a cool {}.",
        "a photo of a small {}.",
        "a tattoo of the {}.",
    }
)


def promptsrc_templates() -> list[str]:
    """The 60 templates whose frozen text features the official code averages (its IMAGENET_TEMPLATES)."""
    return [t for t in openai_templates() if t not in _NOT_IN_PROMPTSRC]


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> list[float]:
    """GPA's weight of epochs 1..`epochs`: a Gaussian density at each epoch, normalised to sum 1."""
    density = [
        math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
        for e in range(1, epochs + 1)
    ]
    total = sum(density)
    if not total > 0:
        raise ClipadaptError(
            f"promptsrc gpa_mean={mean}, gpa_std={std} give every one of {epochs} epochs "
            "weight 0 (underflow): move gpa_mean into the epochs or widen gpa_std"
        )
    return [d / total for d in density]


@dataclass
class PromptSRCConfig(MethodConfig):
    """PromptSRC's settings (official names: N_CTX_TEXT/VISION, PROMPT_DEPTH_TEXT/VISION, ...)."""

    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    ctx_init: str = "a photo of a"  # "" for random context ("X" placeholders, N(0, 0.02))
    # Blocks with prompts; None: 9 of 12 (the first three quarters of the tower), as the official config.
    prompt_depth_text: int | None = None  # >= 1
    prompt_depth_vision: int | None = None  # 0: no vision prompts
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    logit_loss_weight: float = 1.0  # the official code adds the KL term unweighted
    kl_temperature: float = (
        1.0  # the official code divides the logits by 1 (and multiplies by 1 * 1)
    )
    gpa: bool = True  # Gaussian prompt aggregation over epochs
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    template: str | None = None  # derived: "<ctx_init> {}." as the official prompt


def official_adapter(path: str, **options) -> tuple[PromptSRCConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official PromptSRC checkpoint (options: gpa, loss weights, ...)."""
    state = official_state_dict(path)
    try:
        config = official_config(state, **options)
    except TypeError as err:
        raise ClipadaptError(f"promptsrc import: {err}") from None
    return config, {k: v.float() for k, v in state.items()}


class PromptSRC(Method):
    """Independent deep vision-language prompts with self-regularisation and GPA."""

    name = "promptsrc"
    paper = Paper(
        "Self-regulating Prompts: Foundational Model Adaptation without Forgetting (PromptSRC)",
        "ICCV 2023",
        "https://arxiv.org/abs/2307.06948",
    )
    official_adapter = staticmethod(official_adapter)
    Config = PromptSRCConfig
    acts_on_blocks = True
    compares_with_frozen = True
    training_defaults = {
        "optimizer": "sgd",
        "lr": 0.0025,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 20,
        "batch_size": 4,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "precision": "auto",
    }

    def __init__(self, config: PromptSRCConfig, backbone: Backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        self.n_image_blocks, self.n_text_blocks = (
            len(backbone.image_blocks),
            len(backbone.text_blocks),
        )
        self.depth_text = (
            config.prompt_depth_text
            if config.prompt_depth_text is not None
            else max(1, round(3 * self.n_text_blocks / 4))
        )
        self.depth_vision = (
            config.prompt_depth_vision
            if config.prompt_depth_vision is not None
            else max(1, round(3 * self.n_image_blocks / 4))
        )
        if not 1 <= self.depth_text <= self.n_text_blocks:
            raise ClipadaptError(
                f"promptsrc prompt_depth_text must be in 1..{self.n_text_blocks} for this backbone, "
                f"got {self.depth_text}"
            )
        if not 0 <= self.depth_vision <= self.n_image_blocks:
            raise ClipadaptError(
                f"promptsrc prompt_depth_vision must be in 0..{self.n_image_blocks} for this "
                f"backbone, got {self.depth_vision}"
            )
        if config.n_ctx_text < 1 or (self.depth_vision and config.n_ctx_vision < 1):
            raise ClipadaptError("promptsrc needs n_ctx_text >= 1 and n_ctx_vision >= 1")
        if config.gpa and not config.gpa_std > 0:
            raise ClipadaptError(f"promptsrc gpa_std must be > 0, got {config.gpa_std}")
        n, d_t, d_v = config.n_ctx_text, backbone.text_width, backbone.image_width
        # As the official VLPromptLearner: words initialise the context only when n_ctx <= 4.
        if config.ctx_init and n <= 4:
            prefix = config.ctx_init.replace("_", " ")
            tokens = backbone.tokenize([prefix])
            if int(backbone.pool_index(tokens)[0]) - 1 < n:
                raise ClipadaptError(
                    f"promptsrc ctx_init '{config.ctx_init}' has fewer tokens than n_ctx_text={n}"
                )
            with torch.no_grad():
                init = backbone.embed_tokens(tokens)[0, 1 : 1 + n].clone().float()
        else:
            prefix = " ".join(["X"] * n)
            init = torch.empty(n, d_t).normal_(std=0.02)
        self.n_ctx = n
        self.ctx = nn.Parameter(init)
        self.text_prompts = nn.ParameterList(
            [
                nn.Parameter(torch.empty(n, d_t).normal_(std=0.02))
                for _ in range(self.depth_text - 1)
            ]
        )
        n_v, depth_v = config.n_ctx_vision, self.depth_vision
        self.n_ctx_vision = n_v if depth_v else 0
        self.vision_ctx = nn.Parameter(torch.empty(n_v, d_v).normal_(std=0.02)) if depth_v else None
        self.vision_prompts = nn.ParameterList(
            [
                nn.Parameter(torch.empty(n_v, d_v).normal_(std=0.02))
                for _ in range(max(depth_v - 1, 0))
            ]
        )
        if config.template and not config.template.startswith(prefix + " "):
            raise ClipadaptError(
                f"promptsrc's template must start with '{prefix} ' (its context words), "
                f"got '{config.template}'"
            )
        self.config.template = config.template or (prefix + " {}.")
        self.classnames = list(classnames)
        self._ensemble: tuple[tuple[str, ...], torch.Tensor] | None = (
            None  # (classes, frozen template mean)
        )
        self.begin_forward()

    # ---- forward --------------------------------------------------------------------------------
    def begin_forward(self) -> None:
        """Clear what one pass leaves for loss()."""
        self._frozen_img = self._frozen_img_f = None
        self._img_f = self._txt_f = self._logit_scale = None
        self._zs_text: torch.Tensor | None = None

    def set_classes(self, classnames: list[str], trained_on: bool | None = None) -> None:
        """The frozen template ensemble follows the classes scored."""
        self.classnames = list(classnames)

    def first_active_blocks(self, backbone: Backbone) -> tuple[int, int]:
        """Prompts enter both towers before block 1: nothing is frozen."""
        return 0, 0

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Positions 1..n_ctx of every prompt become the learned language context P_1."""
        return with_learned_context(batch, self.ctx)

    def step(self, index, backbone, img, txt):
        """Block 1: append the vision prompts; later prompted blocks replace the prompt outputs."""
        n, n_v = self.n_ctx, self.n_ctx_vision
        if img is not None and index < self.n_image_blocks:
            if index == 0 and self.training and self.given_frozen["image"] is None:
                self._frozen_img = img  # frozen CLIP's stream is the same up to here
            if index == 0 and n_v:
                # Official: appended before ln_pre, which acts on each token alone.
                visual = backbone.image_input_norm(self.vision_ctx.to(img.dtype))
                img = torch.cat([img, visual.unsqueeze(0).expand(img.shape[0], -1, -1)], dim=1)
            elif 1 <= index < self.depth_vision:
                visual = (
                    self.vision_prompts[index - 1]
                    .to(img.dtype)
                    .unsqueeze(0)
                    .expand(img.shape[0], -1, -1)
                )
                img = torch.cat([img[:, :-n_v], visual], dim=1)
            img = backbone.image_block(index, img)
            if self._frozen_img is not None:
                with torch.no_grad():
                    self._frozen_img = backbone.image_block(index, self._frozen_img)
            if index == self.n_image_blocks - 1 and n_v:
                img = img[:, :-n_v]
        if txt is not None and index < self.n_text_blocks:
            if 1 <= index < self.depth_text:
                text = (
                    self.text_prompts[index - 1]
                    .to(txt.dtype)
                    .unsqueeze(0)
                    .expand(txt.shape[0], -1, -1)
                )
                txt = torch.cat([txt[:, :1], text, txt[:, 1 + n :]], dim=1)
            txt = backbone.text_block(index, txt)
        return img, txt

    def after_heads(self, backbone: Backbone, img_f, txt_f):
        """Keep the features and, in training, the frozen features the regularisers compare with."""
        if self.training and img_f is not None:
            if self._frozen_img is not None:
                with torch.no_grad():
                    self._frozen_img_f = backbone.image_head(self._frozen_img)
            else:
                self._frozen_img_f = self.given_frozen["image"]
        if self.training and txt_f is not None:
            self._zs_text = self.frozen_template_features(backbone).to(txt_f.device)
        self._img_f, self._txt_f = img_f, txt_f
        return img_f, txt_f

    def frozen_template_features(self, backbone: Backbone) -> torch.Tensor:
        """Frozen CLIP's text features of the current classes, averaged over the 60 templates (not normalised)."""
        key = tuple(self.classnames)
        if self._ensemble is None or self._ensemble[0] != key:  # once per class list
            templates = promptsrc_templates()
            total = sum(
                frozen_text_features(backbone, [format_prompt(t, c) for c in self.classnames])
                for t in templates
            )
            self._ensemble = (key, total / len(templates))
        return self._ensemble[1]

    def logits(self, img_f, txt_f, logit_scale):
        """CLIP's scaled cosine similarity (the scale kept for the zero-shot logits of the loss)."""
        self._logit_scale = logit_scale
        return super().logits(img_f, txt_f, logit_scale)

    def loss(self, logits, labels):
        """CE + text L1 + image L1 to frozen CLIP + KL to frozen zero-shot logits (the official sum)."""
        if self._img_f is None or self._frozen_img_f is None or self._zs_text is None:
            raise ClipadaptError(
                "promptsrc's loss needs a training forward pass over images and class prompts first"
            )
        cfg = self.config
        ce = F.cross_entropy(logits, labels)
        txt_n = F.normalize(self._txt_f.float(), dim=-1)
        img_n = F.normalize(self._img_f.float(), dim=-1)
        zs_txt = F.normalize(self._zs_text.float(), dim=-1)
        zs_img = F.normalize(self._frozen_img_f.float(), dim=-1)
        l1_text = F.l1_loss(txt_n, zs_txt) * cfg.text_loss_weight
        l1_image = F.l1_loss(img_n, zs_img) * cfg.image_loss_weight
        zs_logits = self._logit_scale.float() * zs_img @ zs_txt.t()
        t = cfg.kl_temperature
        kl = (
            F.kl_div(
                F.log_softmax(logits / t, dim=1),
                F.log_softmax(zs_logits / t, dim=1),
                reduction="sum",
                log_target=True,
            )
            * (t * t)
            / logits.numel()
            * cfg.logit_loss_weight
        )
        total = ce + kl + l1_text + l1_image
        return total, {
            "ce": ce.detach(),
            "l1_text": l1_text.detach(),
            "l1_image": l1_image.detach(),
            "kl": kl.detach(),
        }

    # ---- the engine's epoch averaging -----------------------------------------------------------
    def epoch_weights(self, epochs: int) -> list[float] | None:
        """GPA: the weight of the state after each of `epochs` epochs in the final average."""
        if not self.config.gpa:
            return None
        return gaussian_epoch_weights(epochs, self.config.gpa_mean, self.config.gpa_std)


# ---- checkpoints of the official code --------------------------------------------------------------
_OFFICIAL_TEXT_DEEP = "text_encoder.transformer.resblocks."
_OFFICIAL_IMAGE_DEEP = "image_encoder.transformer.resblocks."


def official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The trained prompts of a checkpoint saved by the official PromptSRC code, under this module's names."""
    state = read_state_dict(path, "PromptSRC")
    out: dict[str, torch.Tensor] = {}
    text_blocks, image_blocks = {}, {}
    for key, value in state.items():
        if key == "prompt_learner.ctx":
            out["ctx"] = value
        elif key == "image_encoder.VPT":
            out["vision_ctx"] = value
        elif key.endswith(".VPT_shallow") and key.startswith(
            (_OFFICIAL_TEXT_DEEP, _OFFICIAL_IMAGE_DEEP)
        ):
            block = int(key.split(".")[3])
            (text_blocks if key.startswith(_OFFICIAL_TEXT_DEEP) else image_blocks)[block] = value
    if "ctx" not in out:
        raise ClipadaptError(
            f"'{path}' has no PromptSRC weights (prompt_learner.ctx, image_encoder.VPT, "
            "*.transformer.resblocks.<i>.VPT_shallow)"
        )
    for blocks, name in ((text_blocks, "text_prompts"), (image_blocks, "vision_prompts")):
        if sorted(blocks) != list(range(1, len(blocks) + 1)):
            raise ClipadaptError(
                f"'{path}': the {name} blocks {sorted(blocks)} are not 1..J-1 (the official layout)"
            )
        for block, value in blocks.items():
            out[f"{name}.{block - 1}"] = value
    if image_blocks and "vision_ctx" not in out:
        raise ClipadaptError(f"'{path}' has deep vision prompts but no image_encoder.VPT")
    return out


def official_config(state: dict[str, torch.Tensor], **options) -> PromptSRCConfig:
    """The PromptSRCConfig an official state dict fits: lengths and depths read off its tensors."""
    depth_t = 1 + sum(k.startswith("text_prompts.") for k in state)
    has_vision = "vision_ctx" in state
    depth_v = 1 + sum(k.startswith("vision_prompts.") for k in state) if has_vision else 0
    n_v = int(state["vision_ctx"].shape[0]) if has_vision else PromptSRCConfig.n_ctx_vision
    return PromptSRCConfig(
        n_ctx_text=int(state["ctx"].shape[0]),
        n_ctx_vision=n_v,
        prompt_depth_text=depth_t,
        prompt_depth_vision=depth_v,
        **options,
    )
