"""CoOp (Zhou et al. 2022): learned context tokens in the text prompt.

    prompt_c = [SOS] [V]_1 ... [V]_M [CLASS_c] . [EOS],   M = 16 unified context vectors

The prompt is tokenized as "X X ... X {class}." and the M placeholder embeddings are replaced by
the learned context; everything else (the class tokens, the end-of-text position) stays CLIP's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import TextBatch
from ..errors import ClipadaptError
from ..validation import Range
from .base import Method, MethodConfig, Paper, with_learned_context


@dataclass
class CoOpConfig(MethodConfig):
    """Number of context vectors, or an initial phrase whose word embeddings start the context."""

    option_ranges = {
        "n_ctx": Range(ge=1),
    }

    n_ctx: int = 16
    ctx_init: str = ""  # e.g. "a photo of a": n_ctx must be its token count (4)
    template: str | None = (
        None  # derived from n_ctx; set only to change what follows the class name
    )


def official_adapter(path: str, **options) -> tuple[CoOpConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official CoOp checkpoint (prompt_learner/model.pth.tar-N); n_ctx read off `ctx`."""
    state = official_prompt_learner(path, "CoOp")
    # An official ctx_init ("a photo of a") only sets the prompt's placeholder words, which the learned
    # context replaces position for position: "X X X X {}." tokenizes to the same layout.
    return CoOpConfig(n_ctx=int(state["ctx"].shape[0]), **options), state


class CoOp(Method):
    """Unified learned context, class token at the end."""

    name = "coop"
    paper = Paper(
        "Learning to Prompt for Vision-Language Models (CoOp)",
        "IJCV 2022",
        "https://arxiv.org/abs/2109.01134",
    )
    official_adapter = staticmethod(official_adapter)
    Config = CoOpConfig
    pooled_final_block = (
        True  # its blocks are CLIP's own: every token maps as open_clip's block maps it
    )
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
    }

    def __init__(self, config: CoOpConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        width = backbone.text_width
        if config.ctx_init:
            tokens = backbone.tokenize([config.ctx_init])
            n = int(backbone.pool_index(tokens)[0]) - 1
            if (
                n != config.n_ctx
            ):  # the official code takes n from the words; a record saying otherwise would lie
                raise ClipadaptError(
                    f"{self.name}'s ctx_init '{config.ctx_init}' is {n} tokens but n_ctx is "
                    f"{config.n_ctx}: set n_ctx={n}, or ctx_init='' for {config.n_ctx} random "
                    "context vectors"
                )
            with torch.no_grad():
                init = backbone.embed_tokens(tokens)[0, 1 : 1 + n].clone()
        else:
            n = config.n_ctx
            init = torch.empty(n, width).normal_(std=0.02)
        self.n_ctx = n
        self.ctx = nn.Parameter(init.float())
        # The placeholders "X" are single tokens, so the context occupies positions 1..n of every prompt.
        placeholders = " ".join(["X"] * n)
        if config.template and not config.template.startswith(placeholders + " "):
            raise ClipadaptError(
                f"coop's template must start with {n} 'X' placeholders, got '{config.template}'"
            )
        self.config.template = config.template or (placeholders + " {}.")

    def first_active_blocks(self, backbone) -> tuple[int, int]:
        """The learned context enters the text tower before block 0; the image tower is CLIP's own."""
        return len(backbone.image_blocks), 0

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Replace the placeholder embeddings with the learned context."""
        return with_learned_context(batch, self.ctx)


# ---- checkpoints of the official code ----------------------------------------------------------
# KaiyangZhou/CoOp trainers/coop.py registers `self.model.prompt_learner` with Dassl, so its file holds
# the PromptLearner's state dict: `ctx` and the fixed `token_prefix` / `token_suffix` buffers, which the
# official load_model deletes (they are rebuilt from the current class names).
OFFICIAL_FIXED_KEYS = ("token_prefix", "token_suffix")


def official_prompt_learner(
    path: str, paper_name: str, also: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """`ctx` (and the `also` tensors) of a Dassl checkpoint of a CoOp-family prompt learner (CoOp, CoCoOp,
    KgCoOp), as float tensors; refuses a file without them and class-specific context (CSC)."""
    from ..official_checkpoints import read_state_dict

    state = {
        k.removeprefix("prompt_learner."): v.float()
        for k, v in read_state_dict(path, paper_name).items()
    }
    missing = [k for k in ("ctx", *also) if k not in state]
    if missing:
        raise ClipadaptError(
            f"'{path}' is not an official {paper_name} checkpoint: no {', '.join(missing)} "
            f"(of its prompt_learner)"
        )
    ctx = state["ctx"]
    if ctx.dim() == 3:  # CSC=True: one context per class, which clipadapt does not build
        raise ClipadaptError(
            f"'{path}' holds class-specific context (CSC, ctx of shape {tuple(ctx.shape)}); "
            f"clipadapt's {paper_name} learns one unified context"
        )
    if ctx.dim() != 2:
        raise ClipadaptError(
            f"'{path}': {paper_name}'s ctx has shape {tuple(ctx.shape)}, expected [n_ctx, width]"
        )
    return {k: state[k] for k in ("ctx", *also)}
