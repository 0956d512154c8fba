"""MaPLe (Khattak et al., CVPR 2023): deep language prompts coupled to vision prompts by linear maps.
Follows the official code (muzairkhattak/multimodal-prompt-learning, trainers/maple.py and
clip/model.py, ResidualAttentionBlock_MaPLe / VisionTransformer_MaPLe):

    P_1 in R^{n x d_t}   (init: the embeddings of the first n words of ctx_init, "a photo")
    P_l in R^{n x d_t}, l = 2..J   (init N(0, 0.02))          J = prompt_depth = 9
    text:  block 1 sees [sos, P_1 + pos, "of a {class}." + pos]; block l = 2..J replaces the n
           prompt outputs of block l-1 by P_l (no positional embedding)
    image: block 1 sees [cls, patches, ln_pre(F_1 P_1)] (appended after the patches);
           block l = 2..J replaces the last n tokens by F_l P_l         F_l = Linear(d_t -> d_v)

so the vision prompts of every block are a learned linear function of that block's language prompts.
After block J the prompt tokens flow on unchanged; they are removed after the last image block so
the image head pools CLIP's class token as the official `ln_post(x[:, 0])` does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import Backbone, TextBatch
from ..errors import ClipadaptError
from ..validation import Range
from .base import Method, MethodConfig, Paper, with_learned_context


@dataclass
class MaPLeConfig(MethodConfig):
    """MaPLe's settings (official names: N_CTX, CTX_INIT, PROMPT_DEPTH)."""

    option_ranges = {
        "n_ctx": Range(ge=1),
    }

    n_ctx: int = 2
    ctx_init: str = "a photo of a"  # "" for random context ("X X" placeholders, N(0, 0.02))
    prompt_depth: int | None = (
        None  # None: 9 of 12 blocks (the first three quarters), as the official config
    )
    template: str | None = (
        None  # derived: "<ctx_init> {}." as the official prompt; set only to change the tail
    )


