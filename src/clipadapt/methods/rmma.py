"""R-MMA, the recurrent multi-modal adapter (seed 002): one adapter reused at every block, carrying a
latent multimodal token from block to block.

The poster's equations, at block l (i_f, t_f: the frozen block's outputs on the adapted inputs):

    v_I = W_Iu v^(l-1),  v_T = W_Tu v^(l-1)                       modality-aware routing (MAR)
    ṽ_I = Attn(i_f^(l), v_I),  ṽ_T = Attn(t_f^(l), v_T)           alignment with the frozen features
    v^(l) = W_F [W_Id ṽ_I ; W_Td ṽ_T]                             fusion into one latent token
    i^(l) = i_f^(l) + α R_I,  t^(l) = t_f^(l) + α R_T               injection, α = 0.1
    L = L_CLIP + λ L_sep,  L_sep = ||W_Iu^T W_Tu|| + ||W_Id^T W_Td||,  λ = 0.6

Our reading (docs/methods.md gives the reasons):

* Attn(tokens, q) is single-head scaled dot-product attention with the routed latent as the query
  and the block's tokens (parameter-free LayerNorm) as keys and values: it returns one token.
* Every image carries its own latent; its text-side alignment attends over the tokens of all
  class prompts (the same for every image). Every class prompt carries its own latent too; having
  no image to look at, its image-side term is the routed latent itself. So an image's prediction
  depends on the image and the class set only, and the text tower runs once per class set.
* R_I = W_Iu v^(l), R_T = W_Tu v^(l): the fused latent routed back to each tower, added to every
  token. W_F, v^(0) and the routing biases start at zero, so the untrained model is zero-shot CLIP.
* ||·|| is the Frobenius norm of the cross-modal product through the latent space,
  ||W_Iu W_Tu^T|| and ||W_Id^T W_Td|| as torch stores them (the only products defined when the
  towers' widths differ); both are small exactly when the two modalities use orthogonal latent
  directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import TextBatch
from ..errors import ClipadaptError
from .base import Method, MethodConfig


@dataclass
class RMMAConfig(MethodConfig):
    """Latent size d, injection weight α, L_sep weight λ and the adapted blocks (1-based)."""

    template: str | None = "a photo of a {}."
    latent_dim: int = 64
    alpha: float = 0.1
    lambda_sep: float = 0.6
    first_block: int = 1
    last_block: int | None = None  # None: the last block


def _attend(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One token per query: softmax(q·K^T/√D) K, keys [.., N, D] already normalised."""
    scores = torch.einsum("...d,...nd->...n", query, keys) / keys.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("...n,...nd->...d", scores.softmax(dim=-1), keys)


class RMMA(Method):
    """One recurrent adapter shared by all blocks of both towers."""

    name = "rmma"
    Config = RMMAConfig
    acts_on_blocks = True
    image_depends_on_text = True
    training_defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "epochs": 5, "batch_size": 16,
                         "warmup_epochs": 0, "precision": "auto"}

    def __init__(self, config: RMMAConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        d, di, dt = config.latent_dim, backbone.image_width, backbone.text_width
        depth = min(len(backbone.image_blocks), len(backbone.text_blocks))
        self.first = config.first_block
        self.last = config.last_block or depth
        if not 1 <= self.first <= self.last <= depth:
            raise ClipadaptError(f"rmma blocks {self.first}..{self.last} do not fit a backbone of {depth} blocks")
        self.route_image = nn.Linear(d, di)  # W_Iu
        self.route_text = nn.Linear(d, dt)  # W_Tu
        self.down_image = nn.Linear(di, d)  # W_Id
        self.down_text = nn.Linear(dt, d)  # W_Td
        self.fuse = nn.Linear(2 * d, d)  # W_F
        self.latent0 = nn.Parameter(torch.zeros(d))  # v^(0)
        for layer in (self.fuse,):
            nn.init.zeros_(layer.weight)
        for layer in (self.fuse, self.route_image, self.route_text):
            nn.init.zeros_(layer.bias)
        self._pool_index: torch.Tensor | None = None
        self._text_context: dict[int, torch.Tensor] = {}
        self._img_latent: torch.Tensor | None = None
        self._txt_latent: torch.Tensor | None = None

    def begin_forward(self) -> None:
        """New latents for a new pass (the text context is kept for image-only passes)."""
        self._img_latent = self._txt_latent = None

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Remember each prompt's end-of-text position to mask padding in the text attention."""
        self._pool_index = batch.pool_index
        return batch

    def _fuse(self, aligned_image: torch.Tensor, aligned_text: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.down_image(aligned_image), self.down_text(aligned_text)], dim=-1))

    def step(self, index, backbone, img, txt):
        """Frozen block, then the shared adapter: align, fuse, inject (text before image)."""
        img, txt = super().step(index, backbone, img, txt)
        block = index + 1
        if not self.first <= block <= self.last or self.config.alpha == 0:
            return img, txt
        alpha = self.config.alpha
        if txt is not None:
            keys = F.layer_norm(txt, txt.shape[-1:])
            real = torch.arange(txt.shape[1], device=txt.device)[None, :] <= self._pool_index[:, None]  # [C, M]
            self._text_context[block] = keys[real]  # all real tokens of all class prompts, for the images
            w = self._txt_latent if self._txt_latent is not None else self.latent0.expand(txt.shape[0], -1)
            aligned_text = _attend(self.route_text(w), keys, real)
            w = self._fuse(self.route_image(w), aligned_text)  # a prompt has no image: its image term is routed only
            self._txt_latent = w
            txt = txt + alpha * self.route_text(w)[:, None, :].to(txt.dtype)
        if img is not None:
            if block not in self._text_context:
                raise ClipadaptError("rmma encodes images against the class prompts: encode the text first")
            keys = F.layer_norm(img, img.shape[-1:])
            v = self._img_latent if self._img_latent is not None else self.latent0.expand(img.shape[0], -1)
            aligned_image = _attend(self.route_image(v), keys)
            aligned_text = _attend(self.route_text(v), self._text_context[block])
            v = self._fuse(aligned_image, aligned_text)
            self._img_latent = v
            img = img + alpha * self.route_image(v)[:, None, :].to(img.dtype)
        return img, txt

    def separation_loss(self) -> torch.Tensor:
        """L_sep: Frobenius norms of the cross-modal products of routing and of down-projection."""
        up = self.route_image.weight @ self.route_text.weight.t()  # [D_I, D_T] through the latent
        down = self.down_image.weight.t() @ self.down_text.weight  # [D_I, D_T] through the latent
        return up.float().norm() + down.float().norm()

    def loss(self, logits, labels):
        """Symmetric contrastive loss (images vs class prompts) plus λ L_sep."""
        image_to_text = F.cross_entropy(logits, labels)
        # Text to image: each class in the batch against the batch's images; several may share it.
        present = labels.unique()
        cols = logits[:, present].t()  # [classes in batch, images]
        positive = labels[None, :] == present[:, None]
        text_to_image = (torch.logsumexp(cols, dim=1) - torch.logsumexp(cols.masked_fill(~positive, float("-inf")),
                                                                        dim=1)).mean()
        clip_loss = 0.5 * (image_to_text + text_to_image)
        sep = self.separation_loss()
        total = clip_loss + self.config.lambda_sep * sep
        return total, {"clip": clip_loss.item(), "i2t": image_to_text.item(), "t2i": text_to_image.item(),
                       "sep": sep.item()}
