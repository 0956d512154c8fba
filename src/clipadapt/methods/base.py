"""The one interface every method implements.

The stepper in `clipadapt.model` calls a method at fixed points of the forward pass:

    text batch  -> prompt_embeddings            (learned prompt tokens, e.g. CoOp)
    stems       -> after_stems                  (token sequences before block 0)
    block l     -> step(l, backbone, img, txt)  (both towers in lockstep; default runs both blocks)
    heads       -> after_heads                  (output features, e.g. CLIP-Adapter)
    features    -> logits                       (default: CLIP's scaled cosine similarity)
    training    -> loss(logits, labels)         (task loss plus the method's regularizers)

Image and text sequences are [batch, tokens, width]; either may be None when only one tower is
encoded (text features are cached at evaluation when `text_depends_on_images` is False).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone, TextBatch
from ..validation import Range, check_fields, template_problem


@dataclass(frozen=True)
class Paper:
    """The work a method reproduces, as the model card names it."""

    title: str
    venue: str = ""  # e.g. "CVPR 2024"
    link: str = ""  # the paper's page (arXiv, the venue's open access)

    def __str__(self) -> str:
        text = f"{self.title} ({self.venue})" if self.venue else self.title
        return f"[{text}]({self.link})" if self.link else text


@dataclass
class MethodConfig:
    """Fields every method has; subclasses add their own, and their ranges in `option_ranges`."""

    # Bounds and choices of the options, by field name (validation.Range); a subclass's mapping adds
    # to its bases'. Types need no entry: every field is converted and checked by its declared type.
    option_ranges: ClassVar[dict[str, Range]] = {"template": Range(check=template_problem)}

    template: str | None = None  # prompt; None means the dataset's CoOp template
    # Several prompts a class (clipadapt.prompts): "openai80", a .json file or folder, a template list
    prompts: str | list[str] | None = None

    def __post_init__(self):
        check_fields(self, "method option")  # types, and ranges (option_ranges)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for YAML and checkpoint metadata."""
        return asdict(self)

    @classmethod
    def option_names(cls) -> list[str]:
        """The option keys this config takes: its fields (a hybrid's are '<part>.<option>')."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        """Build from a dict, rejecting unknown keys with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for this method; known: {sorted(known)}")
        return cls(**values)


