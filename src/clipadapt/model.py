"""An adapted CLIP: a frozen backbone stepped in lockstep, a method called at its hook points."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import adapters
from .backbone import Backbone, TextBatch, load_backbone
from .errors import ClipadaptError
from .frozen_cache import (
    MB,
    FrozenImages,
    PromptPrefix,
    fixed_precision,
    image_output,
    image_tokens,
    text_output,
    text_tokens,
)
from .methods import Method, MethodConfig, adapter_method, make_config, method_class
from .prompts import NO_PROMPT_SET, class_prompts, ensemble_features, format_prompt
from .settings import DEFAULT_BUDGET_MB
from .synthetic_weights import DEFAULT_BACKBONE, DEFAULT_WEIGHTS, default_pretrained

DEFAULT_TEMPLATE = "a photo of a {}."
PROMPT_CHUNK = 1024  # prompts of a prompt set encoded at once without gradient (memory only)

__all__ = ["AdaptedCLIP", "build_model", "load_model", "format_prompt"]


class AdaptedCLIP(nn.Module):
    """forward(images) gives logits [batch, classes] for the current class names."""

    def __init__(
        self,
        backbone: Backbone,
        method: Method,
        classnames: list[str],
        template: str | None = None,
        backbone_source: dict | None = None,
        dataset: str | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.backbone_source = backbone_source or {"backbone": backbone.name, "pretrained": None}
        if method.acts_on_blocks and not backbone.steppable_image:
            raise ClipadaptError(
                f"method '{method.name}' needs a transformer image tower; '{backbone.name}' has none"
            )
        self._text_cache: torch.Tensor | None = None
        # Frozen work per prompt set (frozen_cache): the prompts' tokens at the first active text
        # block, and their frozen output features. Both are dropped with the prompts they belong to.
        self.prefix_budget_mb = DEFAULT_BUDGET_MB  # the trainer sets the run's prefix_cache_mb
        self._prompt_prefix: PromptPrefix | None | bool = None  # False: over the budget
        self._frozen_prompt: torch.Tensor | None = None
        # The run's generator for training draws (a prompt per class, MMA++'s scale); the trainer
        # reseeds it every epoch, so a resumed run draws what an uninterrupted one would.
        self.draws = torch.Generator().manual_seed(0)
        method.draws = self.draws
        self.last_draw: torch.Tensor | None = None
        self.set_classes(classnames, template, dataset=dataset)

    # ---- classes ------------------------------------------------------------------------------
    def set_classes(
        self,
        classnames: list[str],
        template: str | None = None,
        trained_on: bool | None = None,
        dataset: str | None = None,
    ) -> None:
        """Classify against these class names (they need not be the ones trained on).

        `trained_on` tells methods whose inference differs on seen and unseen classes (MMRL) which
        case this is; None lets the method decide (MMRL compares with the names it was built for).
        `dataset` picks the file of a prompts folder (DIR/<dataset>.json)."""
        if not classnames:
            raise ClipadaptError("no class names given")
        spec = self.method.config.prompts
        if spec not in NO_PROMPT_SET and self.method.prompt_sets is None:
            raise ClipadaptError(
                f"method '{self.method.name}' takes no prompt sets (its prompts are learned or "
                "its passes share state across prompts); drop --prompts / prompts:"
            )
        self.classnames = list(classnames)
        self.method.set_dataset(dataset, template)
        self.method.set_classes(self.classnames, trained_on)
        self.template = self.method.config.template or template or DEFAULT_TEMPLATE
        self.class_prompts = class_prompts(spec, self.classnames, self.template, dataset)
        self.prompts = [
            p for group in self.class_prompts for p in group
        ]  # every prompt, class by class
        counts = torch.tensor([len(group) for group in self.class_prompts])
        device = next(self.backbone.parameters()).device
        if len(self.prompts) == len(
            self.classnames
        ):  # one prompt a class: embedded once, as always
            self.text_batch = self.backbone.text_batch(self.prompts).to(device)
            self._tokens = self._pool = self.prompt_owner = None
        else:  # a prompt set: token ids kept, embedded per chunk or per draw (80 x 1000 would not fit)
            self.text_batch = None
            tokens = self.backbone.tokenize(self.prompts)
            self._tokens, self._pool = (
                tokens.to(device),
                self.backbone.pool_index(tokens).to(device),
            )
            self.prompt_owner = torch.repeat_interleave(torch.arange(len(counts)), counts).to(
                device
            )
        self.prompt_counts = counts
        self.prompt_offsets = torch.cumsum(counts, 0) - counts
        self._drop_prompt_caches()

    def _drop_prompt_caches(self) -> None:
        self._text_cache = self._frozen_prompt = None
        self._prompt_prefix = None

    def train(self, mode: bool = True):
        """Training invalidates cached text features."""
        self._text_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # The prompt tensors are plain attributes: follow the parameters to their device.
        result = super()._apply(fn, *args, **kwargs)
        device = next(self.backbone.parameters()).device
        if self.text_batch is not None:
            self.text_batch = self.text_batch.to(device)
        else:
            self._tokens, self._pool = self._tokens.to(device), self._pool.to(device)
            self.prompt_owner = self.prompt_owner.to(device)
        self._drop_prompt_caches()
        return result

    # ---- prompt sets --------------------------------------------------------------------------
    def seed_draws(self, seed: int) -> None:
        """Reseed the generator of training draws (the trainer does so every epoch)."""
        self.draws.manual_seed(seed)

    def draw_prompts(self) -> torch.Tensor:
        """One prompt index per class, drawn uniformly among that class's prompts."""
        u = torch.rand(len(self.prompt_counts), generator=self.draws)
        pick = torch.minimum((u * self.prompt_counts).long(), self.prompt_counts - 1)
        self.last_draw = self.prompt_offsets + pick
        return self.last_draw

    def _prompt_batch(self, index) -> TextBatch:
        """Embedded prompts `index` of the prompt set, cut to their longest prompt."""
        tokens, pool = self._tokens[index], self._pool[index]
        if self.backbone.cut_text:
            tokens = tokens[:, : int(pool.max()) + 1]
        with torch.no_grad():
            return TextBatch(self.backbone.embed_tokens(tokens), pool)

    def _pass_prompts(self) -> tuple[TextBatch, torch.Tensor | None, Any]:
        """The prompts a pass encodes, the class of each when classes have several, and their rows
        in the prompt set (None: the one-prompt-a-class batch)."""
        if self.text_batch is not None:
            return self.text_batch, None, None
        if self.training and self.method.prompt_sets == "draw":
            rows = self.draw_prompts().to(self._tokens.device)
            return self._prompt_batch(rows), None, rows
        return self._prompt_batch(slice(None)), self.prompt_owner, slice(None)

    # ---- frozen work per prompt set (clipadapt.frozen_cache) ------------------------------------
    def _all_prompts(self, chunk: int = PROMPT_CHUNK):
        """(rows, embedded prompts) of the whole prompt set, in chunks."""
        if self.text_batch is not None:
            yield None, self.text_batch
            return
        for start in range(0, len(self.prompts), chunk):
            rows = slice(start, start + chunk)
            yield rows, self._prompt_batch(rows)

    def prompt_prefix(self) -> PromptPrefix | None:
        """The prompts' frozen tokens at the method's first active text block, computed once per
        prompt set; None when the method changes the text from its first block on or the tokens
        would exceed the budget."""
        if self._prompt_prefix is None:
            self._prompt_prefix = self._compute_prompt_prefix() or False
        return self._prompt_prefix or None

    def _compute_prompt_prefix(self) -> PromptPrefix | None:
        bb = self.backbone
        block = self.method.first_active_blocks(bb)[1]
        # Block 0: the method changes the prompts themselves. The tower's depth: the frozen
        # features per prompt serve (frozen_prompt_features), tokens would only take memory.
        if not 0 < block < len(bb.text_blocks) or self.prefix_budget_mb <= 0:
            return None
        if self.text_batch is not None:
            pool, length = self.text_batch.pool_index, bb.text_length(self.text_batch)
        else:
            pool = self._pool
            length = int(pool.max()) + 1 if bb.cut_text else self._tokens.shape[1]
        size = len(pool) * length * bb.text_width * torch.empty((), dtype=bb.dtype).element_size()
        if size > self.prefix_budget_mb * MB:
            return None
        tokens = torch.zeros(len(pool), length, bb.text_width, dtype=bb.dtype, device=pool.device)
        with fixed_precision(pool.device):
            for rows, batch in self._all_prompts():
                x = text_tokens(bb, batch, block)
                # Positions after a chunk's longest prompt stay zero: under the causal mask they
                # never reach a pooled token, and every pass cuts after its own longest prompt.
                tokens[slice(None) if rows is None else rows, : x.shape[1]] = x
        return PromptPrefix(tokens, pool, block)

    def _text_entry(self, rows):
        """(tokens, block) a pass's text enters the stepper with, or None to start from the stem;
        at the tower's depth (a method that never changes the text) the frozen features per prompt."""
        bb = self.backbone
        if self.method.first_active_blocks(bb)[1] >= len(bb.text_blocks):
            feats = self.frozen_prompt_features()
            return (feats if rows is None else feats[rows]), len(bb.text_blocks)
        prefix = self.prompt_prefix()
        if prefix is None:
            return None
        return prefix.rows(rows, self.backbone.cut_text).to(self.backbone.dtype), prefix.block

    def frozen_prompt_features(self) -> torch.Tensor:
        """Output features of the frozen text tower for every prompt of the set ([prompts, dim]), once per set."""
        if self._frozen_prompt is None:
            bb, prefix = self.backbone, self.prompt_prefix()
            feats = []
            with fixed_precision(next(bb.parameters()).device):
                for rows, batch in self._all_prompts():
                    if prefix is not None:
                        x, start = prefix.rows(rows, bb.cut_text), prefix.block
                        x = x[:, : bb.text_length(batch)]
                    else:
                        x, start = bb.text_stem(batch), 0
                    feats.append(text_output(bb, x, start, batch.pool_index))
            self._frozen_prompt = torch.cat(feats)
        return self._frozen_prompt

    def _frozen_text_for(self, rows, owner) -> torch.Tensor:
        """Frozen class-text features aligned with a pass's text features."""
        feats = self.frozen_prompt_features()
        if rows is None or owner is not None:
            return self._per_class(feats if rows is None else feats[rows], owner)
        return feats[rows]

    def _per_class(
        self, txt_f: torch.Tensor | None, owner: torch.Tensor | None
    ) -> torch.Tensor | None:
        if txt_f is None or owner is None:
            return txt_f
        return ensemble_features(txt_f, owner, len(self.classnames))

    def _prompt_set_features(self) -> torch.Tensor:
        """Class features of a prompt set through the method without gradient, the prompts encoded in chunks."""
        feats = []
        with torch.no_grad():
            for rows, batch in self._all_prompts():
                self.method.begin_forward()
                self.method.given_frozen = {"image": None, "text": None}
                batch = self.method.prompt_embeddings(batch)
                feats.append(self._run_towers(None, batch, self._text_entry(rows))[1])
            return ensemble_features(torch.cat(feats), self.prompt_owner, len(self.classnames))

    # ---- forward ------------------------------------------------------------------------------
    def frozen_text_features(self) -> torch.Tensor:
        """Class text features of the frozen towers, computed once per set of classes."""
        return self._per_class(self.frozen_prompt_features(), self.prompt_owner)

    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Image features of the frozen towers (no method involved)."""
        with torch.no_grad():
            if not self.backbone.steppable_image:
                return self.backbone.encode_image_whole(images)
            return image_output(self.backbone, self.backbone.image_stem(images), 0)

    def frozen_images(
        self, images: torch.Tensor, block: int, with_final: bool = False
    ) -> FrozenImages:
        """Images as the frozen towers leave them at image block `block` (the features at the tower's
        depth), optionally with their frozen final features; what the trainer caches."""
        bb = self.backbone
        if block >= len(bb.image_blocks):
            return FrozenImages(self.frozen_image_features(images).float(), block, at_output=True)
        with torch.no_grad():
            tokens = image_tokens(bb, images, block)
            final = image_output(bb, tokens, block).float() if with_final else None
        return FrozenImages(tokens, block, final=final)

    def logits_from_frozen_image_features(self, img_f: torch.Tensor) -> torch.Tensor:
        """Logits from CLIP's own image features (`frozen_image_features`), as `forward` gives them.

        Only for methods whose image tower is frozen (`image_tower_is_frozen`): their text still goes
        through the method (CoOp's learned context) and `after_heads` still sees both features."""
        bb = self.backbone
        if not self.method.image_tower_is_frozen(bb):
            raise ClipadaptError(
                f"method '{self.method.name}' changes the image tower: its logits need the images"
            )
        return self(FrozenImages(img_f, len(bb.image_blocks), at_output=True))

    def encode(self, images: torch.Tensor | FrozenImages | None, with_text: bool = True):
        """Image features [batch, dim] and/or class text features [classes, dim] through the method.

        `images` may be a batch of FrozenImages (the trainer's cache): the image tower is then
        entered at the block they were cached at."""
        bb, m = self.backbone, self.method
        m.begin_forward()
        cached = isinstance(images, FrozenImages)
        if m.output_only:  # the towers are CLIP's own: no graph through them, text computed once
            if cached and not images.at_output:
                raise ClipadaptError(
                    f"'{m.name}' reads output features; got images cached at block {images.block}"
                )
            img_f = (
                None
                if images is None
                else images.tokens
                if cached
                else self.frozen_image_features(images)
            )
            txt_f = self.frozen_text_features() if with_text else None
            return m.after_heads(bb, img_f, txt_f)
        txt_batch, owner, rows = self._pass_prompts() if with_text else (None, None, None)
        txt_batch = m.prompt_embeddings(txt_batch) if with_text else None
        text_entry = self._text_entry(rows) if with_text else None
        # Methods whose loss compares with the frozen towers read the cached frozen features.
        m.given_frozen = {
            "image": images.final if cached else None,
            "text": self._frozen_text_for(rows, owner)
            if with_text and self.training and m.compares_with_frozen
            else None,
        }
        if images is not None and not cached and not bb.steppable_image:
            img_f = bb.encode_image_whole(images)
            txt_f = self._run_towers(None, txt_batch, text_entry)[1] if with_text else None
            return m.after_heads(bb, img_f, self._per_class(txt_f, owner))
        img_f, txt_f = self._run_towers(images, txt_batch, text_entry)
        return m.after_heads(bb, img_f, self._per_class(txt_f, owner))

    def _run_towers(self, images, txt_batch, text_entry=None):
        """Step both towers in lockstep through the method; a tower given as cached frozen tokens
        (FrozenImages, `text_entry` = (tokens, block)) joins at its block, blocks below it skipped."""
        bb, m = self.backbone, self.method
        img, img_start, img_f = None, 0, None
        if isinstance(images, FrozenImages):
            if images.at_output:
                img_f = images.tokens
            else:  # stored in the run's precision; the stream runs in the backbone's, as uncached
                img, img_start = images.tokens.to(bb.dtype), images.block
        elif images is not None:
            img = bb.image_stem(images)
        txt, txt_start, txt_f = None, 0, None
        if text_entry is not None and text_entry[1] >= len(bb.text_blocks):
            txt_f = text_entry[0]
        elif text_entry is not None:
            txt, txt_start = text_entry
        elif txt_batch is not None:
            txt = bb.text_stem(txt_batch)
        at_stems = (img if img_start == 0 else None, txt if txt_start == 0 else None)
        if at_stems != (None, None) or (img is None and txt is None):
            new_img, new_txt = m.after_stems(*at_stems)
            img = new_img if at_stems[0] is not None else img
            txt = new_txt if at_stems[1] is not None else txt
        starts = ([img_start] if img is not None else []) + ([txt_start] if txt is not None else [])
        depth = max(
            len(bb.image_blocks) if img is not None else 0,
            len(bb.text_blocks) if txt is not None else 0,
        )
        # The heads read one token a sequence: a method that promises it (Method.pooled_final_block)
        # gets each tower's final block run at that token only.
        # A tower the method never changes runs as the frozen features are computed (whole blocks),
        # so that its cached and uncached features agree to the bit.
        image_query = (
            bb.image_query if m.pooled_final_block and not m.image_tower_is_frozen(bb) else None
        )
        text_query = (
            txt_batch.pool_index if m.pooled_final_block and txt_batch is not None else None
        )
        for index in range(min(starts, default=depth), depth):
            img_in = img if img is not None and index >= img_start else None
            txt_in = txt if txt is not None and index >= txt_start else None
            queries = {}
            if img_in is not None and image_query is not None and index == len(bb.image_blocks) - 1:
                queries["image"] = image_query
            if txt_in is not None and text_query is not None and index == len(bb.text_blocks) - 1:
                queries["text"] = text_query
            img_out, txt_out = (
                m.step(index, bb, img_in, txt_in, queries=queries)
                if queries
                else m.step(index, bb, img_in, txt_in)
            )
            img = img_out if img_in is not None else img
            txt = txt_out if txt_in is not None else txt
        if img is not None:
            img_f = bb.image_head(img)
        if txt is not None:
            txt_f = bb.text_head(txt, txt_batch.pool_index)
        return img_f, txt_f

    def text_features(self) -> torch.Tensor:
        """Class text features, computed once per evaluation when they do not depend on images."""
        if self.training or torch.is_grad_enabled() or self.method.text_depends_on_images:
            return self.encode(None, with_text=True)[1]
        if self._text_cache is None:
            if self.text_batch is None:  # a prompt set: chunked, then the method's output step
                txt_f = self._prompt_set_features()
                self._text_cache = self.method.after_heads(self.backbone, None, txt_f)[1]
            else:
                self._text_cache = self.encode(None, with_text=True)[1]
        return self._text_cache

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of each image against every class: [batch, classes]."""
        if self.method.text_depends_on_images or self.training or torch.is_grad_enabled():
            img_f, txt_f = self.encode(images, with_text=True)
        else:
            txt_f = self.text_features()
            img_f = self.encode(images, with_text=False)[0]
        return self.method.logits(img_f, txt_f, self.backbone.logit_scale)

    # ---- adapters on disk (clipadapt.adapters) ---------------------------------------------------
    def save_adapter(self, path: str) -> None:
        """Write the method's parameters (never the frozen backbone) as an adapter file, atomically."""
        adapters.write_adapter(
            path,
            self.method.state_dict(),
            method=self.method.name,
            method_config=self.method.config.to_dict(),
            backbone=self.backbone_source.get("backbone"),
            pretrained=self.backbone_source.get("pretrained"),
            backbone_identity=self.backbone.identity,
            classnames=self.classnames,
        )

    def load_adapter(self, path: str) -> None:
        """Read a saved adapter; it must belong to this method and this backbone."""
        meta, tensors = adapters.read_adapter(path)
        adapters.check_adapter_fits(
            meta, path, self.method.name, self.backbone.identity, self.method.config.to_dict()
        )
        device = next(self.backbone.parameters()).device
        self.method.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=True)
        self._text_cache = None


