"""Hybrids: `--method rmadapter+coop` trains one model made of two (or more) methods whose hooks compose.

Each part is the method itself, built from its own config and kept as a submodule under its name
(its tensors are `rmadapter.visual_adapter...`, `coop.ctx`); its options are addressed by its name
(`coop.n_ctx=4`, `rmadapter.scale=0.01`). The hooks chain in a fixed order (docs/methods.md, Hybrids):

    begin_forward, set_classes, set_dataset, after_stems   every part, in the order the name gives
    prompt_embeddings   the part that replaces prompt tokens first, then the parts that only read them
    step                the one part that owns the block step (none: CLIP's blocks)
    after_heads         every part, in the name's order, each seeing what the previous left
    logits              the parts that only read it (to keep the scale), then the one that defines it
                        (none: CLIP's scaled cosine similarity)
    loss                the task loss once (cross-entropy, or the one part's own task loss) plus every
                        part's regularizers: each part's loss minus the cross-entropy it contains
    first_active_blocks the earliest of the parts', per tower
    epoch_weights       the one part that averages over epochs, if any

A pair that cannot compose is refused in one line naming the hook: two parts replacing the prompt
tokens, owning the block step, defining the logits, bringing their own task loss or averaging over
epochs; a part that makes its own class text after the heads (CoCoOp) beside a part that changes
the text tower.

Teachers read the hand-crafted prompt. A part whose loss compares with frozen CLIP (RMAdapter's
consistency, MMRL's) gets the frozen text features of its own hand-crafted template (its
`template` option, else the dataset's, else "a photo of a {}.") whenever another part replaces the
prompt tokens: the prompts the model encodes are then placeholders ("X X X X circle.") whose frozen
features would be no teacher. KgCoOp and PromptSRC encode their hand-crafted prompts themselves.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..backbone import Backbone, TextBatch
from ..errors import ClipadaptError
from ..frozen_cache import frozen_text_features
from ..hybrid_names import SEPARATOR, hybrid_parts
from ..prompts import format_prompt
from ..validation import SettingError
from .base import Method, MethodConfig

DEFAULT_TEMPLATE = "a photo of a {}."

# What a method does in a hook it overrides, where the strictest reading (it owns the hook) is wrong.
# A method from another package declares the same as a class attribute `hybrid_roles`.
#   prompt_embeddings: "replaces" (learned tokens) | "reads" (remembers the batch)
#   step: "owns"          logits: "defines" | "reads" (keeps the scale)
#   after_heads: "changes" | "reads" | "remakes_text" (encodes its own class text there)
#   loss: "adds" (cross-entropy plus regularizers) | "task" (its own task loss)
#   epoch_weights: "owns"
OWNING_ROLES = {
    "prompt_embeddings": "replaces",
    "after_stems": "changes",
    "step": "owns",
    "after_heads": "changes",
    "logits": "defines",
    "loss": "task",
    "epoch_weights": "owns",
}
HOOK_ROLES: dict[str, dict[str, str]] = {
    "rmadapter": {
        "prompt_embeddings": "reads",
        "after_heads": "reads",
        "logits": "reads",
        "loss": "adds",
    },
    "mma_pp": {"prompt_embeddings": "reads", "after_heads": "reads", "loss": "adds"},
    "rmma": {"prompt_embeddings": "reads"},
    "mmrl": {"prompt_embeddings": "reads", "after_heads": "reads"},
    "kgcoop": {"after_heads": "reads", "loss": "adds"},
    "promptsrc": {"after_heads": "reads", "logits": "reads", "loss": "adds"},
    "cocoop": {"prompt_embeddings": "reads", "after_heads": "remakes_text"},
}
# Hooks of which at most one part may hold the given role.
EXCLUSIVE = {
    "prompt_embeddings": "replaces",
    "step": "owns",
    "logits": "defines",
    "loss": "task",
    "epoch_weights": "owns",
}
EXCLUSIVE_WHY = {
    "prompt_embeddings": "both replace the prompt tokens",
    "step": "both own the block step",
    "logits": "both define the logits",
    "loss": "both bring their own task loss",
    "epoch_weights": "both average over epochs",
}


def hook_roles(cls: type[Method]) -> dict[str, str]:
    """What `cls` does in each hook it overrides (a hook it does not override is absent)."""
    declared = getattr(cls, "hybrid_roles", None) or HOOK_ROLES.get(cls.name, {})
    return {
        hook: declared.get(hook, owning)
        for hook, owning in OWNING_ROLES.items()
        if getattr(cls, hook) is not getattr(Method, hook)
    }


def check_composable(name: str, parts: dict[str, type[Method]]) -> None:
    """Refuse, in one line naming the hook, parts whose hooks cannot chain."""
    roles = {part: hook_roles(cls) for part, cls in parts.items()}
    for hook, role in EXCLUSIVE.items():
        holders = [part for part in parts if roles[part].get(hook) == role]
        if len(holders) > 1:
            raise ClipadaptError(
                f"method '{name}' cannot compose: hook '{hook}': {' and '.join(holders)} "
                f"{EXCLUSIVE_WHY[hook]}"
            )
    for part in parts:
        if roles[part].get("after_heads") != "remakes_text":
            continue
        others = [p for p, cls in parts.items() if p != part and _changes_text(cls, roles[p])]
        if others:
            raise ClipadaptError(
                f"method '{name}' cannot compose: hook 'after_heads': {part} encodes its own class "
                f"text there, so the text {others[0]} changes would not reach the logits"
            )


def _changes_text(cls: type[Method], roles: dict[str, str]) -> bool:
    """Whether a method may change the class text features (prompt tokens, blocks or heads)."""
    return (
        roles.get("prompt_embeddings") == "replaces"
        or "step" in roles
        or "after_stems" in roles
        or roles.get("after_heads") in ("changes", "remakes_text")
    )


class HybridConfig(MethodConfig):
    """A hybrid's options: each part's config, addressed '<part>.<option>' (`coop.n_ctx`).

    An option every part has (`prompts`, `template`), given without a part, sets it in every part.
    `template` and `prompts` read as the model reads any method's: the prompt the model encodes is
    the template of the part that replaces prompt tokens, else the first part's that sets one."""

    hybrid_name: ClassVar[str] = ""
    part_classes: ClassVar[dict[str, type[Method]]] = {}

    def __init__(self, parts: dict[str, MethodConfig] | None = None):  # noqa: D107
        given = dict(parts or {})
        self.parts = {
            part: given[part] if part in given else cls.Config()
            for part, cls in self.part_classes.items()
        }

    @property
    def template(self) -> str | None:  # type: ignore[override]
        """The prompt the model encodes (None: the dataset's)."""
        for part, cls in self.part_classes.items():
            if hook_roles(cls).get("prompt_embeddings") == "replaces":
                return self.parts[part].template
        return next((c.template for c in self.parts.values() if c.template), None)

    @property
    def prompts(self) -> Any:  # type: ignore[override]
        """The prompt set of the first part that sets one (None: one prompt a class)."""
        return next((c.prompts for c in self.parts.values() if c.prompts is not None), None)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"

    @classmethod
    def shared_options(cls) -> list[str]:
        """Options every part has: given without a part, they set every part's."""
        names = [set(c.Config.option_names()) for c in cls.part_classes.values()]
        return sorted(set.intersection(*names)) if names else []

    @classmethod
    def option_names(cls) -> list[str]:
        """'<part>.<option>' for every option of every part, and the options all parts share."""
        return [
            *(f"{p}.{o}" for p, c in cls.part_classes.items() for o in c.Config.option_names()),
            *cls.shared_options(),
        ]

    def to_dict(self) -> dict[str, Any]:
        """Every part's options, flat: {'rmadapter.scale': 0.001, 'coop.n_ctx': 16, ...}."""
        return {
            f"{p}.{k}": v for p, config in self.parts.items() for k, v in config.to_dict().items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HybridConfig:
        """Parts' configs from '<part>.<option>' keys (or shared options); the part is named in errors."""
        per_part: dict[str, dict[str, Any]] = {part: {} for part in cls.part_classes}
        shared = cls.shared_options()
        for key, value in values.items():
            part, dot, option = str(key).partition(".")
            if dot and part in per_part:
                per_part[part][option] = value
            elif not dot and key in shared:
                for options in per_part.values():
                    options.setdefault(key, value)
            elif dot:
                raise ValueError(
                    f"option '{key}': '{part}' is not a part of '{cls.hybrid_name}' "
                    f"(parts: {', '.join(per_part)})"
                )
            else:
                raise ValueError(
                    f"option '{key}' names no part of '{cls.hybrid_name}': write "
                    f"'<part>.{key}' with a part of {', '.join(per_part)}"
                )
        configs = {}
        for part, options in per_part.items():
            try:
                configs[part] = cls.part_classes[part].Config.from_dict(options)
            except SettingError as err:
                raise SettingError(f"{part}: {err}") from None
            except (TypeError, ValueError) as err:
                raise ValueError(f"{part}: {err}") from None
        return cls(configs)


class Hybrid(Method):
    """Several methods in one model, their hooks chained (see the module's docstring)."""

    part_classes: ClassVar[dict[str, type[Method]]] = {}
    Config = HybridConfig

    def __init__(self, config: HybridConfig, backbone: Backbone, classnames: list[str]):
        super().__init__(config, backbone, classnames)
        for part, cls in self.part_classes.items():
            self.add_module(part, cls(config.parts[part], backbone, list(classnames)))
        roles = {part: hook_roles(cls) for part, cls in self.part_classes.items()}
        self.roles = roles
        replacers = [p for p in roles if roles[p].get("prompt_embeddings") == "replaces"]
        readers = [p for p in roles if roles[p].get("prompt_embeddings") == "reads"]
        self._prompt_chain = [*replacers, *readers]
        self._replaces_prompts = bool(replacers)
        self._step_owner = next((p for p in roles if roles[p].get("step") == "owns"), None)
        self._logit_readers = [p for p in roles if roles[p].get("logits") == "reads"]
        self._logit_owner = next((p for p in roles if roles[p].get("logits") == "defines"), None)
        self._head_chain = [p for p in roles if "after_heads" in roles[p]]
        self._stem_chain = [p for p in roles if "after_stems" in roles[p]]
        self._task_loss = next((p for p in roles if roles[p].get("loss") == "task"), None)
        self._regularizers = [p for p in roles if roles[p].get("loss") == "adds"]
        self._averaging = next((p for p in roles if "epoch_weights" in roles[p]), None)
        # Frozen CLIP's hand-crafted prompts for the teachers; a plain attribute, so the backbone is
        # never one of the hybrid's modules (nor in its state dict).
        self.__dict__["_backbone"] = backbone
        self.classnames = list(classnames)
        self.dataset_template: str | None = None
        self._teachers: dict[tuple, torch.Tensor] = {}

    def parts(self) -> dict[str, Method]:
        """The part methods by name, in the hybrid's order."""
        return {part: getattr(self, part) for part in self.part_classes}

    # ---- state the model hands over, passed on to every part -----------------------------------
    @property
    def draws(self) -> torch.Generator | None:
        """The run's generator for random draws (every part draws from it)."""
        return self.__dict__.get("_draws")

    @draws.setter
    def draws(self, generator: torch.Generator | None) -> None:
        self.__dict__["_draws"] = generator
        for part in self._modules.values() if "_modules" in self.__dict__ else ():
            if isinstance(part, Method):
                part.draws = generator

    @property
    def given_frozen(self) -> dict[str, torch.Tensor | None]:
        """The frozen features the model hands over before a training pass."""
        return self.__dict__.get("_given_frozen", {"image": None, "text": None})

    @given_frozen.setter
    def given_frozen(self, frozen: dict[str, torch.Tensor | None]) -> None:
        self.__dict__["_given_frozen"] = frozen
        if "_teachers" not in self.__dict__:  # still in Method.__init__: no parts yet
            return
        for part in self.parts().values():
            text = frozen.get("text")
            if text is not None and part.compares_with_frozen and self._replaces_prompts:
                text = self.teacher_text(part).to(text.device)
            part.given_frozen = {"image": frozen.get("image"), "text": text}

    def teacher_template(self, part: Method) -> str:
        """The hand-crafted prompt a part's teacher reads: its own template (unless it learns the
        prompt tokens), else the dataset's, else "a photo of a {}."."""
        own = part.config.template
        replaces = self.roles[part.name].get("prompt_embeddings") == "replaces"
        return (None if replaces else own) or self.dataset_template or DEFAULT_TEMPLATE

    def teacher_text(self, part: Method) -> torch.Tensor:
        """Frozen CLIP's text features of the part's hand-crafted prompts [classes, dim], once per class set."""
        template = self.teacher_template(part)
        key = (template, tuple(self.classnames))
        if key not in self._teachers:
            prompts = [format_prompt(template, c) for c in self.classnames]
            self._teachers = {key: frozen_text_features(self._backbone, prompts)}
        return self._teachers[key]

    # ---- hooks, chained --------------------------------------------------------------------------
    def begin_forward(self) -> None:
        """Every part clears its per-pass state."""
        for part in self.parts().values():
            part.begin_forward()

    def set_classes(self, classnames: list[str], trained_on: bool | None = None) -> None:
        """Every part is told the classes."""
        self.classnames = list(classnames)
        for part in self.parts().values():
            part.set_classes(classnames, trained_on)

    def set_dataset(self, dataset: str | None, dataset_template: str | None) -> None:
        """Every part is told the dataset; its template is the teachers' when a part has none."""
        if dataset_template is not None:
            self.dataset_template = dataset_template
        for part in self.parts().values():
            part.set_dataset(dataset, dataset_template)

    def prompt_embeddings(self, batch: TextBatch) -> TextBatch:
        """The part that replaces prompt tokens, then the parts that read them."""
        for part in self._prompt_chain:
            batch = getattr(self, part).prompt_embeddings(batch)
        return batch

    def after_stems(self, img, txt):
        """Every part that acts on the stems' sequences, in order."""
        for part in self._stem_chain:
            img, txt = getattr(self, part).after_stems(img, txt)
        return img, txt

    def step(self, index, backbone, img, txt, queries=None):
        """The block step of the part that owns it; CLIP's blocks when none does."""
        if self._step_owner is None:
            return super().step(index, backbone, img, txt, queries)
        owner = getattr(self, self._step_owner)
        if queries:
            return owner.step(index, backbone, img, txt, queries=queries)
        return owner.step(index, backbone, img, txt)

    def after_heads(self, backbone, img_f, txt_f):
        """Every part's output step, in order."""
        for part in self._head_chain:
            img_f, txt_f = getattr(self, part).after_heads(backbone, img_f, txt_f)
        return img_f, txt_f

    def logits(self, img_f, txt_f, logit_scale):
        """The reading parts see the logits' inputs; the defining part (or CLIP's cosine) gives them."""
        for part in self._logit_readers:
            getattr(self, part).logits(img_f, txt_f, logit_scale)
        if self._logit_owner is None:
            return super().logits(img_f, txt_f, logit_scale)
        return getattr(self, self._logit_owner).logits(img_f, txt_f, logit_scale)

    def loss(self, logits, labels):
        """The task loss once plus each part's regularizers (its loss minus its cross-entropy)."""
        ce = F.cross_entropy(logits, labels)
        if self._task_loss is None:
            total, log = ce, {"ce": ce.detach()}
        else:
            total, own = getattr(self, self._task_loss).loss(logits, labels)
            log = {f"{self._task_loss}.{k}": v for k, v in own.items()}
        for part in self._regularizers:
            part_total, part_log = getattr(self, part).loss(logits, labels)
            total = total + (part_total - ce)
            log.update({f"{part}.{k}": v for k, v in part_log.items() if k != "ce"})
        return total, log

    def first_active_blocks(self, backbone: Backbone) -> tuple[int, int]:
        """The earliest block any part changes, per tower."""
        firsts = [part.first_active_blocks(backbone) for part in self.parts().values()]
        return min(f[0] for f in firsts), min(f[1] for f in firsts)

    def epoch_weights(self, epochs: int) -> list[float] | None:
        """The epoch average of the one part that keeps one."""
        if self._averaging is None:
            return None
        return getattr(self, self._averaging).epoch_weights(epochs)


def _combined_prompt_sets(classes: list[type[Method]]) -> str | None:
    """None when a part takes no prompt sets; "draw" when a part draws; else "mean"."""
    modes = [cls.prompt_sets for cls in classes]
    if any(mode is None for mode in modes):
        return None
    return "draw" if "draw" in modes else "mean"


@functools.cache
def compose(name: str, parts: tuple[type[Method], ...]) -> type[Hybrid]:
    """The method class of the hybrid `name` of these part classes (in its order); ClipadaptError for a
    name that is no hybrid or a pair that cannot compose (one line naming the hook)."""
    names = hybrid_parts(name) or [name]
    if len(names) < 2 or len(set(names)) != len(names) or len(parts) != len(names):
        raise ClipadaptError(
            f"method '{name}': a hybrid names two or more different methods joined by "
            f"'{SEPARATOR}' (e.g. rmadapter+coop)"
        )
    classes = {}
    for part, cls in zip(names, parts, strict=True):
        if issubclass(cls, Hybrid):
            raise ClipadaptError(f"method '{name}': part '{part}' is itself a hybrid")
        classes[part] = cls
    check_composable(name, classes)
    parts = list(classes.values())
    title = "".join(cls.__name__ for cls in parts)
    config = type(
        f"{title}Config",
        (HybridConfig,),
        {"hybrid_name": name, "part_classes": classes, "__module__": __name__},
    )
    non_output = [cls for cls in parts if not cls.output_only]
    return type(
        title,
        (Hybrid,),
        {
            "name": name,
            "Config": config,
            "part_classes": classes,
            "__module__": __name__,
            "__doc__": f"The hybrid {name}: {', '.join(names)} chained (clipadapt.methods.hybrid).",
            "acts_on_blocks": any(cls.acts_on_blocks for cls in parts),
            "text_depends_on_images": any(cls.text_depends_on_images for cls in parts),
            "image_depends_on_text": any(cls.image_depends_on_text for cls in parts),
            "output_only": all(cls.output_only for cls in parts),
            "compares_with_frozen": any(cls.compares_with_frozen for cls in parts),
            "prompt_sets": _combined_prompt_sets(parts),
            "pooled_final_block": bool(non_output)
            and all(cls.pooled_final_block for cls in non_output),
            # The first part's paper settings; every one is a training setting a preset overrides.
            "training_defaults": dict(parts[0].training_defaults),
        },
    )


__all__ = ["Hybrid", "HybridConfig", "compose", "hook_roles", "check_composable"]