def official_adapter(
    path: str, ctx_init: str = MaPLeConfig.ctx_init
) -> tuple[MaPLeConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official MaPLe checkpoint; n_ctx and the prompt depth read off the tensors,
    `ctx_init` as it was trained (CTX_INIT of the official config; it fixes the words after the context)."""
    from ..official_checkpoints import read_state_dict

    state = {
        k[len(OFFICIAL_PREFIX) :]: v
        for k, v in read_state_dict(path, "MaPLe").items()
        if k.startswith(OFFICIAL_PREFIX) and k[len(OFFICIAL_PREFIX) :] not in OFFICIAL_FIXED_KEYS
    }
    if "ctx" not in state or "proj.weight" not in state:
        raise ClipadaptError(
            f"'{path}' has no MaPLe prompt learner (prompt_learner.ctx, prompt_learner.proj.*)"
        )
    deep = {int(k.split(".")[1]) for k in state if k.startswith("compound_prompts_text.")}
    config = MaPLeConfig(
        n_ctx=int(state["ctx"].shape[0]), ctx_init=ctx_init, prompt_depth=len(deep) + 1
    )
    return config, state


class MaPLe(Method):
    """Multi-modal Prompt Learning: coupled deep prompts in the first `prompt_depth` blocks."""

    name = "maple"
    paper = Paper(
        "MaPLe: Multi-modal Prompt Learning",
        "CVPR 2023",
        "https://arxiv.org/abs/2210.03117",
    )
    official_adapter = staticmethod(official_adapter)
    Config = MaPLeConfig
    acts_on_blocks = True
    training_defaults = {
        "optimizer": "sgd",
        "lr": 0.0035,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 5,
        "batch_size": 4,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "precision": "auto",
    }

    def __init__(self, config: MaPLeConfig, backbone: Backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        depth = min(len(backbone.image_blocks), len(backbone.text_blocks))
        self.prompt_depth = (
            config.prompt_depth if config.prompt_depth is not None else max(1, round(3 * depth / 4))
        )
        if not 1 <= self.prompt_depth <= depth:
            raise ClipadaptError(
                f"maple prompt_depth must be in 1..{depth} for this backbone, got {self.prompt_depth}"
            )
        if config.n_ctx < 1:
            raise ClipadaptError(f"maple n_ctx must be >= 1, got {config.n_ctx}")
        n, d_t, d_v = config.n_ctx, backbone.text_width, backbone.image_width
        # The official code initialises from words only when n_ctx <= 4; otherwise randomly.
        if config.ctx_init and n <= 4:
            tokens = backbone.tokenize([config.ctx_init.replace("_", " ")])
            words = int(backbone.pool_index(tokens)[0]) - 1
            if words < n:
                raise ClipadaptError(
                    f"maple ctx_init '{config.ctx_init}' has {words} tokens, fewer than n_ctx={n}"
                )
            with torch.no_grad():
                init = backbone.embed_tokens(tokens)[0, 1 : 1 + n].clone().float()
            prefix = config.ctx_init.replace("_", " ")
        else:
            init = torch.empty(n, d_t).normal_(std=0.02)
            prefix = " ".join(["X"] * n)
        self.n_ctx = n
        self.ctx = nn.Parameter(init)
        self.proj = nn.Linear(d_t, d_v)  # the shallow coupling F_1
        self.compound_prompts_text = nn.ParameterList(
            [
                nn.Parameter(torch.empty(n, d_t).normal_(std=0.02))
                for _ in range(self.prompt_depth - 1)
            ]
        )
        # The official code deep-copies one initialised layer: the deep couplings F_2..F_J start equal.
        single = nn.Linear(d_t, d_v)
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(single) for _ in range(self.prompt_depth - 1)]
        )
        if config.template and not config.template.startswith(prefix + " "):
            raise ClipadaptError(
                f"maple's template must start with '{prefix} ' (its context words), "
                f"got '{config.template}'"
            )
        self.config.template = config.template or (prefix + " {}.")
        self.n_image_blocks = len(backbone.image_blocks)

    def first_active_blocks(self, backbone: Backbone) -> tuple[int, int]:
        """The language context replaces prompt embeddings and the vision prompts join block 1: nothing is frozen."""
        return 0, 0

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Positions 1..n_ctx of every prompt become the learned language context P_1."""
        return with_learned_context(batch, self.ctx)

    def vision_prompts(self, index: int) -> torch.Tensor:
        """F_l P_l for 0-based block `index` (index 0: the shallow prompt F_1 P_1)."""
        if index == 0:
            return self.proj(self.ctx)
        return self.compound_prompt_projections[index - 1](self.compound_prompts_text[index - 1])

    def step(self, index, backbone, img, txt):
        """Block 1: append the vision prompts; blocks 2..J: replace the prompt outputs by this block's prompts."""
        n = self.n_ctx
        deep = 1 <= index < self.prompt_depth
        if img is not None and index < self.n_image_blocks:
            if index == 0:
                # The official code appends F_1 P_1 before ln_pre; the backbone's stem has applied
                # ln_pre to the other tokens already, and ln_pre acts on each token alone.
                visual = backbone.image_input_norm(self.vision_prompts(0).to(img.dtype))
                img = torch.cat([img, visual.unsqueeze(0).expand(img.shape[0], -1, -1)], dim=1)
            elif deep:
                visual = (
                    self.vision_prompts(index)
                    .to(img.dtype)
                    .unsqueeze(0)
                    .expand(img.shape[0], -1, -1)
                )
                img = torch.cat([img[:, :-n], visual], dim=1)
            img = backbone.image_block(index, img)
            if index == self.n_image_blocks - 1:
                img = img[:, :-n]
        if txt is not None and index < len(backbone.text_blocks):
            if deep:
                text = (
                    self.compound_prompts_text[index - 1]
                    .to(txt.dtype)
                    .unsqueeze(0)
                    .expand(txt.shape[0], -1, -1)
                )
                txt = torch.cat([txt[:, :1], text, txt[:, 1 + n :]], dim=1)
            txt = backbone.text_block(index, txt)
        return img, txt


# ---- checkpoints of the official code ----------------------------------------------------------
# muzairkhattak/multimodal-prompt-learning trainers/maple.py registers the whole CustomCLIP with Dassl
# ("MultiModalPromptLearner"), so its file holds the frozen towers too; the trained tensors are those
# under `prompt_learner.`, whose names (ctx, proj, compound_prompts_text.j, compound_prompt_projections.j)
# are this module's. The fixed token_prefix / token_suffix buffers are dropped, as the official load_model does.
OFFICIAL_PREFIX = "prompt_learner."
OFFICIAL_FIXED_KEYS = ("token_prefix", "token_suffix")
