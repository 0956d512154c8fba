"""open_clip models driven block by block from outside (their weights come from `weights.py`).

The frozen CLIP is never patched: the stepper calls open_clip's own modules (`conv1`, `ln_pre`,
`transformer.resblocks`, `ln_post`, `proj`; `token_embedding`, `attn_mask`, `ln_final`,
`text_projection`) so that a method can act before, inside or after any block.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from .errors import ClipadaptError
from .weights import create_clip


@dataclass
class TextBatch:
    """Token embeddings of a set of prompts and the position each prompt is pooled at."""

    embeddings: torch.Tensor  # [prompts, context, width], before positional embeddings
    pool_index: torch.Tensor  # [prompts], the end-of-text position for CLIP's tokenizer

    def to(self, device) -> TextBatch:
        """Move to a device."""
        return TextBatch(self.embeddings.to(device), self.pool_index.to(device))


def _plain_attention_block(block: nn.Module) -> bool:
    """Whether a block is open_clip's ResidualAttentionBlock with torch's plain self-attention."""
    attn = getattr(block, "attn", None)
    return (
        isinstance(block, ResidualAttentionBlock)
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.dropout == 0.0
    )


def _block_with_grad(block: nn.Module, x: torch.Tensor, attn_mask) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock on [batch, tokens, width], computed from the block's own modules.

    The same function as calling the block. When a gradient is needed, torch's MultiheadAttention
    leaves its fused kernel and projects a transposed view of the tokens, which becomes a batched
    matrix product against the weight broadcast over the tokens (about twice the time of one matrix
    product on the CPU, forward and backward; benchmarks/README.md). Here the projections are plain
    matrix products on the batch-first tokens."""
    attn = block.attn
    width, heads = attn.embed_dim, attn.num_heads
    n, length = x.shape[0], x.shape[1]
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).split(width, dim=-1)
    q, k, v = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    mask = None if attn_mask is None else attn_mask.to(q.dtype)
    out = (
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        .transpose(1, 2)
        .reshape(n, length, width)
    )
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def at_queries(x: torch.Tensor, queries) -> torch.Tensor:
    """Tokens of x [N, L, W] at the query positions as [N, 1, W]: position `queries` of every sequence
    (an int), position `queries[i]` of sequence i (a tensor), or x itself when queries is None."""
    if queries is None:
        return x
    if isinstance(queries, int):
        return x[:, queries : queries + 1]
    return x[torch.arange(x.shape[0], device=x.device), queries].unsqueeze(1)


