"""The conformance kit: the invariants clipadapt relies on, checked for one method class.

A method author, built-in or in another package, runs every check in one pytest line:

    from clipadapt.testing import check_method

    def test_my_method():
        check_method(MyMethod)

`check_method` builds models on a tiny open_clip backbone with random weights (both towers, four
blocks each: no download, seconds per method), the method's parameters moved off their initial values
so that adapters which start as an identity act. Keyword options are the method's config fields (give
those under which the method acts strongly on a random backbone). It raises one AssertionError that
names every broken invariant with its numbers, and otherwise returns, per invariant, "passed" or why
it was skipped. This module needs no pytest.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone, load_backbone
from .data.datum import Datum
from .engine import TrainConfig, Trainer
from .methods.base import Method
from .model import AdaptedCLIP

__all__ = ["check_method", "INVARIANTS", "BACKBONE"]

# ---- the invariants, by the name a failure message gives --------------------------------------
OFF = "switched off = zero-shot"
BATCH = "batch independence"
FROZEN = "frozen backbone untouched"
GRADIENTS = "every trainable parameter gets a gradient"
CACHED = "cached = uncached"
TEXT = "text independent of images"
POOLED = "pooled final block = whole block"
SEED = "same seed, same numbers"
ROUND_TRIP = "save/load round trip"
STATELESS = "no state outside the saved tensors"
RESUME = "resume = uninterrupted"

BACKBONE = "clipadapt-tiny"  # open_clip config shipped in clipadapt/model_configs: 4 blocks a tower
# Prompts of different lengths, so that end-of-text positions differ and the causal mask matters.
CLASSES = ("red disc", "blue square", "a much longer class name than the others here", "dog")
OTHER_CLASSES = ("green triangle", "cat", "tree")
PERTURBATION = 0.1  # std of the noise added to the method's parameters (off their identity start)
PREFIX_BUDGET_MB = 64.0  # the frozen-prefix caches on (0 turns them off)
LOGITS_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-6, "rtol": 1e-4}
# The training runs of the kit: 8 images, 2 a class, batches of 4, 2 epochs (4 optimizer steps).
TRAIN_SEED, EPOCHS, BATCH_SIZE, INTERRUPT_AT_STEP = 7, 2, 4, 3


# ---- comparisons whose failures carry the numbers ------------------------------------------------
def _close(what: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> None:
    """Fail with the largest difference unless |got - want| <= atol + rtol |want| everywhere."""
    got, want = torch.as_tensor(got).detach().float(), torch.as_tensor(want).detach().float()
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    diff = (got - want).abs()
    if not bool((diff <= atol + rtol * want.abs()).all()):
        raise AssertionError(
            f"{what}: differ by up to {diff.max().item():.3g} "
            f"(allowed {atol:g} + {rtol:g}·|expected|; expected values up to "
            f"{want.abs().max().item():.3g})"
        )


def _equal(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """Fail with the largest difference unless the tensors are identical."""
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.equal(got, want):
        diff = (got.detach().float() - want.detach().float()).abs().max().item()
        raise AssertionError(f"{what}: differ by up to {diff:.3g} (must be identical)")


def _equal_states(what: str, got: dict, want: dict) -> None:
    """Identical tensors under identical names."""
    if got.keys() != want.keys():
        raise AssertionError(
            f"{what}: tensors {sorted(got.keys() - want.keys())} only in one, "
            f"{sorted(want.keys() - got.keys())} only in the other"
        )
    for name in want:
        _equal(f"{what}: tensor '{name}'", got[name], want[name])


def _same_gradients(what: str, got: dict, want: dict) -> None:
    """The same parameters reached, with close gradients."""
    if got.keys() != want.keys():
        raise AssertionError(
            f"{what}: gradients reach {sorted(got.keys() - want.keys())} only here and "
            f"{sorted(want.keys() - got.keys())} only in the reference"
        )
    for name in want:
        _close(f"{what}: gradient of '{name}'", got[name], want[name], **GRAD_TOL)


def _snapshot(state: dict) -> dict[str, torch.Tensor]:
    """Detached copies of a name -> tensor mapping."""
    return {k: v.detach().clone() for k, v in state.items()}


@contextlib.contextmanager
def _overridden(obj: Any, **attributes: Any) -> Iterator[None]:
    """Instance attributes that shadow the class's for a while (a declaration switched off)."""
    missing = object()
    saved = {name: obj.__dict__.get(name, missing) for name in attributes}
    for name, value in attributes.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


