"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank updates of the attention projections.
Follows the official code (MaxZanella/CLIP-LoRA, loralib/layers.py and loralib/utils.py):

    q = W_q h + b_q + s * B_q A_q drop(h)      likewise k and v (and the output projection with 'o')
    A in R^{r x D} (Kaiming-uniform, a = sqrt(5)),  B in R^{D x r} (zeros),  r = 2, alpha = 1
    s = alpha / sqrt(r)   (the official LoRALayer; the LoRA paper's alpha / r is `scaling: linear`)
    drop = Dropout(0.25), one per projection, active in training only

on every block of both towers. open_clip fuses the q/k/v projections into one `in_proj_weight`:
the frozen fused projection runs as it is, the low-rank terms are added to its q/k/v slices, and
the attention is computed here from the block's own modules, so no frozen weight is copied or
changed. With B = 0 (the initial state) the model is zero-shot CLIP, and at evaluation the
adapted forward equals CLIP with the merged weights W + s B A (both tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone
from ..errors import ClipadaptError
from ..validation import Range
from .base import Method, MethodConfig, Paper

ENCODERS = ("text", "vision", "both")
PROJECTIONS = ("q", "k", "v", "o")
POSITIONS = ("all", "bottom", "mid", "up", "half-up", "half-bottom", "top3")
SCALINGS = ("sqrt", "linear")
OFFICIAL_TEMPLATE = (
    "a photo of a {}."  # the effective dataset.template[0] of every official dataset file
)


@dataclass
class CLIPLoRAConfig(MethodConfig):
    """CLIP-LoRA's settings (official names: --r, --alpha, --dropout_rate, --encoder, --params, --position)."""

    option_ranges = {
        "alpha": Range(ge=0),
    }

    # The official prompt: every datasets/*.py of MaxZanella/CLIP-LoRA ends by assigning
    # template = ['a photo of a {}.'] (after the CoOp one, e.g. dtd.py's '{} texture.'), and lora.py
    # uses dataset.template[0]. None: that prompt, or the dataset's CoOp template with dataset_template.
    template: str | None = None
    dataset_template: bool = (
        False  # True: the dataset's CoOp template (the first line of the official files)
    )
    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    encoder: str = "both"
    params: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    position: str = "all"
    scaling: str = (
        "sqrt"  # sqrt: alpha/sqrt(rank) as the official code; linear: alpha/rank as the LoRA paper
    )


def lora_blocks(position: str, depth: int) -> list[int]:
    """0-based blocks a position name covers; for 12 blocks these are the official index lists."""
    third, half = depth // 3, depth // 2
    table = {
        "all": range(depth),
        "bottom": range(third),
        "mid": range(third, 2 * third),
        "up": range(2 * third, depth),
        "half-up": range(half, depth),
        "half-bottom": range(half),
        "top3": range(max(depth - 3, 0), depth),
    }
    if position not in table:
        raise ClipadaptError(f"clip_lora position must be one of {POSITIONS}, got '{position}'")
    return list(table[position])


def lora_scaling(config: CLIPLoRAConfig) -> float:
    """The factor s in W + s B A."""
    if config.scaling not in SCALINGS:
        raise ClipadaptError(f"clip_lora scaling must be one of {SCALINGS}, got '{config.scaling}'")
    return config.alpha / (math.sqrt(config.rank) if config.scaling == "sqrt" else config.rank)


class LowRank(nn.Module):
    """B A drop(x): the low-rank part of one projection (the scaling is applied by the caller)."""

    def __init__(self, width_in: int, width_out: int, rank: int, dropout: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, width_in))
        self.B = nn.Parameter(torch.zeros(width_out, rank))
        nn.init.kaiming_uniform_(
            self.A, a=math.sqrt(5)
        )  # as nn.Linear's default, like the official code
        self.dropout = nn.Dropout(dropout)

    def delta_weight(self) -> torch.Tensor:
        """B A, the update of the frozen weight."""
        return self.B @ self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B A drop(x)."""
        return self.dropout(x) @ self.A.to(x.dtype).t() @ self.B.to(x.dtype).t()


def check_attention(block: nn.Module, where: str) -> nn.MultiheadAttention:
    """The block's attention, which must be torch's MultiheadAttention with a fused in-projection."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
        raise ClipadaptError(
            f"clip_lora needs open_clip's standard attention (fused in_proj_weight) in {where}"
        )
    return attn


def official_adapter(
    path: str, dropout: float = CLIPLoRAConfig.dropout, text_depth: int = 12, image_depth: int = 12
) -> tuple[CLIPLoRAConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official CLIP-LoRA file (save_lora's .pt); rank, alpha, towers,
    projections and position read from its metadata; the towers' depths (12 for ViT-B/16) map layer_i to blocks."""
    from ..official_checkpoints import read_saved_object

    saved = read_saved_object(path, "CLIP-LoRA", "file")
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("weights"), dict)
        or not isinstance(saved.get("metadata"), dict)
    ):
        raise ClipadaptError(
            f"'{path}' is not an official CLIP-LoRA file (save_lora's 'weights' and 'metadata')"
        )
    meta = saved["metadata"]
    missing = [k for k in ("r", "alpha", "encoder", "params", "position") if k not in meta]
    if missing:
        raise ClipadaptError(f"'{path}': CLIP-LoRA metadata lacks {missing}")
    if meta["position"] not in POSITIONS:
        raise ClipadaptError(
            f"'{path}': CLIP-LoRA position '{meta['position']}' is not one clipadapt builds "
            f"({', '.join(POSITIONS)})"
        )
    config = CLIPLoRAConfig(
        rank=int(meta["r"]),
        alpha=float(meta["alpha"]),
        dropout=dropout,
        encoder=str(meta["encoder"]),
        params=[p for p in PROJECTIONS if p in meta["params"]],
        position=str(meta["position"]),
    )
    slots = []  # (our tower prefix, block) in apply_lora's order
    if config.encoder in ("text", "both"):
        slots += [("text_lora", b) for b in lora_blocks(config.position, text_depth)]
    if config.encoder in ("vision", "both"):
        slots += [("image_lora", b) for b in lora_blocks(config.position, image_depth)]
    layers = saved["weights"]
    if len(layers) != len(slots):
        raise ClipadaptError(
            f"'{path}' holds {len(layers)} LoRA layers; encoder '{config.encoder}' at position "
            f"'{config.position}' on towers of {text_depth} text / {image_depth} image blocks "
            f"has {len(slots)}"
        )
    state = {}
    for i, (tower, block) in enumerate(slots):
        layer = layers.get(f"layer_{i}")
        if not isinstance(layer, dict):
            raise ClipadaptError(f"'{path}' has no 'layer_{i}' in its CLIP-LoRA weights")
        for official, ours in OFFICIAL_PROJECTIONS.items():
            if ours in config.params:
                try:
                    pair = layer[official]
                    state[f"{tower}.{block}.{ours}.A"] = pair["w_lora_A"]
                    state[f"{tower}.{block}.{ours}.B"] = pair["w_lora_B"]
                except (KeyError, TypeError):
                    raise ClipadaptError(
                        f"'{path}': layer_{i} lacks {official}.w_lora_A / w_lora_B"
                    ) from None
    return config, state


class CLIPLoRA(Method):
    """Low-rank q/k/v updates in every block of both towers."""

    name = "clip_lora"
    paper = Paper(
        "Low-Rank Few-Shot Adaptation of Vision-Language Models (CLIP-LoRA)",
        "CVPRW 2024",
        "https://arxiv.org/abs/2405.18541",
    )
    official_adapter = staticmethod(official_adapter)
    Config = CLIPLoRAConfig
    off_options = {"alpha": 0.0}  # s = alpha / sqrt(r) = 0
    acts_on_blocks = True
    # The official schedule is 500 x K iterations with a per-iteration cosine (eta_min 1e-6); the
    # engine counts epochs: 500 K iterations of 32 images over K C images are 16000 / C epochs
    # whatever K is (16 for ImageNet's 1000 classes; docs/methods.md lists the others).
    training_defaults = {
        "optimizer": "adamw",
        "lr": 2e-4,
        "weight_decay": 1e-2,
        "betas": [0.9, 0.999],
        "batch_size": 32,
        "epochs": 16,
        "warmup_epochs": 0,
        "precision": "auto",
    }

    def __init__(self, config: CLIPLoRAConfig, backbone: Backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        if config.encoder not in ENCODERS:
            raise ClipadaptError(
                f"clip_lora encoder must be one of {ENCODERS}, got '{config.encoder}'"
            )
        unknown = sorted(set(config.params) - set(PROJECTIONS))
        if unknown or not config.params:
            raise ClipadaptError(
                f"clip_lora params must be a non-empty subset of {PROJECTIONS}, got {config.params}"
            )
        if config.rank < 1:
            raise ClipadaptError(f"clip_lora rank must be >= 1, got {config.rank}")
        if not 0.0 <= config.dropout < 1.0:
            raise ClipadaptError(f"clip_lora dropout must lie in [0, 1), got {config.dropout}")
        self.scaling = lora_scaling(config)
        if not config.template and not config.dataset_template:
            self.config.template = OFFICIAL_TEMPLATE
        params = [p for p in PROJECTIONS if p in config.params]  # fixed order: q, k, v, o

        def tower(blocks: nn.ModuleList, width: int, where: str) -> nn.ModuleDict:
            adapted = {}
            for b in lora_blocks(config.position, len(blocks)):
                check_attention(blocks[b], f"{where} block {b}")
                adapted[str(b)] = nn.ModuleDict(
                    {p: LowRank(width, width, config.rank, config.dropout) for p in params}
                )
            return nn.ModuleDict(adapted)

        empty = nn.ModuleDict()
        self.image_lora = (
            tower(backbone.image_blocks, backbone.image_width, "the image tower")
            if config.encoder in ("vision", "both")
            else empty
        )
        self.text_lora = (
            tower(backbone.text_blocks, backbone.text_width, "the text tower")
            if config.encoder in ("text", "both")
            else nn.ModuleDict()
        )

    def first_active_blocks(self, backbone: Backbone) -> tuple[int, int]:
        """The lowest block with a low-rank update in each tower (the tower's depth when it has none)."""

        def first(loras: nn.ModuleDict, depth: int) -> int:
            return min((int(b) for b in loras), default=depth)

        return first(self.image_lora, len(backbone.image_blocks)), first(
            self.text_lora, len(backbone.text_blocks)
        )

    def merged_weights(self, tower: str, index: int, block: nn.Module) -> dict[str, torch.Tensor]:
        """W + s B A of each adapted projection of a block (new tensors; the frozen ones are untouched)."""
        loras = (self.image_lora if tower == "image" else self.text_lora)[str(index)]
        attn, d = block.attn, block.attn.embed_dim
        frozen = {
            "q": attn.in_proj_weight[:d],
            "k": attn.in_proj_weight[d : 2 * d],
            "v": attn.in_proj_weight[2 * d :],
            "o": attn.out_proj.weight,
        }
        return {
            p: frozen[p] + self.scaling * lora.delta_weight().to(frozen[p].dtype)
            for p, lora in loras.items()
        }

    def adapted_block(
        self, block: nn.Module, loras: nn.ModuleDict, x: torch.Tensor, attn_mask
    ) -> torch.Tensor:
        """open_clip's residual block on [batch, tokens, width] with the low-rank terms added."""
        attn = block.attn
        d, heads = attn.embed_dim, attn.num_heads
        h = block.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).split(
            d, dim=-1
        )  # the frozen fused projection
        s = self.scaling
        if "q" in loras:
            q = q + s * loras["q"](h)
        if "k" in loras:
            k = k + s * loras["k"](h)
        if "v" in loras:
            v = v + s * loras["v"](h)
        n, length = x.shape[0], x.shape[1]
        q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        mask = None if attn_mask is None else attn_mask.to(q.dtype)
        out = (
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            .transpose(1, 2)
            .reshape(n, length, d)
        )
        o = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
        if "o" in loras:
            o = o + s * loras["o"](out)
        x = x + block.ls_1(o)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def step(self, index, backbone, img, txt):
        """Adapted blocks run through adapted_block, the others as open_clip's own."""
        if img is not None and index < len(backbone.image_blocks):
            if str(index) in self.image_lora:
                img = self.adapted_block(
                    backbone.image_blocks[index], self.image_lora[str(index)], img, None
                )
            else:
                img = backbone.image_block(index, img)
        if txt is not None and index < len(backbone.text_blocks):
            if str(index) in self.text_lora:
                mask = backbone.text_attn_mask(txt.shape[1])
                txt = self.adapted_block(
                    backbone.text_blocks[index], self.text_lora[str(index)], txt, mask
                )
            else:
                txt = backbone.text_block(index, txt)
        return img, txt


# ---- checkpoints of the official code ----------------------------------------------------------
# loralib/utils.py save_lora writes torch.save({"weights": {"layer_i": {"q_proj" | "k_proj" | "v_proj" |
# "proj": {"w_lora_A": [r, D], "w_lora_B": [D, r]}}}, "metadata": {r, alpha, encoder, params, position}}),
# layer_i numbering apply_lora's list: the text tower's adapted blocks first, then the vision tower's.
OFFICIAL_PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "proj": "o"}
