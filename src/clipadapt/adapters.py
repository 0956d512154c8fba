"""The adapter file: a method's trained parameters as safetensors, with metadata naming the method, its
options, the class names and the frozen backbone they belong to.

One writer and one reader for everything that makes or uses the file: a training run
(`AdaptedCLIP.save_adapter`), the importers of official checkpoints, and `load_model` (behind
`eval`, `predict` and `transfer --checkpoint`). The backbone's identity is
`weights.backbone_identity(name, pretrained)`, the same string `load_backbone` gives its model, so an
imported file is checked exactly as a trained one.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import CheckpointMismatchError, ClipadaptError
from .fileio import atomic_path

if TYPE_CHECKING:  # torch and safetensors load when a file is read or written, not when the names are imported
    import torch

ADAPTER_FORMAT = "clipadapt-adapter/1"
FILE_NAME = "adapter.safetensors"  # a run folder's adapter
# The prompt set is not part of an adapter: one trained with descriptions may be tested with templates.
UNBOUND_OPTIONS = ("prompts",)


def write_adapter(path: str, tensors: dict[str, torch.Tensor], *, method: str, method_config: dict[str, Any],
                  backbone: str, pretrained: Any, backbone_identity: str, classnames: list[str],
                  extra: dict[str, str] | None = None) -> None:
    """Write an adapter file atomically: the tensors (moved to the CPU) and the metadata that identifies them."""
    from safetensors.torch import save_file

    meta = {"format": ADAPTER_FORMAT, "clipadapt_version": __version__, "method": method,
            "method_config": json.dumps(method_config), "backbone_identity": backbone_identity,
            "backbone": str(backbone), "pretrained": str(pretrained), "classnames": json.dumps(list(classnames)),
            **(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=meta)


def read_adapter(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of an adapter file; a clear error for anything else."""
    from safetensors import safe_open

    if os.path.isdir(path):
        raise ClipadaptError(f"adapter '{path}' is a folder; give its {FILE_NAME}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ClipadaptError(f"adapter file '{path}' does not exist") from None
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ClipadaptError(f"'{path}' is not a clipadapt adapter file (safetensors): {err}") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise ClipadaptError(f"'{path}' is not a clipadapt adapter file (no '{ADAPTER_FORMAT}' metadata)")
    return meta, tensors


def recorded_options(meta: dict[str, str]) -> dict[str, Any]:
    """The method options an adapter file was saved with."""
    return json.loads(meta.get("method_config", "{}"))


def recorded_classnames(meta: dict[str, str]) -> list[str]:
    """The class names an adapter was trained on ([] for an import that was given none)."""
    return json.loads(meta.get("classnames", "[]"))


def check_adapter_fits(meta: dict[str, str], path: str, method: str, backbone_identity: str,
                       method_config: dict[str, Any]) -> None:
    """Refuse an adapter made for another method, backbone or structure than the model it is loaded into."""
    if meta.get("method") != method:
        raise CheckpointMismatchError(f"adapter '{path}' was trained with method '{meta.get('method')}', not '{method}'")
    if meta.get("backbone_identity") != backbone_identity:
        raise CheckpointMismatchError(f"adapter '{path}' was trained on backbone '{meta.get('backbone_identity')}', "
                                      f"but the loaded backbone is '{backbone_identity}'")
    saved = {k: v for k, v in recorded_options(meta).items() if k not in UNBOUND_OPTIONS}
    ours = {k: v for k, v in method_config.items() if k not in UNBOUND_OPTIONS}
    if saved != ours:
        raise CheckpointMismatchError(f"adapter '{path}' was saved with config {saved}, this model has {ours}")


# ---- official checkpoints ----------------------------------------------------------------------
def official_readers() -> dict[str, Any]:
    """Method -> its module's `official_adapter(path, **options) -> (config, tensors under our names)`.

    Found by looking the function up on each registered method's module, so a method that gains a
    reader needs no edit here."""
    import importlib

    from .registry import METHOD_CLASSES

    readers = {}
    for name, (module, _) in METHOD_CLASSES.items():
        reader = getattr(importlib.import_module(f"{__package__}.methods.{module}"), "official_adapter", None)
        if callable(reader):
            readers[name] = reader
    return readers


def reader_options(method: str) -> tuple[list[str], bool]:
    """The named options a method's official reader takes (its path excluded), and whether it takes others too."""
    import inspect

    params = list(inspect.signature(official_readers()[method]).parameters.values())[1:]
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def import_official(method: str, path: str, out: str, backbone: str = "ViT-B-16", pretrained: str = "openai",
                    classnames: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """Convert a checkpoint of a method's official code into an adapter file; returns what was written.

    `options` are the reader's (the scale MMA was trained with, MMRL's last block and alpha, ...). The
    tensors are checked, key by key and shape by shape, against the method built on the backbone's
    architecture (no weights are loaded), and the file records the backbone's identity as training does."""
    from .backbone import load_backbone
    from .methods import method_class
    from .official_checkpoints import check_state_fits
    from .weights import backbone_identity, check_weights_source

    from .checks import check_writable

    check_writable(out, "file")
    readers = official_readers()
    if method not in readers:
        raise ClipadaptError(f"no importer for method '{method}'; official checkpoints import for: {', '.join(readers)}")
    accepted, takes_any = reader_options(method)
    unknown = sorted(k for k in options if k not in accepted)
    if unknown and not takes_any:
        raise ClipadaptError(f"the {method} importer takes no option {', '.join(unknown)}; "
                             f"its options: {', '.join(accepted) or 'none'}")
    check_weights_source(backbone, pretrained)
    identity = backbone_identity(backbone, pretrained)  # before any work: the weights must be named rightly
    try:
        config, state = readers[method](path, **options)
    except TypeError as err:  # an option the method's config does not know (readers passing **options on)
        raise ClipadaptError(f"the {method} importer: {err}") from None
    architecture = load_backbone(backbone, "none")
    check_state_fits(method_class(method)(config, architecture, list(classnames or ["a", "b"])), state, path)
    write_adapter(out, {k: v.float() for k, v in state.items()}, method=method, method_config=config.to_dict(),
                  backbone=backbone, pretrained=pretrained, backbone_identity=identity,
                  classnames=list(classnames or []), extra={"imported_from": os.path.abspath(path)})
    return {"method": method, "config": config.to_dict(), "parameters": sum(v.numel() for v in state.values()),
            "backbone": backbone, "pretrained": str(pretrained), "out": out}