def _every_block_through_the_hooks(backbone: Backbone) -> tuple[int, int]:
    """A first_active_blocks that skips nothing."""
    return 0, 0


@contextlib.contextmanager
def _reference_path(model: AdaptedCLIP) -> Iterator[None]:
    """The model with nothing skipped: both towers from their stems, every block through the
    method's hooks, no frozen prefix (what `first_active_blocks` and `output_only` allow skipping)."""
    with _overridden(
        model.method, output_only=False, first_active_blocks=_every_block_through_the_hooks
    ):
        budget = model.prefix_budget_mb
        model.prefix_budget_mb = 0
        model._drop_prompt_caches()
        try:
            yield
        finally:
            model.prefix_budget_mb = budget
            model._drop_prompt_caches()


@contextlib.contextmanager
def _recording_queries(backbone: Backbone) -> Iterator[dict[str, list[int]]]:
    """The block indices each tower ran with pooled queries."""
    seen: dict[str, list[int]] = {"image": [], "text": []}

    def recorder(tower: str) -> Callable:
        real = getattr(backbone, f"{tower}_block")

        def run(index, x, queries=None):
            if queries is not None:
                seen[tower].append(index)
            return real(index, x, queries)

        return run

    with _overridden(backbone, image_block=recorder("image"), text_block=recorder("text")):
        yield seen


@dataclass
class _Pass:
    """What one pass through a model gives: logits, loss, its parts, gradients, and the logits of
    the same pass without gradient (evaluation's path in eval mode: text features computed once)."""

    logits: torch.Tensor
    loss: torch.Tensor
    parts: dict
    grads: dict[str, torch.Tensor]
    no_grad_logits: torch.Tensor


