"""Frozen work done once: what CLIP's own blocks compute below the first block a method changes.

A method declares, per tower, the first block whose output it changes (`Method.first_active_blocks`).
Everything below that block depends on the input only, so it is computed once and reused:

* class prompts: their tokens at the input of the first active text block, once per prompt set
  (`PromptPrefix`, kept by the model; new classes, a new prompt set or a device/dtype move drop it);
* training images with augmentation off: their tokens at the input of the first active image block,
  once per run (`FrozenImages`, kept by the trainer by item index, in the run's precision, within a
  memory budget). For a tower the method never changes, the "tokens" are its output features
  (after the head): the output-feature cache of output-only methods and CoOp's image side;
* the frozen towers' final features, for methods whose loss compares with them (RMAdapter, MMRL):
  per prompt once per prompt set, and per training image alongside its cached tokens.

The stepper enters each tower at the block its cached tokens belong to and calls the method's
`step` from there on, so the method sees exactly the sequences it would have seen.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .backbone import Backbone, TextBatch

MB = 2**20


@dataclass
class FrozenImages:
    """Images as the frozen towers leave them: tokens at the input of image block `block`, or the
    image tower's output features when `at_output` (the method never changes the image tower)."""

    tokens: torch.Tensor  # [images, tokens, width], or [images, dim] when at_output
    block: int
    at_output: bool = False
    final: torch.Tensor | None = (
        None  # [images, dim]: frozen final features, for methods comparing with them
    )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> FrozenImages:
        return FrozenImages(
            self.tokens[index],
            self.block,
            self.at_output,
            None if self.final is None else self.final[index],
        )

    def to(self, device, non_blocking: bool = False) -> FrozenImages:
        """Move to a device."""
        return FrozenImages(
            self.tokens.to(device, non_blocking=non_blocking),
            self.block,
            self.at_output,
            None if self.final is None else self.final.to(device, non_blocking=non_blocking),
        )

    @property
    def nbytes(self) -> int:
        """Memory the cached tensors take."""
        return self.tokens.nbytes + (0 if self.final is None else self.final.nbytes)


@dataclass
class PromptPrefix:
    """Frozen tokens of every prompt of a set at the input of text block `block` ([prompts, length, width])."""

    tokens: torch.Tensor
    pool_index: torch.Tensor
    block: int

    def rows(self, rows, cut: bool) -> torch.Tensor:
        """Tokens of prompts `rows` (None: all), cut after their longest prompt as the text stem cuts."""
        if rows is None:
            return self.tokens
        tokens = self.tokens[rows]
        return tokens[:, : int(self.pool_index[rows].max()) + 1] if cut else tokens


# ---- the frozen towers, stepped without any method -------------------------------------------------
def image_tokens(backbone: Backbone, images: torch.Tensor, stop: int) -> torch.Tensor:
    """Tokens at the input of image block `stop`: the stem and blocks 0..stop-1 of the frozen tower."""
    x = backbone.image_stem(images)
    for index in range(stop):
        x = backbone.image_block(index, x)
    return x


def image_output(backbone: Backbone, x: torch.Tensor, start: int) -> torch.Tensor:
    """Output features from tokens at the input of image block `start` (the frozen blocks above, the head)."""
    for index in range(start, len(backbone.image_blocks)):
        x = backbone.image_block(index, x)
    return backbone.image_head(x)


def text_tokens(backbone: Backbone, batch: TextBatch, stop: int) -> torch.Tensor:
    """Tokens at the input of text block `stop` (cut after the batch's longest prompt)."""
    x = backbone.text_stem(batch)
    for index in range(stop):
        x = backbone.text_block(index, x)
    return x


def text_output(
    backbone: Backbone, x: torch.Tensor, start: int, pool_index: torch.Tensor
) -> torch.Tensor:
    """Output features from tokens at the input of text block `start`."""
    for index in range(start, len(backbone.text_blocks)):
        x = backbone.text_block(index, x)
    return backbone.text_head(x, pool_index)


def frozen_text_features(backbone: Backbone, prompts: list[str]) -> torch.Tensor:
    """Frozen CLIP's text features of `prompts` [prompts, dim], float32, not normalised; the same numbers
    under any autocast (the hand-crafted targets KgCoOp and PromptSRC compare with)."""
    with fixed_precision(backbone.logit_scale.device):
        batch = backbone.text_batch(prompts)
        return text_output(backbone, text_tokens(backbone, batch, 0), 0, batch.pool_index).float()


@contextmanager
def fixed_precision(device: torch.device):
    """No gradient and no autocast: frozen caches hold the same numbers wherever they are first
    asked for (a training step under autocast, an evaluation)."""
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        yield


# ---- sizes ---------------------------------------------------------------------------------------
def image_token_count(backbone: Backbone) -> int:
    """Tokens per image at the input of any image block (class token plus patches)."""
    return int(backbone.clip.visual.positional_embedding.shape[0])


def bytes_per_image(backbone: Backbone, block: int, dtype: torch.dtype, with_final: bool) -> int:
    """Memory one cached training image takes: tokens at `block` (features at the tower's depth)."""
    size = torch.empty((), dtype=dtype).element_size()
    if block >= len(backbone.image_blocks):
        per = backbone.embed_dim * 4  # output features are kept in float32, as the logits read them
    else:
        per = image_token_count(backbone) * backbone.image_width * size
    return per + (backbone.embed_dim * 4 if with_final else 0)


@dataclass
class ImagePlan:
    """Whether a run caches its training images, where, and what it costs."""

    block: int  # first active image block (the image tower's depth: output features)
    depth: int
    cached: bool
    bytes_per_image: int
    total_bytes: int
    reason: str  # why not cached ("" when cached)

    def describe(self, method: str) -> str:
        """One line for the console and the log."""
        where = (
            "image features (after the heads)"
            if self.block >= self.depth
            else f"image tokens at the input of block {self.block + 1} of {self.depth}"
        )
        if self.cached:
            return (
                f"frozen prefix: {where} computed once for the run "
                f"({self.total_bytes / MB:.1f} MB, {self.bytes_per_image / 1024:.1f} KB an image)"
            )
        return f"frozen prefix not cached ({self.reason}): {method} recomputes the frozen image blocks every batch"


def plan_images(
    backbone: Backbone,
    method,
    n_images: int,
    augment: bool,
    budget_mb: float,
    noise_std: float,
    dtype: torch.dtype,
) -> ImagePlan:
    """Decide whether a run caches its training images at the method's first active image block."""
    block = method.first_active_blocks(backbone)[0]
    depth = len(backbone.image_blocks)
    per = bytes_per_image(
        backbone, block, dtype, with_final=method.compares_with_frozen and block < depth
    )
    total = per * n_images
    reason = ""
    if augment:
        reason = "augmentation on: every epoch sees new crops"
    elif noise_std > 0:
        reason = "train_noise_std > 0: every epoch draws new noise"
    elif budget_mb <= 0:
        reason = "prefix_cache_mb=0"
    elif total > budget_mb * MB:
        reason = f"{total / MB:.0f} MB for {n_images} images is over prefix_cache_mb={budget_mb:g}"
    return ImagePlan(block, depth, not reason, per, total, reason)