class Method(nn.Module):
    """Base class: a method that changes nothing is zero-shot CLIP."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    acts_on_blocks: ClassVar[bool] = False  # needs the towers stepped block by block
    text_depends_on_images: ClassVar[bool] = False  # text features cannot be cached across images
    image_depends_on_text: ClassVar[bool] = (
        False  # image passes read state left by the class-text pass
    )
    output_only: ClassVar[bool] = (
        False  # acts only on output features: the frozen towers can run once
    )
    # The loss compares with the frozen towers' output features; the model hands them over, cached,
    # in `given_frozen` before each training pass (None for a tower it has none for).
    compares_with_frozen: ClassVar[bool] = False
    # How the method uses prompt sets (several prompts a class) in training: "draw" (one prompt per
    # class per step, from the run's seeded generator), "mean" (the ensemble mean, as at inference),
    # or None: it takes none (its prompts are learned or its passes share state across prompts).
    prompt_sets: ClassVar[str | None] = None
    # The method's `step` at each tower's final block maps every token from the block's output at
    # that token and the block's input at that token only (and keeps no other token of it). The
    # stepper then runs the final block at the pooled positions only (the image's class token, each
    # prompt's end-of-text token): `step` gets `queries` for that block, must pass them to the
    # backbone's block and read its own inputs there (`backbone.at_queries`); its sequences come
    # out [N, 1, width]. Logits and gradients are those of the whole block, to float rounding.
    pooled_final_block: ClassVar[bool] = False
    # Config options that zero the method's contribution at evaluation whatever its parameters hold
    # (its logits are then zero-shot CLIP's: clipadapt.testing checks it); None: no such switch.
    off_options: ClassVar[dict[str, Any] | None] = None
    # Paper settings for the trainer: optimizer, lr, epochs, batch size, ...
    training_defaults: ClassVar[dict[str, Any]] = {}
    # The work the method reproduces, named on the model card of an exported adapter.
    paper: ClassVar[Paper | None] = None
    # Presets: the `presets/` folder next to the method's module (or next to a package above it, the
    # nearest first), in clipadapt's layout: `<name>_<protocol>.yaml` and `<name>.yaml` for the CLIP
    # ViTs, `synthetic/<name>.yaml` for the shipped tiny CLIP (clipadapt.runconfig.find_preset).

    # A reader of the official code's checkpoints, when the method has one: a classmethod
    # `official_adapter(path, **options) -> (config, tensors under this method's state_dict names)`;
    # `clipadapt import --method NAME` and `clipadapt import-NAME` call it, with its options as flags.
    official_adapter: ClassVar[Any] = None

    def __init__(self, config: MethodConfig, backbone: Backbone, classnames: list[str]):
        super().__init__()
        self.config = config
        self.draws: torch.Generator | None = (
            None  # the run's generator for random draws (set by the model)
        )
        self.given_frozen: dict[str, torch.Tensor | None] = {"image": None, "text": None}

    # ---- hooks --------------------------------------------------------------------------------
    def begin_forward(self) -> None:
        """Called before each forward pass; methods clear their per-pass state here."""

    def set_classes(self, classnames: list[str], trained_on: bool | None = None) -> None:
        """Told which classes are scored next and whether they were trained on (None: unknown)."""

    def set_dataset(self, dataset: str | None, dataset_template: str | None) -> None:
        """Told the dataset the classes come from and its CoOp template (None: unknown)."""

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Token embeddings of the class prompts (learned context replaces some of them)."""
        return batch

    def after_stems(self, img: torch.Tensor | None, txt: torch.Tensor | None):
        """Sequences after the stems, before block 0."""
        return img, txt

    def step(
        self,
        index: int,
        backbone: Backbone,
        img: torch.Tensor | None,
        txt: torch.Tensor | None,
        queries: dict | None = None,
    ):
        """Block `index` (0-based) of both towers; `queries` ({"image": .., "text": ..}, only for
        methods with `pooled_final_block`) restricts a tower's final block to its pooled positions."""
        queries = queries or {}
        if img is not None and index < len(backbone.image_blocks):
            img = backbone.image_block(index, img, queries.get("image"))
        if txt is not None and index < len(backbone.text_blocks):
            txt = backbone.text_block(index, txt, queries.get("text"))
        return img, txt

    def after_heads(
        self, backbone: Backbone, img_f: torch.Tensor | None, txt_f: torch.Tensor | None
    ):
        """Output features of both towers."""
        return img_f, txt_f

    def logits(
        self, img_f: torch.Tensor, txt_f: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """Scaled cosine similarity of every image with every class prompt: [images, classes]."""
        return logit_scale * F.normalize(img_f, dim=-1) @ F.normalize(txt_f, dim=-1).t()

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Task loss plus regularizers, and the parts for the log (detached tensors: no host sync per step)."""
        ce = F.cross_entropy(logits, labels)
        return ce, {"ce": ce.detach()}

    # ---- where the method acts (the frozen-work caches read this) -------------------------------
    def first_active_blocks(self, backbone: Backbone) -> tuple[int, int]:
        """0-based index of the first block whose output the method changes, per tower (image, text).

        A tower's depth means the method never changes that tower's tokens: everything up to its
        output features is CLIP's own and can be computed once per input. Methods that act on the
        prompt embeddings or the stems return 0 for that tower. The stepper skips the blocks below
        and enters the tower there with cached frozen tokens: `step` (and `after_stems`) must not
        rely on being called for a block below the declared one.
        """
        if self.acts_on_blocks:
            return 0, 0
        return len(backbone.image_blocks), len(backbone.text_blocks)

    def image_tower_is_frozen(self, backbone: Backbone) -> bool:
        """True when image features before `after_heads` are CLIP's own for every input."""
        return self.first_active_blocks(backbone)[0] >= len(backbone.image_blocks)

    # ---- the engine's epoch averaging ------------------------------------------------------------
    def epoch_weights(self, epochs: int) -> list[float] | None:
        """Weights of the state after each of `epochs` epochs in an average the run ends with (None: no
        averaging). The trainer keeps the weighted sum (checkpointed) and loads it after the last epoch."""
        return None

    # ---- bookkeeping --------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        """How many numbers training changes."""
        return sum(p.numel() for p in self.trainable_parameters())


def with_learned_context(batch: TextBatch, ctx: torch.Tensor) -> TextBatch:
    """The prompts with positions 1..n_ctx (the placeholder words after the start token) replaced by `ctx`."""
    emb = batch.embeddings
    context = ctx.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
    return TextBatch(
        torch.cat([emb[:, :1], context, emb[:, 1 + ctx.shape[0] :]], dim=1), batch.pool_index
    )