class _Kit:
    """One method class on one tiny backbone: models, inputs and training runs for the checks."""

    def __init__(self, method_class: type[Method], options: dict[str, Any], workdir: str):
        self.method_class, self.options, self.workdir = method_class, options, workdir
        torch.manual_seed(0)
        self.backbone = load_backbone(BACKBONE, "none")
        self.pristine = _snapshot(self.backbone_tensors())
        size = self.backbone.image_size
        draws = torch.Generator().manual_seed(0)
        self.images = torch.randn(5, 3, size, size, generator=draws)
        self.others = torch.randn(3, 3, size, size, generator=draws)
        self.labels = torch.tensor([0, 2, 3, 1, 2])
        self.classes = list(CLASSES)
        self._items: list[Datum] | None = None
        self._trained: tuple[AdaptedCLIP, dict] | None = None

    # ---- the frozen backbone, shared by every model of the kit --------------------------------
    def backbone_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the backbone, by name."""
        tensors = dict(self.backbone.named_parameters())
        tensors.update(dict(self.backbone.named_buffers()))
        return tensors

    def changed_backbone_tensors(self) -> list[str]:
        """The backbone tensors that differ from their values when the kit began, and by how much."""
        return [
            f"{n} (by up to {(t.detach().float() - self.pristine[n].float()).abs().max().item():.3g})"
            for n, t in self.backbone_tensors().items()
            if not torch.equal(t, self.pristine[n])
        ]

    def restore_backbone(self) -> None:
        """Undo whatever a broken method did to the shared backbone, before the next check."""
        with torch.no_grad():
            for name, tensor in self.backbone_tensors().items():
                if not torch.equal(tensor, self.pristine[name]):
                    tensor.copy_(self.pristine[name])
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.requires_grad_(False)
                    tensor.grad = None

    # ---- models -------------------------------------------------------------------------------
    def model(self, seed: int = 0, perturb: bool = True, **overrides: Any) -> AdaptedCLIP:
        """A model of the method (its options, then `overrides`), its parameters moved off their
        initial values unless `perturb` is False."""
        torch.manual_seed(seed)
        config = self.method_class.Config.from_dict({**self.options, **overrides})
        method = self.method_class(config, self.backbone, list(self.classes))
        model = AdaptedCLIP(
            self.backbone,
            method,
            list(self.classes),
            backbone_source={"backbone": BACKBONE, "pretrained": "none"},
        )
        if perturb:
            with torch.no_grad():
                for p in method.parameters():
                    if p.is_floating_point():
                        p.add_(PERTURBATION * torch.randn_like(p))
        return model

    def labels_for(self, inputs) -> torch.Tensor:
        """Labels for a batch of the kit's images (or of images cached from them)."""
        return self.labels[: len(inputs)]

    def run_pass(self, model: AdaptedCLIP, inputs, train: bool = True, seed: int = 3) -> _Pass:
        """One pass with gradient and the same pass without, the method's random draws seeded alike."""
        torch.manual_seed(seed)
        model.seed_draws(seed)
        model.train(train)
        model.method.zero_grad(set_to_none=True)
        logits = model(inputs)
        if train:
            loss, parts = model.method.loss(logits.float(), self.labels_for(inputs))
        else:  # the method's loss may need a training pass (its regularizers): the task loss
            loss = F.cross_entropy(logits.float(), self.labels_for(inputs))
            parts = {}
        if loss.requires_grad:
            loss.backward()
        grads = {
            n: p.grad.detach().clone()
            for n, p in model.method.named_parameters()
            if p.grad is not None
        }
        model.method.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        model.seed_draws(seed)
        with torch.no_grad():
            no_grad_logits = model(inputs)
        return _Pass(logits.detach(), loss.detach(), parts, grads, no_grad_logits)

    def eval_logits(self, model: AdaptedCLIP, images: torch.Tensor) -> torch.Tensor:
        """Logits as evaluation computes them (eval mode, no gradient)."""
        model.eval()
        with torch.no_grad():
            return model(images)

    def trainable(self) -> bool:
        """Whether the method has anything to train."""
        return bool(self.model(perturb=False).method.trainable_parameters())

    # ---- training runs --------------------------------------------------------------------------
    def items(self) -> list[Datum]:
        """Eight small image files, two a class, written once."""
        if self._items is None:
            from PIL import Image

            folder = os.path.join(self.workdir, "images")
            os.makedirs(folder)
            draws = torch.Generator().manual_seed(1)
            size = self.backbone.image_size
            self._items = []
            for i in range(2 * len(self.classes)):
                label = i % len(self.classes)
                pixels = torch.randint(0, 256, (size, size, 3), generator=draws, dtype=torch.uint8)
                path = os.path.join(folder, f"{i}.png")
                Image.fromarray(pixels.numpy()).save(path)
                self._items.append(Datum(path, label, self.classes[label]))
        return self._items

    def train_config(self) -> TrainConfig:
        """Two short epochs with augmentation (its random draws must replay too)."""
        return TrainConfig(
            optimizer="adamw",
            lr=0.01,
            weight_decay=0.0,
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            augment=True,
            workers=0,
            logger="none",
            seed=1,
        )

    def train(self, out_dir: str | None = None) -> tuple[AdaptedCLIP, dict]:
        """A model built with the training seed and trained, and its state before training."""
        model = self.model(seed=TRAIN_SEED, perturb=False)
        initial = _snapshot(model.method.state_dict())
        Trainer(model, self.items(), self.train_config(), out_dir=out_dir, progress=False).run()
        return model, initial

    def trained(self) -> tuple[AdaptedCLIP, dict]:
        """The kit's one uninterrupted training run (its folder holds its checkpoint); a method
        with nothing to train is built with the training seed, its parameters moved."""
        if self._trained is None and not self.trainable():
            model = self.model(seed=TRAIN_SEED)
            self._trained = model, _snapshot(model.method.state_dict())
        if self._trained is None:
            self._trained = self.train(os.path.join(self.workdir, "straight"))
        return self._trained

    def adapter_of_trained(self) -> str:
        """The trained model's adapter file."""
        path = os.path.join(self.workdir, "trained.safetensors")
        if not os.path.exists(path):
            self.trained()[0].save_adapter(path)
        return path