def build_model(
    method: str,
    classnames: list[str],
    backbone: str | Backbone = DEFAULT_BACKBONE,
    pretrained: str | None = DEFAULT_WEIGHTS,
    default_template: str | None = None,
    device: str = "cpu",
    dataset: str | None = None,
    method_config: MethodConfig | None = None,
    **options: Any,
) -> AdaptedCLIP:
    """A CLIP adapted by `method` (options are the method's config fields, or `method_config` the
    config itself, as a resolved run passes it), for these class names.

    The prompt is the method's `template` option if set, else `default_template` (a dataset's CoOp
    template), else "a photo of a {}."; the `prompts` option gives several a class (`dataset` picks
    the file of a prompts folder). Backbone and weights default as on the command line: the shipped
    tiny CLIP with its shipped weights; a named open_clip model gets OpenAI's weights unless told."""
    if pretrained == DEFAULT_WEIGHTS and not isinstance(backbone, Backbone):
        pretrained = default_pretrained(backbone)
    cls = method_class(method)
    if method_config is None:
        config = make_config(method, options)
    elif options or not isinstance(method_config, cls.Config):
        raise ClipadaptError(
            f"build_model takes method '{method}' options or its config "
            f"({cls.Config.__name__}), not {'both' if options else type(method_config).__name__}"
        )
    else:
        config = method_config
    if isinstance(backbone, Backbone):
        bb = backbone.to(device)
        source = {"backbone": backbone.name, "pretrained": pretrained}
    else:
        bb = load_backbone(backbone, pretrained, device=device)
        source = {"backbone": backbone, "pretrained": pretrained}
    adapter = cls(config, bb, list(classnames)).to(device)
    return AdaptedCLIP(
        bb, adapter, classnames, default_template, backbone_source=source, dataset=dataset
    )


