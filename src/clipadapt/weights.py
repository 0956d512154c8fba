"""Acquiring a CLIP's frozen weights: open_clip names and tags, weight files, the Hugging Face cache,
the offline check, and the identity that names the weights in every result file.

Stepping the towers block by block is `backbone.py`'s job; it asks this module for the model.
"""

from __future__ import annotations

import functools
import os
import socket
import zipfile
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import constants, try_to_load_from_cache

from .checks import closest_names, unknown_name
from .errors import ClipadaptError
from .fileio import file_digest
from .synthetic_weights import (
    MODEL_CONFIG_DIR,
    SHIPPED_NAME,
    is_shipped,
    load_shipped,
    shipped_identity,
    shipped_tokenizer,
)

NO_WEIGHTS = ("none", "", None)


@functools.cache
def register_model_configs() -> None:
    """Make clipadapt's model configs known to open_clip (once; called before any name is resolved)."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def is_openai_torchscript(path: str) -> bool:
    """True when a file is one of OpenAI's TorchScript CLIP archives (they need QuickGELU)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.split("/", 1)[-1].startswith("code/") for n in archive.namelist()[:200])


def resolve_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether the weights were trained with QuickGELU (OpenAI's), so the model must use it too."""
    if pretrained in NO_WEIGHTS:
        return False
    if os.path.isfile(str(pretrained)):
        return is_openai_torchscript(str(pretrained))
    register_model_configs()
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
    return bool(tag_cfg.get("quick_gelu", False))


def weights_identity(name: str, pretrained: str | None) -> str:
    """A string naming the frozen weights: model name plus tag, file digest, or 'none'."""
    if pretrained in NO_WEIGHTS:
        return f"{name}/none"
    if os.path.isfile(str(pretrained)):
        return f"{name}/sha256:{file_digest(pretrained)}"
    return f"{name}/{pretrained}"


def backbone_identity(name: str, pretrained: str | None) -> str:
    """The identity `load_backbone(name, pretrained)` gives its backbone, without loading any weights."""
    return shipped_identity(pretrained) if is_shipped(name) else weights_identity(name, pretrained)


def check_weights_source(name: str, pretrained: str | None) -> None:
    """Refuse an unknown model name, or weights that are neither 'none', a file nor one of its tags."""
    if is_shipped(name):
        shipped_identity(pretrained)  # the file must exist
        return
    register_model_configs()
    if name not in open_clip.list_models():
        models = [SHIPPED_NAME, *open_clip.list_models()]
        raise unknown_name("backbone", name, models, " to open_clip: open_clip.list_models()")
    if pretrained not in NO_WEIGHTS and not os.path.isfile(str(pretrained)):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            close = closest_names(str(pretrained), tags)
            hint = (
                f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else f"tags: {', '.join(tags[:12]) or 'none'}{', ...' if len(tags) > 12 else ''}"
            )
            raise ClipadaptError(
                f"pretrained '{pretrained}' is neither a file nor a tag of '{name}' ({hint})"
            )


HF_SAFE_NAMES = ("open_clip_model.safetensors",)  # what open_clip tries before its .bin file


def _hf_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return cache_dir

    return constants.HF_HUB_CACHE


def cached_weights(cfg: dict, cache_dir: str | None) -> str | None:
    """The local file open_clip would load for a pretrained tag's config, if it is already cached."""
    hub = cfg.get("hf_hub", "")
    if hub:
        model_id, filename = os.path.split(hub)
        for name in (*HF_SAFE_NAMES, filename or "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(model_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    url = cfg.get("url", "")
    path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return path if url and os.path.isfile(path) else None


def host_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens within `timeout` seconds (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_weights_reachable(name: str, pretrained: str, cache_dir: str | None = None) -> None:
    """Refuse, in seconds and one line, a tag whose weights are neither cached nor downloadable."""
    register_model_configs()
    cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
    if not cfg or "file" in cfg or cached_weights(cfg, cache_dir):
        return

    hub = cfg.get("hf_hub", "")
    host = "huggingface.co" if hub else urlparse(cfg.get("url", "")).hostname or ""
    if host and host_reachable(host):
        return
    where = (
        f"the Hugging Face cache '{_hf_cache_dir(cache_dir)}' (repo {os.path.split(hub)[0]})"
        if hub
        else f"'{os.path.join(cache_dir or os.path.expanduser('~/.cache/clip'), os.path.basename(cfg['url']))}'"
    )
    raise ClipadaptError(
        f"weights '{pretrained}' of '{name}' are not cached in {where} and {host} cannot be "
        f"reached; copy the weights file to this machine and pass it with --pretrained PATH"
    )


def create_clip(
    name: str,
    pretrained: str | None = "none",
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
):
    """(open_clip model, tokenizer, weights identity, quick_gelu) for a name and a tag, a file or no weights."""
    if is_shipped(name):
        model, identity = load_shipped(pretrained)
        return model, shipped_tokenizer(), identity, False
    check_weights_source(name, pretrained)
    if quick_gelu is None:
        quick_gelu = resolve_quick_gelu(name, pretrained)
    is_file = pretrained not in NO_WEIGHTS and os.path.isfile(str(pretrained))
    if pretrained not in NO_WEIGHTS and not is_file:
        check_weights_reachable(name, str(pretrained), cache_dir)
    identity = weights_identity(name, pretrained)
    try:
        if is_file and is_openai_torchscript(str(pretrained)):
            model = open_clip.load_openai_model(str(pretrained), device="cpu", jit=False)
        else:
            # Random weights are drawn from a fixed seed, so "none" names one reproducible backbone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(
                    name,
                    pretrained=None if pretrained in NO_WEIGHTS else pretrained,
                    force_quick_gelu=quick_gelu,
                    cache_dir=cache_dir,
                )
    except RuntimeError as err:
        if "download" in str(err).lower():
            raise ClipadaptError(
                f"could not download weights '{pretrained}' for '{name}': {err}. "
                "Pass a local checkpoint file with --pretrained PATH."
            ) from err
        raise
    return model, open_clip.get_tokenizer(name), identity, quick_gelu
