"""MMA (Yang et al., CVPR 2024): adapters in the higher blocks of both towers, with a projection
shared across modalities. Follows the official code (ZjjConan/Multi-Modal-Adapter) exactly:

    y_l = s * up_l^m( shared_l( down_l^m( ln_1(x_l) ) ) )        m in {image, text}
    x_{l+1} = Block_l(x_l) + y_l                                   for l in [start, end]

with down = Linear(D->r)+ReLU, shared = Linear(r->r)+ReLU (one per block, used by both towers),
up = Linear(r->D), Kaiming-normal (fan_out) weights, zero biases. The gradient reaching the adapter
is multiplied by 1/s so its parameters learn as if s were 1 (the official GradientScaleLayer),
while the gradient it passes on to x stays exact.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import Backbone, at_queries
from ..errors import ClipadaptError
from ..official_checkpoints import check_state_fits, read_state_dict
from ..validation import Range
from .base import Method, MethodConfig, Paper


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by `factor` backward."""
    return _GradScale.apply(x, factor)


@dataclass
class MMAConfig(MethodConfig):
    """MMA's settings; block indices are 1-based and inclusive, as in the official config."""

    option_ranges = {
        "adapter_start": Range(ge=1),
        "adapter_end": Range(ge=1),
        "adapter_dim": Range(ge=1),
        "scale": Range(ge=0),
    }

    template: str | None = "a photo of a {}."
    adapter_start: int | None = (
        None  # None: the top two thirds of the blocks (5 of 12 for ViT-B/16)
    )
    adapter_end: int | None = None  # None: the last block
    adapter_dim: int = 32
    scale: float = 0.001


def adapted_block_range(config: MMAConfig, depth: int) -> tuple[int, int]:
    """1-based first and last adapted block for a backbone of `depth` blocks."""
    start = (
        config.adapter_start
        if config.adapter_start is not None
        else depth - round(2 * depth / 3) + 1
    )
    end = config.adapter_end if config.adapter_end is not None else depth
    if not 1 <= start <= end <= depth:
        raise ClipadaptError(
            f"adapter blocks {start}..{end} do not fit a backbone of {depth} blocks "
            f"(need 1 <= adapter_start <= adapter_end <= {depth})"
        )
    return start, end


def init_adapter_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) weights and zero biases, as the official MMA code."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _tower_adapter(width: int, dim: int) -> nn.Sequential:
    # Named as in the official state dict ("<tower>_adapter.<block>.down.0.weight"), so its
    # checkpoints load key for key.
    return nn.Sequential(
        OrderedDict(
            [
                ("down", nn.Sequential(nn.Linear(width, dim), nn.ReLU())),
                ("up", nn.Linear(dim, width)),
            ]
        )
    )