# ---- the checks: each returns None when it passed, or why it does not apply -------------------
def check_switched_off(kit: _Kit) -> str | None:
    """With the options its class declares in `off_options`, the method's logits are zero-shot
    CLIP's (the frozen towers' scaled cosine similarity), whatever its parameters hold."""
    off = getattr(kit.method_class, "off_options", None)
    if off is None:
        return "the class declares no off_options (no setting zeroes its contribution)"
    model = kit.model(**off)
    got = kit.eval_logits(model, kit.images)
    with torch.no_grad():
        image = F.normalize(model.frozen_image_features(kit.images), dim=-1)
        text = F.normalize(model.frozen_text_features(), dim=-1)
        zero_shot = kit.backbone.logit_scale * image @ text.t()
    _close(f"logits with off_options {off} against zero-shot CLIP's", got, zero_shot, 1e-5, 0.0)
    return None


def check_batch_independence(kit: _Kit) -> str | None:
    """At evaluation an image's logits do not depend on the other images of its batch."""
    model = kit.model()
    together = kit.eval_logits(model, kit.images)
    expected = (len(kit.images), len(kit.classes))
    if tuple(together.shape) != expected:
        raise AssertionError(f"logits of shape {tuple(together.shape)}, expected {expected}")
    alone = torch.cat([kit.eval_logits(model, kit.images[i : i + 1]) for i in range(5)])
    _close(
        "logits of each image scored alone against in a batch of 5", alone, together, **LOGITS_TOL
    )
    mixed = kit.eval_logits(model, torch.cat([kit.others, kit.images[2:3]]))[-1]
    _close("logits of image 3 in a batch of other images", mixed, together[2], **LOGITS_TOL)
    return None


def check_frozen_backbone(kit: _Kit) -> str | None:
    """No parameter or buffer of the backbone changes in a forward pass, a backward pass or an
    optimizer step; none requires grad, and no trainable tensor of the method is one of them."""
    model = kit.model()
    backbone = kit.backbone_tensors()
    storages = {
        t.untyped_storage().data_ptr(): name for name, t in backbone.items() if t.numel() > 0
    }
    problems = []
    trainable = model.method.trainable_parameters()
    names = {id(p): n for n, p in model.method.named_parameters()}
    shared = [
        f"'{names.get(id(p), '?')}' is the backbone's '{storages[p.untyped_storage().data_ptr()]}'"
        for p in trainable
        if p.numel() > 0 and p.untyped_storage().data_ptr() in storages
    ]
    if shared:
        problems.append(
            "trainable tensors of the method are backbone tensors: " + "; ".join(shared)
        )
    model.train()
    loss = model.method.loss(model(kit.images).float(), kit.labels)[0]
    if trainable and loss.requires_grad:  # (a loss that reaches nothing: the gradient check's)
        loss.backward()
        torch.optim.AdamW(trainable, lr=0.1, weight_decay=0.0).step()
    with torch.no_grad():
        model(kit.images)  # training mode without gradient
    kit.eval_logits(model, kit.images)
    model.eval()
    model(kit.images)  # evaluation mode with gradient: the joint text-and-image pass
    requires = [n for n, t in backbone.items() if t.requires_grad]
    if requires:
        problems.append(f"backbone parameters require grad: {_listed(requires)}")
    changed = kit.changed_backbone_tensors()
    if changed:
        problems.append(
            f"{len(changed)} backbone tensor(s) changed by forward passes and an optimizer step: "
            f"{_listed(changed)}"
        )
    kit.restore_backbone()
    if trainable:
        try:
            kit.trained()
        except Exception:  # noqa: BLE001 - a run that fails is the same-seed check's finding
            pass
        else:
            changed = kit.changed_backbone_tensors()
            if changed:
                problems.append(
                    f"{len(changed)} backbone tensor(s) changed by a training run: {_listed(changed)}"
                )
    if problems:
        raise AssertionError("; ".join(problems))
    return None


