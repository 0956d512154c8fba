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
* L_sep compares how the two modalities use the latent space, scale-free: for the cross-modal
  product through the latent (||W_Iu W_Tu^T||_F, the only product defined when the towers' widths
  differ), ||A B^T||_F^2 / (||A^T A||_F ||B^T B||_F), the cosine between the two latent Gram
  matrices, in [0, 1]; likewise for the down-projections. It is 0 exactly when the modalities use
  orthogonal latent directions and does not change when a weight is rescaled, so it cannot be
  lowered by shrinking the weights, and λ = 0.6 weighs a number of order one against the task loss.
  `sep_norm: frobenius` is the unnormalised ||A B^T||_F (large at initialisation: ~17 for ViT-B/16).
* `attn_proj` adds learned projections of width d to the attention: `qkv` (queries, keys, values
  D -> d; the d-wide result is the tower's aligned latent, so W_Id / W_Td are not needed) or `qkvo`
  (plus an output projection d -> D, then W_Id / W_Td as in the poster).
* `text_context` is what an image's text term attends over: `all` real tokens of all prompts, or
  `eot`, the end-of-text token of each class prompt (under the causal mask it has read the whole
  prompt, class name included; with `all` the template's shared prefix outnumbers the class names).
  The two tied on the synthetic world's validation splits (docs/methods.md); `eot` is the default.
* L_CLIP on a classification batch: image-to-text is the cross-entropy over all class prompts,
  text-to-image scores each class present in the batch against the batch's images (its images all
  positive). `contrastive: image_to_text` keeps the first half only: the second ranks images against
  each other, and on the synthetic world it mostly evens out per-image similarity offsets.
* The ablation table's switches remove one component each: `routing: shared`, `align: none`,
  `fusion: false`, `lambda_sep: 0`, `recurrent: false` (one adapter per block); docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import TextBatch
from ..errors import ClipadaptError
from ..validation import Range
from .base import Method, MethodConfig, Paper


@dataclass
class RMMAConfig(MethodConfig):
    """Latent size d, injection weight α, L_sep weight λ and the adapted blocks (1-based)."""

    option_ranges = {
        "latent_dim": Range(ge=1),
        "alpha": Range(ge=0),
        "lambda_sep": Range(ge=0),
        "first_block": Range(ge=1),
        "last_block": Range(ge=1),
    }

    template: str | None = "a photo of a {}."
    latent_dim: int = 64
    alpha: float = 0.1
    lambda_sep: float = 0.6
    first_block: int = 1
    last_block: int | None = None  # None: the last block
    sep_norm: str = (
        "gram"  # L_sep: gram (scale-free cosine of latent Gram matrices) | frobenius (unnormalised)
    )
    attn_proj: str = "none"  # learned attention projections: none | qkv | qkvo
    text_context: str = (
        "eot"  # an image's text keys: eot (one per class prompt) | all (every real token)
    )
    # The ablation table's switches (each removes one component; the defaults are the full R-MMA):
    routing: str = "modality"  # modality: W_Iu, W_Tu | shared: one projection for both towers
    align: str = "attention"  # attention | none: the routed latent passes through unchanged
    fusion: bool = (
        True  # False: no W_F; each tower keeps its own latent (v_I = W_Id ṽ_I, v_T = W_Td ṽ_T)
    )
    recurrent: bool = True  # False: one adapter per adapted block instead of one shared by all
    # L_CLIP: symmetric (the poster's: image-to-text and text-to-image) | image_to_text (cross-entropy over
    # the class prompts only, as MMA trains; docs/methods.md says why it is offered)
    contrastive: str = "symmetric"


SEP_NORMS = ("gram", "frobenius")
ATTN_PROJ = ("none", "qkv", "qkvo")
TEXT_CONTEXT = ("eot", "all")
ROUTING = ("modality", "shared")
ALIGN = ("attention", "none")
CONTRASTIVE = ("symmetric", "image_to_text")


class LatentAttention(nn.Module):
    """Attn(tokens, query) of one tower: one output token per query, optionally with learned projections."""

    def __init__(self, width: int, latent_dim: int, proj: str):
        super().__init__()
        self.proj = proj
        if proj != "none":
            self.q = nn.Linear(width, latent_dim)
            self.k = nn.Linear(width, latent_dim)
            self.v = nn.Linear(width, latent_dim)
        if proj == "qkvo":
            self.o = nn.Linear(latent_dim, width)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query [..., D], keys [..., N, D] (already normalised) -> [..., D] (or [..., d] for qkv)."""
        if self.proj == "none":
            return _attend(query, keys, keys, mask)
        out = _attend(self.q(query), self.k(keys), self.v(keys), mask)
        return self.o(out) if self.proj == "qkvo" else out


def _attend(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None
):
    """One token per query: softmax(q·K^T/√D) V, keys [.., N, D]."""
    scores = torch.einsum("...d,...nd->...n", query, keys) / keys.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("...n,...nd->...d", scores.softmax(dim=-1), values)


def _build_adapter(owner: nn.Module, d: int, di: int, dt: int, config: RMMAConfig) -> nn.Module:
    """Give `owner` one adapter's weights: routing, attention, down-projections and fusion (W_F zero, so that
    an untrained adapter adds nothing; without fusion the down-projections start at zero instead)."""
    if config.routing == "shared":
        owner.route_shared = nn.Linear(
            d, max(di, dt)
        )  # one W_u; each tower reads its first D outputs
        routes = (owner.route_shared,)
    else:
        owner.route_image = nn.Linear(d, di)  # W_Iu
        owner.route_text = nn.Linear(d, dt)  # W_Tu
        routes = (owner.route_image, owner.route_text)
    owner.attend_image = LatentAttention(di, d, config.attn_proj)
    owner.attend_text = LatentAttention(dt, d, config.attn_proj)
    # With qkv the attention already returns a d-wide latent: no down-projection follows it.
    owner.down_image = nn.Identity() if config.attn_proj == "qkv" else nn.Linear(di, d)  # W_Id
    owner.down_text = nn.Identity() if config.attn_proj == "qkv" else nn.Linear(dt, d)  # W_Td
    starts_at_zero = [owner.down_image, owner.down_text] if not config.fusion else []
    if config.fusion:
        owner.fuse = nn.Linear(2 * d, d)  # W_F
        starts_at_zero.append(owner.fuse)
    for layer in starts_at_zero:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    for layer in routes:
        nn.init.zeros_(layer.bias)
    return owner


class RMMA(Method):
    """One recurrent adapter shared by all blocks of both towers."""

    name = "rmma"
    paper = Paper(
        "R-MMA: a recurrent multi-modal adapter",
        "poster",
    )
    Config = RMMAConfig
    off_options = {"alpha": 0.0}  # the routed latent is mixed in with weight 0
    acts_on_blocks = True
    image_depends_on_text = True
    training_defaults = {
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 5e-4,
        "epochs": 5,
        "batch_size": 16,
        "warmup_epochs": 0,
        "precision": "auto",
    }

    def __init__(self, config: RMMAConfig, backbone, classnames):
        super().__init__(config, backbone, classnames)
        d, di, dt = config.latent_dim, backbone.image_width, backbone.text_width
        depth = min(len(backbone.image_blocks), len(backbone.text_blocks))
        self.first = config.first_block
        self.last = config.last_block or depth
        if not 1 <= self.first <= self.last <= depth:
            raise ClipadaptError(
                f"rmma blocks {self.first}..{self.last} do not fit a backbone of {depth} blocks"
            )
        for key, value, known in (
            ("sep_norm", config.sep_norm, SEP_NORMS),
            ("attn_proj", config.attn_proj, ATTN_PROJ),
            ("text_context", config.text_context, TEXT_CONTEXT),
            ("routing", config.routing, ROUTING),
            ("align", config.align, ALIGN),
            ("contrastive", config.contrastive, CONTRASTIVE),
        ):
            if value not in known:
                raise ClipadaptError(f"rmma {key} must be one of {known}, got '{value}'")
        if config.align == "none" and config.attn_proj != "none":
            raise ClipadaptError(
                "rmma align: none has no attention for attn_proj to project; use attn_proj: none"
            )
        if not config.fusion and config.attn_proj == "qkv":
            raise ClipadaptError(
                "rmma fusion: false keeps W_Id / W_Td as each tower's latent map, which attn_proj: "
                "qkv removes; use attn_proj none or qkvo"
            )
        self.widths = {"image": di, "text": dt}
        _build_adapter(
            self, d, di, dt, config
        )  # the adapter of the first adapted block (of every block if recurrent)
        # recurrent: false gives every further adapted block an adapter of its own (parameters grow with depth)
        self.block_adapters = nn.ModuleDict()
        if not config.recurrent:
            for block in range(self.first + 1, self.last + 1):
                self.block_adapters[str(block)] = _build_adapter(nn.Module(), d, di, dt, config)
        self.latent0 = nn.Parameter(torch.zeros(d))  # v^(0)
        self._pool_index: torch.Tensor | None = None
        self._text_context: dict[int, torch.Tensor] = {}
        self._img_latent: torch.Tensor | None = None
        self._txt_latent: torch.Tensor | None = None

    def _adapter(self, block: int) -> nn.Module:
        """The module holding block `block`'s adapter weights (this one, unless recurrent is off)."""
        return self.block_adapters[str(block)] if str(block) in self.block_adapters else self

    def _route(self, adapter: nn.Module, tower: str, latent: torch.Tensor) -> torch.Tensor:
        """W_Iu v or W_Tu v; with shared routing one projection whose first D_tower outputs serve each tower."""
        if self.config.routing == "shared":
            return adapter.route_shared(latent)[..., : self.widths[tower]]
        return (adapter.route_image if tower == "image" else adapter.route_text)(latent)

    def _align(
        self, adapter: nn.Module, tower: str, routed: torch.Tensor, keys=None, mask=None
    ) -> torch.Tensor:
        """Attn(tokens, routed latent); with align none, or no tokens to look at, the routed latent itself
        (through the value / output projections when there are any, so that the widths are those of Attn)."""
        attend = adapter.attend_image if tower == "image" else adapter.attend_text
        if keys is not None and self.config.align == "attention":
            return attend(routed, keys, mask)
        if self.config.attn_proj != "none":
            routed = attend.v(routed)
            routed = attend.o(routed) if self.config.attn_proj == "qkvo" else routed
        return routed

    def first_active_blocks(self, backbone) -> tuple[int, int]:
        """The latent is first injected after block `first_block` (1-based) of both towers."""
        return self.first - 1, self.first - 1

    def begin_forward(self) -> None:
        """New latents for a new pass (the text context is kept for image-only passes)."""
        self._img_latent = self._txt_latent = None

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """Remember each prompt's end-of-text position to mask padding in the text attention."""
        self._pool_index = batch.pool_index
        return batch

    def _next_latent(
        self, adapter: nn.Module, tower: str, aligned_image, aligned_text
    ) -> torch.Tensor:
        """v^(l) = W_F [W_Id ṽ_I ; W_Td ṽ_T]; without fusion, the tower's own term W_Id ṽ_I (or W_Td ṽ_T)."""
        if not self.config.fusion:
            return (
                adapter.down_image(aligned_image)
                if tower == "image"
                else adapter.down_text(aligned_text)
            )
        return adapter.fuse(
            torch.cat([adapter.down_image(aligned_image), adapter.down_text(aligned_text)], dim=-1)
        )

    def step(self, index, backbone, img, txt):
        """Frozen block, then the shared adapter: align, fuse, inject (text before image)."""
        img, txt = super().step(index, backbone, img, txt)
        block = index + 1
        if not self.first <= block <= self.last or self.config.alpha == 0:
            return img, txt
        alpha = self.config.alpha
        adapter = self._adapter(block)
        if txt is not None:
            keys = F.layer_norm(txt, txt.shape[-1:])
            real = (
                torch.arange(txt.shape[1], device=txt.device)[None, :] <= self._pool_index[:, None]
            )  # [C, M]
            if self.config.text_context == "eot":  # one key per class prompt, for the images
                self._text_context[block] = keys[
                    torch.arange(txt.shape[0], device=txt.device), self._pool_index
                ]
            else:  # all real tokens of all class prompts
                self._text_context[block] = keys[real]
            w = (
                self._txt_latent
                if self._txt_latent is not None
                else self.latent0.expand(txt.shape[0], -1)
            )
            aligned_text = self._align(adapter, "text", self._route(adapter, "text", w), keys, real)
            # A prompt has no image: its image term is the routed latent itself.
            w = self._next_latent(
                adapter,
                "text",
                self._align(adapter, "image", self._route(adapter, "image", w)),
                aligned_text,
            )
            self._txt_latent = w
            txt = txt + alpha * self._route(adapter, "text", w)[:, None, :].to(txt.dtype)
        if img is not None:
            if block not in self._text_context:
                raise ClipadaptError(
                    "rmma encodes images against the class prompts: encode the text first"
                )
            keys = F.layer_norm(img, img.shape[-1:])
            v = (
                self._img_latent
                if self._img_latent is not None
                else self.latent0.expand(img.shape[0], -1)
            )
            aligned_image = self._align(adapter, "image", self._route(adapter, "image", v), keys)
            aligned_text = (
                self._align(
                    adapter, "text", self._route(adapter, "text", v), self._text_context[block]
                )
                if self.config.fusion
                else None
            )  # without fusion the image's latent is its own term
            v = self._next_latent(adapter, "image", aligned_image, aligned_text)
            self._img_latent = v
            img = img + alpha * self._route(adapter, "image", v)[:, None, :].to(img.dtype)
        return img, txt

    def separation_loss(self) -> torch.Tensor:
        """L_sep: how much the routings (and the down-projections) of the two modalities overlap in the latent;
        the mean over the adapters when each block has its own."""
        adapters = [self, *self.block_adapters.values()]
        return sum(self._separation(a) for a in adapters) / len(adapters)

    def _separation(self, adapter: nn.Module) -> torch.Tensor:
        # Latent-side factors: routing weights are [D, d] (rows read the latent), down-projections [d, D].
        # A shared routing has no pair of modality projections to separate: only the down-projections count.
        pairs = (
            []
            if self.config.routing == "shared"
            else [(adapter.route_image.weight, adapter.route_text.weight)]
        )
        if isinstance(adapter.down_image, nn.Linear):
            pairs.append((adapter.down_image.weight.t(), adapter.down_text.weight.t()))
        total = torch.zeros((), device=self.latent0.device)
        for a, b in pairs:
            a, b = a.float(), b.float()
            if self.config.sep_norm == "frobenius":
                total = total + (a @ b.t()).norm()
            else:  # ||A B^T||_F^2 = <A^T A, B^T B>: the cosine of the two latent Gram matrices
                ga, gb = a.t() @ a, b.t() @ b
                total = total + (ga * gb).sum() / (ga.norm() * gb.norm()).clamp_min(1e-12)
        return total

    def loss(self, logits, labels):
        """Contrastive loss (images vs class prompts; symmetric by default) plus λ L_sep."""
        image_to_text = F.cross_entropy(logits, labels)
        # Text to image: each class in the batch against the batch's images; several may share it.
        present = labels.unique()
        cols = logits[:, present].t()  # [classes in batch, images]
        positive = labels[None, :] == present[:, None]
        text_to_image = (
            torch.logsumexp(cols, dim=1)
            - torch.logsumexp(cols.masked_fill(~positive, float("-inf")), dim=1)
        ).mean()
        symmetric = self.config.contrastive == "symmetric"
        clip_loss = 0.5 * (image_to_text + text_to_image) if symmetric else image_to_text
        sep = self.separation_loss()
        weighted = self.config.lambda_sep * sep
        total = clip_loss + weighted
        return total, {
            "clip": clip_loss.detach(),
            "i2t": image_to_text.detach(),
            "t2i": text_to_image.detach(),
            "sep": sep.detach(),
            "lambda_sep_x_sep": weighted.detach(),
        }