def official_adapter(
    path: str, scale: float = MMAConfig.scale
) -> tuple[MMAConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an official MMA checkpoint, under this module's names (they are the same)."""
    state = official_state_dict(path)
    return official_config(state, scale, path), state


class MMA(Method):
    """Multi-Modal Adapter inside the upper blocks of both towers."""

    name = "mma"
    paper = Paper(
        "MMA: Multi-Modal Adapter for Vision-Language Models",
        "CVPR 2024",
        "https://github.com/ZjjConan/Multi-Modal-Adapter",
    )
    official_adapter = staticmethod(official_adapter)
    Config = MMAConfig
    off_options = {"scale": 0.0}  # every adapter output scaled to zero
    acts_on_blocks = True
    prompt_sets = "draw"
    pooled_final_block = True  # the adapter reads ln_1 of the block input at the same token
    training_defaults = {
        "optimizer": "sgd",
        "lr": 0.0015,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 5,
        "batch_size": 16,
        "warmup_epochs": 0,
        "precision": "auto",
    }

    def __init__(self, config: MMAConfig, backbone: Backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        depth = min(len(backbone.image_blocks), len(backbone.text_blocks))
        self.start, self.end = adapted_block_range(config, depth)
        blocks = [str(b) for b in range(self.start, self.end + 1)]
        r = config.adapter_dim
        self.visual_adapter = nn.ModuleDict(
            {b: _tower_adapter(backbone.image_width, r) for b in blocks}
        )
        self.text_adapter = nn.ModuleDict(
            {b: _tower_adapter(backbone.text_width, r) for b in blocks}
        )
        self.shared_adapter = nn.ModuleDict(
            {b: nn.Sequential(nn.Linear(r, r), nn.ReLU()) for b in blocks}
        )
        init_adapter_weights(self)

    def first_active_blocks(self, backbone: Backbone) -> tuple[int, int]:
        """The first adapter sits after block `adapter_start` (1-based) of each tower: its input is frozen."""
        return self.start - 1, self.start - 1

    def is_adapted(self, index: int) -> bool:
        """Whether 0-based block `index` carries an adapter."""
        return self.start <= index + 1 <= self.end

    def bottleneck(self, tower: str, index: int, x_norm: torch.Tensor) -> torch.Tensor:
        """The modality-specific down-projection of ln_1(x) (the part RMAdapter shares)."""
        adapters = self.visual_adapter if tower == "image" else self.text_adapter
        return adapters[str(index + 1)].down(x_norm)

    def adapter_output(self, tower: str, index: int, down: torch.Tensor) -> torch.Tensor:
        """Shared projection, then the modality's up-projection, from the bottleneck."""
        adapters = self.visual_adapter if tower == "image" else self.text_adapter
        return adapters[str(index + 1)].up(self.shared_adapter[str(index + 1)](down))

    def adapt(
        self, tower: str, index: int, block: nn.Module, x: torch.Tensor, queries=None
    ) -> torch.Tensor | float:
        """The scaled residual the adapter adds after block `index` (at the query positions only, when given)."""
        s = self.config.scale
        if s == 0:
            return 0.0
        x_norm = block.ln_1(grad_scale(at_queries(x, queries), s))
        y = self.adapter_output(tower, index, self.bottleneck(tower, index, x_norm)) * s
        return grad_scale(y, 1.0 / s)

    def step(self, index, backbone, img, txt, queries=None):
        """Run block `index`; add the adapter's output after the MLP residual of adapted blocks."""
        if not self.is_adapted(index):
            return super().step(index, backbone, img, txt, queries)
        q_img, q_txt = (queries or {}).get("image"), (queries or {}).get("text")
        if img is not None:
            img = backbone.image_block(index, img, q_img) + self.adapt(
                "image", index, backbone.image_blocks[index], img, q_img
            )
        if txt is not None:
            txt = backbone.text_block(index, txt, q_txt) + self.adapt(
                "text", index, backbone.text_blocks[index], txt, q_txt
            )
        return img, txt


OFFICIAL_PREFIXES = ("visual_adapter.", "text_adapter.", "shared_adapter.")


def official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The adapter tensors of a checkpoint saved by the official MMA (or MMA++) code (Dassl's format)."""
    kept = {
        k: v for k, v in read_state_dict(path, "MMA").items() if k.startswith(OFFICIAL_PREFIXES)
    }
    if not kept:
        raise ClipadaptError(
            f"'{path}' has no MMA adapter weights (keys starting with {', '.join(OFFICIAL_PREFIXES)})"
        )
    return kept


def official_config(
    state: dict[str, torch.Tensor], scale: float = 0.001, path: str = "checkpoint"
) -> MMAConfig:
    """The MMAConfig an official state dict was trained with (blocks and width read off its keys)."""
    try:
        blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("shared_adapter.")})
    except (IndexError, ValueError):
        blocks = []
    if not blocks or f"shared_adapter.{blocks[0]}.0.weight" not in state:
        raise ClipadaptError(
            f"'{path}' has no 'shared_adapter.<block>.0.weight' tensors: the official MMA "
            "checkpoint holds visual_adapter.*, text_adapter.* and shared_adapter.* keys"
        )
    dim = state[f"shared_adapter.{blocks[0]}.0.weight"].shape[0]
    return MMAConfig(adapter_start=blocks[0], adapter_end=blocks[-1], adapter_dim=dim, scale=scale)


def load_official(model, path: str) -> None:
    """Load an official MMA or MMA++ checkpoint (model-best.pth.tar, model.pth.tar-N) into an `mma` / `mma_pp` model."""
    if getattr(model.method, "name", None) not in ("mma", "mma_pp"):  # MMA++ saves the same keys
        raise ClipadaptError(
            f"load_official needs an 'mma' or 'mma_pp' model, got '{model.method.name}'"
        )
    state = official_state_dict(path)
    check_state_fits(model.method, state, path)
    model.method.load_state_dict({k: v.float() for k, v in state.items()})
    model._text_cache = None
