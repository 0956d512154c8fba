"""MMA of arXiv 2409.02958: multi-head attention over CLIP's output embeddings of both modalities.

This is the function the authors' published code computes (GitHub reprostudy/mm-adapter:
`MaskedMultiheadAttentionDownsampled` and `CLIPTransformerAdapterText.forward`). For each image b
separately, with t_1..t_C the L2-normalised frozen class-text features and i_b the L2-normalised
frozen image feature (width D):

    z        = down([t_1, ..., t_C, i_b])             down = Linear(D->32), Linear(32->128)
    z'       = MHA_4heads(z, z, z, mask)              mask ADDED to the scores: +1 between a prompt
                                                      and the image, 0 elsewhere; nothing blocked
    o        = up(z')                                 up = Linear(128->32), GELU, Linear(32->D)
    f'       = normalise(r * normalise(o_f) + (1 - r) * f)     r = 0.2, for the image and each prompt
    logit_bc = exp(τ) <i'_b, t'_c(b)>

Every image has its own adapted text features, so an image's scores depend on it and the class
prompts only, and no label is needed at test time. `mask="blocked"` is the seed summary's literal
reading (prompt<->prompt attention blocked with -inf, a prompt still sees itself and the image);
`mask="none"` adds nothing.

The text tokens are the same for every image, so the prompt-to-prompt part of the attention is
computed once per batch and each image only adds its own key: an exact rewrite of the per-image
softmax that costs O(C^2 + B*C) instead of O(B*C^2) (tested against nn.MultiheadAttention run on the
literal per-image sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClipadaptError
from ..validation import Range
from .base import Method, MethodConfig, Paper

MASKS = ("bias", "blocked", "none")


@dataclass
class MMAAttnConfig(MethodConfig):
    """Widths, heads, mask and the residual weight of the authors' adapter."""

    option_ranges = {
        "heads": Range(ge=1),
        "residual": Range(ge=0, le=1),
    }

    bottleneck: int = 32  # D -> 32 -> attn_dim and attn_dim -> 32 -> D, as the reference
    attn_dim: int = 128  # the attention's width (the reference's `downsamling_dim`)
    heads: int = 4
    residual: float = (
        0.2  # r: the adapted direction's weight (the reference's image_ratio / text_ratio)
    )
    mask: str = "bias"  # bias: the authors' +1 between prompts and image | blocked | none
    image_chunk: int = 128  # images adapted at once (memory only; results do not depend on it)