def _block_at_queries(block: nn.Module, x: torch.Tensor, attn_mask, queries) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock on [N, L, W], its output at the query positions only ([N, 1, W]).

    Keys and values need every token; the query projection, the attention rows, the out-projection,
    the residuals, ln_2 and the MLP only the queried ones (a head that pools one token reads nothing
    else of the last block). The same function as the whole block followed by `at_queries`."""
    attn = block.attn
    width, heads = attn.embed_dim, attn.num_heads
    n, length = x.shape[0], x.shape[1]
    h = block.ln_1(x)
    w_q, w_kv = attn.in_proj_weight.split([width, 2 * width])
    b_q, b_kv = (
        (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.split([width, 2 * width])
    )
    k, v = F.linear(h, w_kv, b_kv).split(width, dim=-1)
    q = F.linear(at_queries(h, queries), w_q, b_q)
    q = q.reshape(n, 1, heads, width // heads).transpose(1, 2)
    k, v = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in (k, v))
    mask = None
    if attn_mask is not None:  # the mask's rows of the queried positions, broadcast over the heads
        rows = attn_mask[queries : queries + 1] if isinstance(queries, int) else attn_mask[queries]
        mask = rows.to(q.dtype).reshape(rows.shape[0], 1, 1, length)
    out = (
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n, 1, width)
    )
    x = at_queries(x, queries) + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _run_block(
    block: nn.Module, x: torch.Tensor, attn_mask, batch_first: bool, queries=None
) -> torch.Tensor:
    if queries is not None:
        if _plain_attention_block(block):
            return _block_at_queries(block, x, attn_mask, queries)
        return at_queries(
            _run_block(block, x, attn_mask, batch_first), queries
        )  # other blocks: whole, then cut
    if x.requires_grad and torch.is_grad_enabled() and _plain_attention_block(block):
        return _block_with_grad(block, x, attn_mask)
    if batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


class Backbone(nn.Module):
    """A frozen open_clip model with its two towers exposed as stem, blocks and head."""

    at_queries = staticmethod(at_queries)

    def __init__(
        self, clip_model: nn.Module, tokenizer, name: str, identity: str, quick_gelu: bool
    ):
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.name = name
        self.identity = identity
        self.quick_gelu = quick_gelu
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()

        visual = clip_model.visual
        self.steppable_image = hasattr(visual, "transformer") and hasattr(visual, "_embeds")
        # The text tower lives on the CLIP module itself or, for CustomTextCLIP, on `.text`.
        text = clip_model.text if hasattr(clip_model, "text") else clip_model
        if getattr(text, "cls_emb", None) is not None:
            raise ClipadaptError(
                f"backbone '{name}': text towers with a class token are not supported"
            )
        if not hasattr(text, "token_embedding"):
            raise ClipadaptError(
                f"backbone '{name}': only open_clip's own text transformer is supported"
            )
        self.__dict__["_text"] = text  # not registered twice: it is already inside self.clip
        self.pool_type = getattr(text, "pool_type", None) or getattr(
            clip_model, "text_pool_type", "argmax"
        )
        # With a causal mask, tokens after the pooled one never influence it: cutting them is exact.
        self.cut_text = text.attn_mask is not None and self.pool_type in ("argmax", "eos")

    # ---- shapes -------------------------------------------------------------------------------
    @property
    def image_blocks(self) -> nn.ModuleList:
        """The image tower's residual attention blocks."""
        return self.clip.visual.transformer.resblocks

    @property
    def text_blocks(self) -> nn.ModuleList:
        """The text tower's residual attention blocks."""
        return self._text.transformer.resblocks

    @property
    def image_width(self) -> int:
        """Token width of the image transformer."""
        return self.clip.visual.transformer.width

    @property
    def text_width(self) -> int:
        """Token width of the text transformer."""
        return self._text.transformer.width

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text embedding."""
        proj = self._text.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def image_size(self) -> int:
        """Input resolution of the image tower."""
        size = self.clip.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the frozen weights."""
        return self._text.token_embedding.weight.dtype

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature, exponentiated."""
        return self.clip.logit_scale.exp()

    @property
    def preprocess_cfg(self) -> dict:
        """open_clip's preprocessing settings (size, mean, std, interpolation)."""
        return open_clip.get_model_preprocess_cfg(self.clip)

    def train(self, mode: bool = True):
        """The frozen model always stays in eval mode (no dropout, no patch dropout)."""
        super().train(mode)
        self.clip.eval()
        return self

    # ---- text ---------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [len(texts), context] with open_clip's tokenizer for this model."""
        return self.tokenizer(texts)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position each tokenized prompt is pooled at."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self._text.text_eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long)
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings of token ids."""
        return self._text.token_embedding(tokens)

    def text_batch(self, texts: list[str]) -> TextBatch:
        """Tokenize prompts and embed their tokens."""
        tokens = self.tokenize(texts)
        with torch.no_grad():
            embeddings = self.embed_tokens(tokens.to(self._text.token_embedding.weight.device))
        return TextBatch(embeddings, self.pool_index(tokens).to(embeddings.device))

    def text_length(self, batch: TextBatch) -> int:
        """Sequence length the text blocks run on (cut after the longest prompt)."""
        if self.cut_text:
            return int(batch.pool_index.max()) + 1
        return batch.embeddings.shape[1]

    def text_stem(self, batch: TextBatch) -> torch.Tensor:
        """Token embeddings plus positional embeddings, cut to the longest prompt."""
        length = self.text_length(batch)
        x = batch.embeddings[:, :length]
        return (x + self._text.positional_embedding[:length]).to(self.dtype)

    def text_attn_mask(self, length: int):
        """The causal mask cut to `length` tokens (None for bidirectional towers)."""
        mask = self._text.attn_mask
        if mask is None:
            return None
        if (
            length > mask.shape[0]
        ):  # sequences lengthened by inserted tokens (MMRL): the same causal rule
            return torch.full(
                (length, length), float("-inf"), dtype=mask.dtype, device=mask.device
            ).triu(1)
        return mask[:length, :length]

    def text_block(
        self, index: int, x: torch.Tensor, queries: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run text block `index` (0-based) on [prompts, length, width]; with `queries` (a position per
        prompt) only those positions' outputs ([prompts, 1, width])."""
        return _run_block(
            self.text_blocks[index],
            x,
            self.text_attn_mask(x.shape[1]),
            self._text.transformer.batch_first,
            queries,
        )

    def text_head(self, x: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
        """Final norm, pooling at the end-of-text token and projection.

        A one-token sequence ([prompts, 1, width]: the last block run at the pooled positions only)
        is pooled at its one token."""
        if x.shape[1] == 1:
            pool_index = torch.zeros_like(pool_index)
        x = self._text.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), pool_index]
        proj = self._text.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    # ---- image --------------------------------------------------------------------------------
    def image_stem(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding, class token, positional embedding and ln_pre: [batch, tokens, width]."""
        return self.clip.visual._embeds(images.to(self.dtype))

    def image_input_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_pre on tokens that join the image stem's output (prompts appended after the patches)."""
        return self.clip.visual.ln_pre(tokens)

    def image_output_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post on output tokens read beside the class token (representation tokens)."""
        return self.clip.visual.ln_post(tokens)

    def image_block(self, index: int, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """Run image block `index` (0-based) on [batch, tokens, width]; with `queries` (a position)
        only that position's output ([batch, 1, width])."""
        return _run_block(
            self.image_blocks[index], x, None, self.clip.visual.transformer.batch_first, queries
        )

    @property
    def image_query(self) -> int | None:
        """The one token position the image head reads (0: the class token), None when it reads more
        (average pooling, an attentional pooler)."""
        visual = self.clip.visual
        if (
            getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", None) == "tok"
        ):
            return 0
        return None

    def image_head(self, x: torch.Tensor) -> torch.Tensor:
        """ln_post, pooling and projection, as open_clip's VisionTransformer does (x may be the class
        token alone, [batch, 1, width], when `image_query` is 0)."""
        pooled, _ = self.clip.visual._pool(x)
        proj = self.clip.visual.proj
        return pooled if proj is None else pooled @ proj

    def encode_image_whole(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's own image encoder, for towers that cannot be stepped (ResNets)."""
        return self.clip.visual(images.to(self.dtype))


def load_backbone(
    name: str,
    pretrained: str | None = "none",
    *,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> Backbone:
    """Load an open_clip model by name with a pretrained tag, a local file, or no weights."""
    model, tokenizer, identity, quick_gelu = create_clip(name, pretrained, quick_gelu, cache_dir)
    return Backbone(model, tokenizer, name, identity, quick_gelu).to(device)
