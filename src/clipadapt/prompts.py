"""Prompt sets: several text prompts per class instead of one template.

A prompt set is named by a `prompts` value (the `--prompts` option, `prompts:` in a preset):

    None / "none"      one prompt per class from the template (CLIP's and CoOp's default)
    "openai80"         CLIP's 80 ImageNet templates (open_clip's OPENAI_IMAGENET_TEMPLATES)
    a list of strings  templates with "{}" for the class name (presets)
    FILE.json          CuPL's layout {"class name": ["description", ...]}, or a JSON list of templates
    DIR                a folder of such files, one per dataset: DIR/<dataset>.json (ImageNet variants
                       fall back to DIR/imagenet.json, as the official MMA++ code uses ImageNet's)

Descriptions are matched to class names as the official MMA++ code matches them: both lower-cased
with "_" read as a space. Classes may have different numbers of prompts.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from .errors import ClipadaptError

OPENAI80 = "openai80"
NO_PROMPT_SET = ("none", "", None)


def format_prompt(template: str, classname: str) -> str:
    """A class prompt, with underscores in the class name read as spaces (as CoOp does)."""
    return template.format(classname.replace("_", " "))


def openai_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates, as shipped by open_clip, with "{}" for the class."""
    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def match_key(name: str) -> str:
    """How a class name and a descriptions key are compared: lower case, "_" as space."""
    return name.lower().replace("_", " ")


def _check_templates(templates: list[Any], source: str) -> list[str]:
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ClipadaptError(
            f"prompt templates from {source} must be a non-empty list of strings each holding "
            "'{}' for the class name"
        )
    return list(templates)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise ClipadaptError(f"cannot read prompts file '{path}': {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ClipadaptError(f"prompts file '{path}' is not valid JSON: {err}") from None


def _file_for(spec: str, dataset: str | None) -> str:
    """The JSON file a spec names, picking DIR/<dataset>.json for a folder."""
    if not os.path.isdir(spec):
        if not os.path.exists(spec):
            what = "file" if spec.lower().endswith(".json") else "file or folder"
            raise ClipadaptError(
                f"prompts {what} '{spec}' does not exist (--prompts takes 'openai80', 'none', "
                "a .json file or a folder of <dataset>.json files in CuPL's layout "
                '{"class": ["description", ...]})'
            )
        return spec
    if not dataset:
        raise ClipadaptError(
            f"prompts folder '{spec}' holds one file per dataset; without a dataset "
            "(predict) pass a .json file or --prompts none"
        )
    candidates = [os.path.join(spec, f"{dataset}.json")]
    if "imagenet" in dataset and dataset != "imagenet":
        candidates.append(os.path.join(spec, "imagenet.json"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise ClipadaptError(
        f"prompts folder '{spec}' has no {' or '.join(os.path.basename(c) for c in candidates)} "
        f"for dataset '{dataset}'"
    )


def class_prompts(
    spec: str | list[str] | None, classnames: list[str], template: str, dataset: str | None = None
) -> list[list[str]]:
    """The prompts of each class, in class order (one each when `spec` is none)."""
    if spec in NO_PROMPT_SET:
        return [[format_prompt(template, c)] for c in classnames]
    if isinstance(spec, (list, tuple)):
        templates = _check_templates(list(spec), "the config")
    elif spec == OPENAI80:
        templates = openai_templates()
    elif isinstance(spec, str):
        path = _file_for(spec, dataset)
        data = _read_json(path)
        if isinstance(data, list):
            templates = _check_templates(data, f"'{path}'")
        elif isinstance(data, dict):
            return _descriptions(data, classnames, path)
        else:
            raise ClipadaptError(
                f"prompts file '{path}' must hold a mapping class -> list of descriptions "
                "or a list of templates"
            )
    else:
        raise ClipadaptError(f"prompts must be a name, a path or a list of templates, got {spec!r}")
    return [[format_prompt(t, c) for t in templates] for c in classnames]


def _descriptions(data: dict, classnames: list[str], path: str) -> list[list[str]]:
    table = {
        match_key(str(k)): v for k, v in data.items()
    }  # later keys win, as in the official code
    missing = [c for c in classnames if match_key(c) not in table]
    if missing:
        shown = ", ".join(f"'{c}'" for c in missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ClipadaptError(
            f"prompts file '{path}' has no descriptions for class {shown} "
            "(names are matched lower-case with '_' as space)"
        )
    out = []
    for c in classnames:
        prompts = table[match_key(c)]
        if isinstance(prompts, str):
            prompts = [prompts]
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise ClipadaptError(
                f"prompts file '{path}': the entry for '{c}' must be a non-empty list of strings"
            )
        out.append(list(prompts))
    return out


def ensemble_features(
    features: torch.Tensor, owner: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per class, the mean of its prompts' normalised features, normalised again: [classes, dim]."""
    unit = F.normalize(features.float(), dim=-1)
    summed = torch.zeros(num_classes, unit.shape[1], device=unit.device).index_add_(0, owner, unit)
    counts = torch.bincount(owner, minlength=num_classes).clamp_min(1).to(unit.dtype)
    return F.normalize(summed / counts[:, None], dim=-1).to(features.dtype)