class MMAAttn(Method):
    """Attention adapter on output embeddings: each image attends with all class prompts."""

    name = "mma_attn"
    paper = Paper(
        "MMA of arXiv 2409.02958 (masked attention over output embeddings)",
        "arXiv 2409.02958",
        "https://arxiv.org/abs/2409.02958",
    )
    Config = MMAAttnConfig
    off_options = {"residual": 0.0}  # no adapted direction mixed in
    output_only = True
    prompt_sets = "mean"  # frozen text: the ensemble mean is computed once
    # The reference's Learner: Adam (wd 1e-4), no schedule (its cosine call is commented out), up to
    # 100 epochs, early stopping with patience 10 on validation accuracy, the best epoch's weights.
    # lr 0.005 and batch 256 are the paper's. Computed in fp32, as the reference casts to float32.
    training_defaults = {
        "optimizer": "adam",
        "lr": 0.005,
        "weight_decay": 1e-4,
        "epochs": 100,
        "batch_size": 256,
        "warmup_epochs": 0,
        "schedule": "constant",
        "patience": 10,
        "keep": "best_val",
        "precision": "fp32",
        "augment": False,
    }

    def __init__(self, config: MMAAttnConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        if config.mask not in MASKS:
            raise ClipadaptError(f"mma_attn mask must be one of {MASKS}, got '{config.mask}'")
        if config.attn_dim % config.heads:
            raise ClipadaptError(
                f"mma_attn attn_dim {config.attn_dim} is not divisible by heads {config.heads}"
            )
        d, r, e = backbone.embed_dim, config.bottleneck, config.attn_dim
        # Submodule names and indices as the reference, so its state dict (keys 'adapter.*') loads.
        self.downsampler = nn.Sequential(nn.Linear(d, r), nn.Linear(r, e))
        self.mha = nn.MultiheadAttention(e, config.heads)
        self.upsampler = nn.Sequential(nn.Linear(e, r), nn.GELU(), nn.Linear(r, d))

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values of the attention's in-projection, as [..., heads, head_dim]."""
        qkv = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias)
        return tuple(part.unflatten(-1, (self.config.heads, -1)) for part in qkv.chunk(3, dim=-1))

    def adapt(self, img_f: torch.Tensor, txt_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted image features [B, D] and each image's adapted class-text features [B, C, D]."""
        img = F.normalize(img_f.float(), dim=-1)
        txt = F.normalize(txt_f.float(), dim=-1)
        qt, kt, vt = self._split_heads(self.downsampler(txt))  # [C, H, d]
        qi, ki, vi = self._split_heads(self.downsampler(img))  # [B, H, d]
        scale = qt.shape[-1] ** -0.5
        cross = 0.0 if self.config.mask == "none" else 1.0  # added to every prompt<->image score

        # Prompt queries. Keys: the C prompts (the same for every image) and this image.
        s_tt = torch.einsum("chd,khd->hck", qt, kt) * scale  # [H, C, C]
        if self.config.mask == "blocked":
            eye = torch.eye(s_tt.shape[-1], dtype=torch.bool, device=s_tt.device)
            s_tt = s_tt.masked_fill(~eye, float("-inf"))
        m_tt = s_tt.amax(dim=-1)  # [H, C]
        p_tt = (s_tt - m_tt[..., None]).exp()
        num_tt = torch.einsum(
            "hck,khd->hcd", p_tt, vt
        )  # softmax numerator over the prompts, unnormalised
        den_tt = p_tt.sum(dim=-1)
        s_ti = torch.einsum("chd,bhd->bhc", qt, ki) * scale + cross  # [B, H, C]
        m = torch.maximum(m_tt.unsqueeze(0), s_ti)
        a, e = (m_tt - m).exp(), (s_ti - m).exp()
        out_t = (a[..., None] * num_tt + e[..., None] * vi[:, :, None, :]) / (a * den_tt + e)[
            ..., None
        ]
        out_t = out_t.permute(0, 2, 1, 3).flatten(-2)  # [B, C, attn_dim]

        # Image queries. Keys: the C prompts and the image itself.
        s_it = torch.einsum("bhd,khd->bhk", qi, kt) * scale + cross
        s_ii = (qi * ki).sum(dim=-1, keepdim=True) * scale
        att = torch.cat([s_it, s_ii], dim=-1).softmax(dim=-1)  # [B, H, C + 1]
        out_i = (torch.einsum("bhk,khd->bhd", att[..., :-1], vt) + att[..., -1:] * vi).flatten(-2)

        out_i = self.upsampler(self.mha.out_proj(out_i))
        out_t = self.upsampler(self.mha.out_proj(out_t))
        r = self.config.residual
        img = F.normalize(r * F.normalize(out_i, dim=-1) + (1 - r) * img, dim=-1)
        txt = F.normalize(r * F.normalize(out_t, dim=-1) + (1 - r) * txt, dim=-1)
        return img, txt

    def logits(self, img_f, txt_f, logit_scale):
        """exp(τ) <i'_b, t'_c(b)> for every image b and class c, in chunks of images."""
        if self.config.residual == 0:
            return super().logits(img_f, txt_f, logit_scale)
        scores = []
        for start in range(0, img_f.shape[0], self.config.image_chunk):
            img, txt = self.adapt(img_f[start : start + self.config.image_chunk], txt_f)
            scores.append(torch.einsum("bd,bcd->bc", img, txt))
        return logit_scale * torch.cat(scores)


def load_reference_state(method: MMAAttn, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights trained with the authors' code (keys 'adapter.*'; CLIP's own keys are ignored)."""
    prefix = "adapter."
    state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not state:
        raise ClipadaptError(
            "no 'adapter.*' keys: not a state dict of the authors' CLIPTransformerAdapterText"
        )
    try:
        method.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ClipadaptError(
            f"the reference state dict does not fit this mma_attn: {err}"
        ) from None