def check_gradients(kit: _Kit) -> str | None:
    """After one training loss backward every parameter the optimizer updates has a gradient that
    is not all zero; the loss is a finite scalar and the logged parts of it hold no graph."""
    model = kit.model()
    trainable = model.method.trainable_parameters()
    if not trainable:
        return "the method has no trainable parameter"
    names = {id(p): n for n, p in model.method.named_parameters()}
    foreign = [p for p in trainable if id(p) not in names]
    if foreign:
        raise AssertionError(
            f"trainable_parameters() lists {len(foreign)} tensor(s) that are not parameters of "
            "the method"
        )
    listed = {id(p) for p in trainable}
    idle = [n for n, p in model.method.named_parameters() if id(p) not in listed]
    if idle:
        raise AssertionError(
            f"parameters {_listed(idle)} are not among trainable_parameters(): the optimizer never "
            "updates them (a tensor that does not train belongs in a buffer)"
        )
    model.train()
    torch.manual_seed(3)
    model.seed_draws(3)
    model.method.zero_grad(set_to_none=True)
    logits = model(kit.images)
    loss, parts = model.method.loss(logits.float(), kit.labels)
    if loss.dim() != 0 or not bool(torch.isfinite(loss)):
        raise AssertionError(f"the training loss is {loss.detach()}, not a finite scalar")
    attached = [k for k, v in parts.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    if attached:
        raise AssertionError(f"loss parts {attached} hold the graph (detach them for the log)")
    if not loss.requires_grad:
        raise AssertionError("the training loss reaches no trainable parameter")
    loss.backward()
    none = [names[id(p)] for p in trainable if p.grad is None]
    zero = [names[id(p)] for p in trainable if p.grad is not None and not bool(p.grad.any())]
    missed = ([f"{_listed(none)} got no gradient"] if none else []) + (
        [f"{_listed(zero)} an all-zero one"] if zero else []
    )
    if missed:
        raise AssertionError(
            f"of {len(trainable)} trainable parameters, {' and '.join(missed)} from the "
            "training loss (a parameter the loss never reaches trains nothing: use it, or make "
            "it a buffer or requires_grad=False)"
        )
    return None


def check_cached(kit: _Kit) -> str | None:
    """What `first_active_blocks` and `output_only` declare is honest: a pass that skips the frozen
    work they allow (images entering at the first active image block, the class prompts' frozen
    prefix, frozen output features) gives the logits, loss and gradients of the pass that runs
    both towers from their stems through every hook, in training and in evaluation."""
    model = kit.model()
    method, backbone = model.method, kit.backbone
    image_block, text_block = method.first_active_blocks(backbone)
    declared = (
        f"(declared: first_active_blocks = {(image_block, text_block)}, "
        f"output_only = {method.output_only})"
    )
    images = kit.images[:3]
    with _overridden(method, pooled_final_block=False):  # checked on its own (POOLED)
        with _reference_path(model):
            reference = kit.run_pass(model, images)
            reference_eval = kit.run_pass(model, images, train=False).no_grad_logits
        model.prefix_budget_mb = 0
        model._drop_prompt_caches()
        plain = kit.run_pass(model, images)
        model.prefix_budget_mb = PREFIX_BUDGET_MB
        model._drop_prompt_caches()
        frozen = model.frozen_images(images, image_block, with_final=method.compares_with_frozen)
        cached = kit.run_pass(model, frozen)
        if 0 < text_block < len(backbone.text_blocks):
            prefix = model.prompt_prefix()
            if prefix is None or prefix.block != text_block:
                raise AssertionError(
                    f"the class prompts' frozen prefix was not kept at text block {text_block}"
                )
        evaluation = kit.run_pass(model, images, train=False).no_grad_logits
        frozen_tower = {}
        if method.image_tower_is_frozen(backbone):  # the feature caches' path: CLIP's own features
            features = model.frozen_image_features(images)
            model.eval()
            with torch.no_grad():
                frozen_tower["evaluation"] = model.logits_from_frozen_image_features(features)
            torch.manual_seed(3)
            model.seed_draws(3)
            model.train()
            frozen_tower["training"] = model.logits_from_frozen_image_features(features).detach()
    for what, got in (
        ("from the stems with the declared blocks skipped", plain),
        (f"with the images cached at image block {image_block} and the prompt prefix", cached),
    ):
        _close(f"training logits {what} {declared}", got.logits, reference.logits, **LOGITS_TOL)
        _close(f"training loss {what}", got.loss, reference.loss, **LOGITS_TOL)
        _same_gradients(f"gradients {what}", got.grads, reference.grads)
    _close(f"evaluation logits {declared}", evaluation, reference_eval, **LOGITS_TOL)
    for mode, want in (("evaluation", reference_eval), ("training", reference.logits)):
        if mode in frozen_tower:
            _close(
                f"{mode} logits from the frozen image features (image_tower_is_frozen)",
                frozen_tower[mode],
                want,
                **LOGITS_TOL,
            )
    return None


def check_text_independent_of_images(kit: _Kit) -> str | None:
    """A method that declares `text_depends_on_images = False` gives the same class text features
    whatever images share the pass (evaluation computes them once, without images)."""
    if kit.method_class.text_depends_on_images:
        return "the class declares text_depends_on_images = True"
    model = kit.model().eval()
    with torch.no_grad():
        alone = model.encode(None, with_text=True)[1]
        for what, images in (("5 images", kit.images), ("3 other images", kit.others)):
            with_images = model.encode(images, with_text=True)[1]
            _close(
                f"class text features encoded beside {what} against without images",
                with_images,
                alone,
                **LOGITS_TOL,
            )
        once = model(kit.images)  # text features cached, computed without images
    with torch.enable_grad():
        joint = model(kit.images)  # text and images in one pass
    _close(
        "evaluation logits with the text computed once against jointly", once, joint, **LOGITS_TOL
    )
    return None


def check_pooled_final_block(kit: _Kit) -> str | None:
    """A method that opts in to `pooled_final_block` gets each tower's final block run at the pooled
    tokens only, with the logits, loss, loss parts and gradients of the whole block, in training
    and evaluation mode, from the stems and with the frozen-prefix caches."""
    if not kit.method_class.pooled_final_block:
        return "the class does not opt in (pooled_final_block = False)"
    backbone = kit.backbone
    image_depth, text_depth = len(backbone.image_blocks), len(backbone.text_blocks)
    images = kit.images[:3]
    for cached in (False, True):
        for train in (True, False):
            where = (
                f"{'training' if train else 'evaluation'} mode, caches {'on' if cached else 'off'}"
            )
            model = kit.model()
            model.prefix_budget_mb = PREFIX_BUDGET_MB if cached else 0
            inputs = images
            if cached:
                block = model.method.first_active_blocks(backbone)[0]
                inputs = model.frozen_images(
                    images, block, with_final=model.method.compares_with_frozen
                )
            with _overridden(model.method, pooled_final_block=False):
                whole = kit.run_pass(model, inputs, train)
            with _recording_queries(backbone) as seen:
                pooled = kit.run_pass(model, inputs, train)
            if set(seen["text"]) != {text_depth - 1}:
                raise AssertionError(f"{where}: the final text block never ran pooled")
            frozen_image = model.method.image_tower_is_frozen(backbone)
            if not frozen_image and set(seen["image"]) != {image_depth - 1}:
                raise AssertionError(f"{where}: the final image block never ran pooled")
            _close(f"{where}: logits", pooled.logits, whole.logits, **LOGITS_TOL)
            _close(
                f"{where}: logits without gradient",
                pooled.no_grad_logits,
                whole.no_grad_logits,
                **LOGITS_TOL,
            )
            _close(f"{where}: loss", pooled.loss, whole.loss, **LOGITS_TOL)
            if pooled.parts.keys() != whole.parts.keys():
                raise AssertionError(
                    f"{where}: loss parts {sorted(pooled.parts)} against {sorted(whole.parts)}"
                )
            for name in whole.parts:
                _close(
                    f"{where}: loss part '{name}'",
                    pooled.parts[name],
                    whole.parts[name],
                    1e-6,
                    1e-5,
                )
            _same_gradients(where, pooled.grads, whole.grads)
    return None


def check_same_seed(kit: _Kit) -> str | None:
    """The same seed builds the same initial tensors, and the same training run (augmentation and
    the method's random draws included) ends with identical tensors and logits; training changes
    the method's tensors."""
    if not kit.trainable():
        first, second = kit.model(seed=TRAIN_SEED), kit.model(seed=TRAIN_SEED)
        _equal_states(
            "two builds with one seed", second.method.state_dict(), first.method.state_dict()
        )
        return None
    first, first_initial = kit.trained()
    second, second_initial = kit.train()
    _equal_states("initial tensors of two builds with one seed", second_initial, first_initial)
    _equal_states(
        "tensors after two training runs with one seed",
        second.method.state_dict(),
        first.method.state_dict(),
    )
    _equal(
        "evaluation logits after two training runs with one seed",
        kit.eval_logits(second, kit.images),
        kit.eval_logits(first, kit.images),
    )
    final = first.method.state_dict()
    if all(torch.equal(final[k], v) for k, v in first_initial.items()):
        raise AssertionError(
            f"{EPOCHS} epochs of training left every tensor of the method unchanged"
        )
    return None


def check_round_trip(kit: _Kit) -> str | None:
    """A trained model's adapter file holds exactly the method's tensors (no backbone tensor), and a
    model built afresh that loads it gives identical logits."""
    trained = kit.trained()[0]
    path = kit.adapter_of_trained()
    from . import adapters

    _, saved = adapters.read_adapter(path)
    state = trained.method.state_dict()
    if set(saved) != set(state):
        raise AssertionError(
            f"the adapter file holds {sorted(set(saved) - set(state))} beyond the method's "
            f"tensors and lacks {sorted(set(state) - set(saved))}"
        )
    storages = {
        t.untyped_storage().data_ptr(): n
        for n, t in kit.backbone_tensors().items()
        if t.numel() > 0
    }
    frozen = [
        f"'{k}' (the backbone's '{storages[v.untyped_storage().data_ptr()]}')"
        for k, v in state.items()
        if v.numel() > 0 and v.untyped_storage().data_ptr() in storages
    ]
    if frozen:
        raise AssertionError(f"the adapter file carries backbone tensors: {_listed(frozen)}")
    loaded = kit.model(seed=21)
    loaded.load_adapter(path)
    _equal(
        "evaluation logits of the loaded model against the saved one",
        kit.eval_logits(loaded, kit.images),
        kit.eval_logits(trained, kit.images),
    )
    return None


def check_stateless(kit: _Kit) -> str | None:
    """Two models built with different seeds that load one adapter file give identical logits, and
    a model's logits do not change after a training pass and a pass on other classes: whatever the
    method computes with lives in its saved tensors (buffers included)."""
    path = kit.adapter_of_trained()
    first, second = kit.model(seed=31), kit.model(seed=32)
    first.load_adapter(path)
    second.load_adapter(path)
    before = kit.eval_logits(first, kit.images)
    _equal(
        "evaluation logits of two models (built with seeds 31 and 32) loaded from one adapter file",
        kit.eval_logits(second, kit.images),
        before,
    )
    kit.run_pass(first, kit.others)
    first.set_classes(list(OTHER_CLASSES))
    kit.eval_logits(first, kit.others)
    first.set_classes(list(kit.classes))
    _equal(
        "evaluation logits before and after a training pass and a pass on other classes",
        kit.eval_logits(first, kit.images),
        before,
    )
    return None


def check_resume(kit: _Kit) -> str | None:
    """A training run interrupted in its second epoch and resumed from its checkpoint by a model
    built afresh ends with the tensors of the uninterrupted run, `epoch_weights` averaging
    included; `epoch_weights` gives one finite weight >= 0 an epoch, the same on every call."""
    if not kit.trainable():
        return "the method has no trainable parameter"
    probe = kit.model(perturb=False).method
    weights = probe.epoch_weights(EPOCHS)
    if weights is not None:
        weights = list(weights)
        if len(weights) != EPOCHS or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise AssertionError(
                f"epoch_weights({EPOCHS}) = {weights}: not {EPOCHS} finite weights >= 0"
            )
        if abs(sum(weights) - 1) > 1e-6:
            raise AssertionError(
                f"epoch_weights({EPOCHS}) = {weights} sum to {sum(weights)}, not 1"
            )
        again = kit.model(seed=5).method.epoch_weights(EPOCHS)
        if list(again) != weights:
            raise AssertionError(f"epoch_weights({EPOCHS}) gave {weights}, then {list(again)}")
    straight = kit.trained()[0]
    out_dir = os.path.join(kit.workdir, "interrupted")
    interrupted = kit.model(seed=TRAIN_SEED, perturb=False)
    trainer = Trainer(interrupted, kit.items(), kit.train_config(), out_dir=out_dir, progress=False)
    real_step, steps = trainer.optimizer.step, {"n": 0}

    def step_then_die(*args, **kwargs):
        steps["n"] += 1
        if steps["n"] == INTERRUPT_AT_STEP:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    trainer.optimizer.step = step_then_die
    try:
        trainer.run()
    except KeyboardInterrupt:
        pass
    resumed = kit.model(seed=41)  # everything it ends with must come from the checkpoint
    Trainer(resumed, kit.items(), kit.train_config(), out_dir=out_dir, progress=False).run()
    averaged = "" if weights is None else f" (epoch_weights {weights})"
    _equal_states(
        f"tensors after a run resumed in epoch 2 against the uninterrupted run{averaged}",
        resumed.method.state_dict(),
        straight.method.state_dict(),
    )
    return None


def _listed(names: list[str], most: int = 6) -> str:
    """The first few names, and how many more."""
    if not names:
        return "none"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


# In the order they run; the keys are the names a failure message gives.
INVARIANTS: dict[str, Callable[[_Kit], str | None]] = {
    OFF: check_switched_off,
    BATCH: check_batch_independence,
    FROZEN: check_frozen_backbone,
    GRADIENTS: check_gradients,
    CACHED: check_cached,
    TEXT: check_text_independent_of_images,
    POOLED: check_pooled_final_block,
    SEED: check_same_seed,
    ROUND_TRIP: check_round_trip,
    STATELESS: check_stateless,
    RESUME: check_resume,
}


@contextlib.contextmanager
def _tiny_work_settings() -> Iterator[None]:
    """One CPU thread (tensors this small run many times faster without the thread pool's
    overhead, most of all on a busy machine), and the caller's random states (Python's, NumPy's,
    torch's: the trainer seeds all three) given back after."""
    threads, python_state, numpy_state = (
        torch.get_num_threads(),
        random.getstate(),
        np.random.get_state(),
    )
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def check_method(method_class: type[Method], **options: Any) -> dict[str, str]:
    """Run every invariant (`INVARIANTS`) on a tiny random backbone; raise one AssertionError naming
    each broken invariant with its numbers, else return "passed" or the skip reason per invariant."""
    if not (isinstance(method_class, type) and issubclass(method_class, Method)):
        raise TypeError(f"check_method takes a Method subclass, got {method_class!r}")
    results: dict[str, str] = {}
    failures: list[str] = []
    first_error: BaseException | None = None
    with _tiny_work_settings(), tempfile.TemporaryDirectory(prefix="clipadapt-check-") as workdir:
        kit = _Kit(method_class, options, workdir)
        kit.model()  # bad options fail here, as themselves, before any check
        for name, check in INVARIANTS.items():
            try:
                skipped = check(kit)
            except Exception as err:  # noqa: BLE001 - a crash breaks the invariant being checked
                detail = (
                    str(err)
                    if isinstance(err, AssertionError)
                    else f"raised {type(err).__name__}: {err}"
                )
                failures.append(f"[{name}] {detail}")
                results[name] = "failed"
                first_error = first_error or err
            else:
                results[name] = "passed" if skipped is None else f"skipped: {skipped}"
            finally:
                kit.restore_backbone()
    if failures:
        label = getattr(method_class, "name", method_class.__name__)
        raise AssertionError(
            f"{method_class.__name__} ('{label}') breaks {len(failures)} of {len(INVARIANTS)} "
            "invariants of clipadapt.testing:\n" + "\n".join(failures)
        ) from first_error
    return results