def load_model(
    checkpoint: str,
    classnames: list[str] | None = None,
    backbone: str | Backbone | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    prompts: str | None = None,
    default_template: str | None = None,
    dataset: str | None = None,
) -> AdaptedCLIP:
    """Rebuild a model from a saved adapter; backbone and pretrained default to the recorded ones.

    `prompts` replaces the recorded prompt set ("none": one template a class)."""
    meta, _ = adapters.read_adapter(checkpoint)
    method = adapter_method(meta, checkpoint)  # a plugin's class, found by what the file records
    options = adapters.recorded_options(meta)
    if prompts is not None:
        options["prompts"] = None if prompts in NO_PROMPT_SET else prompts
    if backbone is None:
        backbone = meta["backbone"]
        pretrained = meta["pretrained"] if pretrained is None else pretrained
    # Built for the classes it was trained on, so that methods knowing them (MMRL) can tell later
    # whether the classes it is asked about are those.
    trained_names = adapters.recorded_classnames(meta)
    if not (trained_names or classnames):
        raise ClipadaptError(
            f"adapter '{checkpoint}' records no class names (an imported official checkpoint); "
            "give the classes to classify between"
        )
    model = build_model(
        method,
        trained_names or classnames,
        backbone,
        pretrained,
        default_template=default_template,
        device=device,
        dataset=dataset,
        **options,
    )
    model.load_adapter(checkpoint)
    if classnames:
        model.set_classes(classnames, default_template, dataset=dataset)
    return model
