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
import re
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import CheckpointMismatchError, ClipadaptError
from .fileio import atomic_path

if (
    TYPE_CHECKING
):  # torch and safetensors load when a file is read or written, not when the names are imported
    import torch

ADAPTER_FORMAT = "clipadapt-adapter/1"
FILE_NAME = "adapter.safetensors"  # a run folder's adapter
# The prompt set is not part of an adapter: one trained with descriptions may be tested with templates.
UNBOUND_OPTIONS = ("prompts",)


def write_adapter(
    path: str,
    tensors: dict[str, torch.Tensor],
    *,
    method: str,
    method_config: dict[str, Any],
    backbone: str,
    pretrained: Any,
    backbone_identity: str,
    classnames: list[str],
    extra: dict[str, str] | None = None,
) -> None:
    """Write an adapter file atomically: the tensors (moved to the CPU) and the metadata that identifies them."""
    from safetensors.torch import save_file

    from .registry import method_origin

    meta = {
        "format": ADAPTER_FORMAT,
        "clipadapt_version": __version__,
        "method": method,
        **method_origin(method),  # its class path and package: loading it elsewhere finds it
        "method_config": json.dumps(method_config),
        "backbone_identity": backbone_identity,
        "backbone": str(backbone),
        "pretrained": str(pretrained),
        "classnames": json.dumps(list(classnames)),
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=meta)


def read_adapter(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of an adapter (a file, a folder holding one, or a Hub id); a clear error for anything else."""
    from safetensors import safe_open

    path = resolve_adapter(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ClipadaptError(f"adapter file '{path}' does not exist") from None
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ClipadaptError(
            f"'{path}' is not a clipadapt adapter file (safetensors): {err}"
        ) from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise ClipadaptError(
            f"'{path}' is not a clipadapt adapter file (no '{ADAPTER_FORMAT}' metadata)"
        )
    return meta, tensors


def recorded_options(meta: dict[str, str]) -> dict[str, Any]:
    """The method options an adapter file was saved with."""
    return json.loads(meta.get("method_config", "{}"))


def recorded_classnames(meta: dict[str, str]) -> list[str]:
    """The class names an adapter was trained on ([] for an import that was given none)."""
    return json.loads(meta.get("classnames", "[]"))


def check_adapter_fits(
    meta: dict[str, str],
    path: str,
    method: str,
    backbone_identity: str,
    method_config: dict[str, Any],
) -> None:
    """Refuse an adapter made for another method, backbone or structure than the model it is loaded into."""
    if meta.get("method") != method:
        raise CheckpointMismatchError(
            f"adapter '{path}' was trained with method '{meta.get('method')}', not '{method}'"
        )
    if meta.get("backbone_identity") != backbone_identity:
        raise CheckpointMismatchError(
            f"adapter '{path}' was trained on backbone '{meta.get('backbone_identity')}', "
            f"but the loaded backbone is '{backbone_identity}'"
        )
    saved = {k: v for k, v in recorded_options(meta).items() if k not in UNBOUND_OPTIONS}
    ours = {k: v for k, v in method_config.items() if k not in UNBOUND_OPTIONS}
    if saved != ours:

        def shown(options: dict, key: str) -> str:
            return repr(options[key]) if key in options else "(none)"

        differing = [
            f"{k}: saved {shown(saved, k)}, this model {shown(ours, k)}"
            for k in dict.fromkeys([*saved, *ours])
            if shown(saved, k) != shown(ours, k)
        ]
        raise CheckpointMismatchError(
            f"adapter '{path}' was saved with other {method} options ({'; '.join(differing)})"
        )


# ---- official checkpoints ----------------------------------------------------------------------
def official_reader(method: str):
    """A method's reader of its official code's checkpoints (`official_adapter` declared on its class itself:
    a subclass reads its own files, never its base's); None for one without, or an unknown name."""
    from .methods import method_class
    from .registry import is_known_method

    if not is_known_method(method):
        return None
    cls = method_class(method)
    return None if vars(cls).get("official_adapter") is None else cls.official_adapter


def official_readers() -> dict[str, Any]:
    """Method -> its `official_adapter(path, **options) -> (config, tensors under our names)`, for every
    registered method that has one (each class imported to ask)."""
    from .methods import METHODS

    readers = {name: official_reader(name) for name in METHODS}
    return {name: reader for name, reader in readers.items() if reader is not None}


def reader_options(method: str) -> tuple[list[str], bool]:
    """The named options a method's official reader takes (its path excluded), and whether it takes others too."""
    import inspect

    params = list(inspect.signature(official_reader(method)).parameters.values())[1:]
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def importer_options(method: str) -> list[tuple[str, Any, Any]]:
    """(name, default, declared type) of each option a method's official reader takes: its named
    parameters, and every config field when it passes other options on to the config. A config field's
    default and type are the config's; another parameter's are its signature's."""
    import dataclasses
    import inspect
    import typing

    from .methods import method_class
    from .validation import field_types

    reader = official_reader(method)
    if reader is None:
        raise ClipadaptError(
            f"no importer for method '{method}'; official checkpoints import for: "
            f"{', '.join(official_readers())}"
        )
    config = method_class(method).Config
    fields = {f.name: f for f in dataclasses.fields(config)}
    types = field_types(config)
    hints = typing.get_type_hints(reader)
    named, takes_any = reader_options(method)
    params = inspect.signature(reader).parameters
    options = []
    for name in [*named, *(f for f in fields if takes_any and f not in named)]:
        if name in fields:
            field = fields[name]
            default = (
                field.default_factory()
                if field.default is dataclasses.MISSING
                and field.default_factory is not dataclasses.MISSING
                else field.default
            )
            options.append((name, default, types[name]))
        else:
            default = params[name].default
            options.append(
                (
                    name,
                    None if default is inspect.Parameter.empty else default,
                    hints.get(name, str),
                )
            )
    return options


def import_official(
    method: str,
    path: str,
    out: str,
    backbone: str = "ViT-B-16",
    pretrained: str = "openai",
    classnames: list[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Convert a checkpoint of a method's official code into an adapter file; returns what was written.

    `options` are the reader's (the scale MMA was trained with, MMRL's last block and alpha, ...). The
    tensors are checked, key by key and shape by shape, against the method built on the backbone's
    architecture (no weights are loaded), and the file records the backbone's identity as training does."""
    from .backbone import load_backbone
    from .checks import check_writable
    from .methods import method_class, method_name
    from .official_checkpoints import check_state_fits
    from .weights import backbone_identity, check_weights_source

    check_writable(out, "file")
    method = method_name(method)
    reader = official_reader(method)
    if reader is None:
        raise ClipadaptError(
            f"no importer for method '{method}'; official checkpoints import for: "
            f"{', '.join(official_readers())}"
        )
    accepted, takes_any = reader_options(method)
    if takes_any:  # a reader passing options on to the method's config: any of its fields, checked before reading
        accepted = [
            *accepted,
            *(f for f in method_class(method).Config.__dataclass_fields__ if f not in accepted),
        ]
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise ClipadaptError(
            f"the {method} importer takes no option {', '.join(unknown)}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    check_weights_source(backbone, pretrained)
    identity = backbone_identity(
        backbone, pretrained
    )  # before any work: the weights must be named rightly
    try:
        config, state = reader(path, **options)
    except (
        TypeError
    ) as err:  # an option the method's config does not know (readers passing **options on)
        raise ClipadaptError(f"the {method} importer: {err}") from None
    architecture = load_backbone(backbone, "none")
    check_state_fits(
        method_class(method)(config, architecture, list(classnames or ["a", "b"])), state, path
    )
    write_adapter(
        out,
        {k: v.float() for k, v in state.items()},
        method=method,
        method_config=config.to_dict(),
        backbone=backbone,
        pretrained=pretrained,
        backbone_identity=identity,
        classnames=list(classnames or []),
        extra={"imported_from": os.path.abspath(path)},
    )
    return {
        "method": method,
        "config": config.to_dict(),
        "parameters": sum(v.numel() for v in state.values()),
        "backbone": backbone,
        "pretrained": str(pretrained),
        "out": out,
    }


# ---- adapters as folders and Hugging Face Hub repositories --------------------------------------
HUB_PREFIX = "hf-hub:"
EXPORT_CONFIG = "config.json"
EXPORT_CARD = "README.md"
# A bare `user/name` is a Hub id only when no such local path exists and it does not look like a file.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".tar")


def is_hub_id(checkpoint: str) -> bool:
    """Whether a --checkpoint names a Hub repository: `hf-hub:user/name`, or `user/name` with no such local path."""
    if checkpoint.startswith(HUB_PREFIX):
        return True
    return (
        not os.path.exists(checkpoint)
        and _HUB_ID.fullmatch(checkpoint) is not None
        and not checkpoint.lower().endswith(_FILE_SUFFIXES)
    )


def resolve_adapter(checkpoint: str) -> str:
    """The adapter file a checkpoint names: the file itself, `FOLDER/adapter.safetensors` (an export or a run
    folder), or the file of a Hub repository (downloaded, or read from the cache when HF_HUB_OFFLINE is set)."""
    if checkpoint.startswith(HUB_PREFIX):
        return _hub_adapter(checkpoint.removeprefix(HUB_PREFIX))
    if is_hub_id(checkpoint):
        try:
            return _hub_adapter(checkpoint)
        except (
            ClipadaptError
        ) as err:  # a mistyped local folder reads like a Hub id: name both readings
            raise ClipadaptError(
                f"no local file or folder '{checkpoint}', and as a Hub id: {err}"
            ) from None
    if os.path.isdir(checkpoint):
        inside = os.path.join(checkpoint, FILE_NAME)
        if not os.path.isfile(inside):
            raise ClipadaptError(
                f"adapter folder '{checkpoint}' holds no {FILE_NAME} "
                "(give an adapter file, an exported folder or a finished run's folder)"
            )
        return inside
    return checkpoint


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported.
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_adapter(repo_id: str) -> str:
    """The local path of a Hub repository's adapter file (its cache's snapshot), with the exported config.json
    beside it when the repository has one (the run's seed and shots for `transfer`)."""
    if not _HUB_ID.fullmatch(repo_id):
        raise ClipadaptError(f"'{repo_id}' is not a Hub model id (user/name)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (  # also in 0.21
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    )

    try:
        path = hf_hub_download(repo_id, FILE_NAME, local_files_only=_hub_offline())
    except LocalEntryNotFoundError:
        where = (
            "offline (HF_HUB_OFFLINE is set) and not in the cache"
            if _hub_offline()
            else "not in the cache and the Hub cannot be reached"
        )
        raise ClipadaptError(f"Hub adapter '{repo_id}': {FILE_NAME} is {where}") from None
    except (
        HfHubHTTPError,
        EntryNotFoundError,
        OSError,
        ValueError,
    ) as err:  # no repository or file, gated, ...
        reason = " ".join(str(err).split())[:200]
        raise ClipadaptError(f"Hub adapter '{repo_id}' cannot be fetched: {reason}") from None
    try:
        hf_hub_download(repo_id, EXPORT_CONFIG, local_files_only=_hub_offline())
    except (
        HfHubHTTPError,
        EntryNotFoundError,
        OSError,
        ValueError,
    ):  # the adapter file alone: no run recorded
        pass
    return path


def recorded_run(adapter_file: str) -> dict:
    """The settings of the run that made an adapter: config.yaml beside it (a run folder) or config.json's
    `run` (an exported folder); {} when neither is there."""
    import yaml

    folder = os.path.dirname(os.path.abspath(adapter_file))
    if os.path.isfile(os.path.join(folder, "config.yaml")):
        with open(os.path.join(folder, "config.yaml")) as f:
            return yaml.safe_load(f) or {}
    if os.path.isfile(os.path.join(folder, EXPORT_CONFIG)):
        with open(os.path.join(folder, EXPORT_CONFIG)) as f:
            return dict(json.load(f).get("run") or {})
    return {}


def _finished_run(run: str) -> tuple[dict, dict]:
    """A finished run's metrics and recorded settings; one line for anything else."""
    import yaml

    if not os.path.isdir(run):
        raise ClipadaptError(f"run folder '{run}' does not exist")
    from .run_logging import read_log

    if any(r.get("event") == "diverged" for r in read_log(run)):
        raise ClipadaptError(f"run '{run}' diverged: there is no adapter to export")
    missing = [
        n
        for n in ("metrics.json", "config.yaml", FILE_NAME)
        if not os.path.isfile(os.path.join(run, n))
    ]
    if missing:
        raise ClipadaptError(
            f"run '{run}' is not a finished training run (no {', '.join(missing)}); "
            "finish it (rerun the same train command) before exporting"
        )
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(run, "config.yaml")) as f:
        record = yaml.safe_load(f) or {}
    return metrics, record


def train_command(method: str, record: dict) -> str:
    """The `clipadapt train` command that remakes a run from its config.yaml (every resolved setting spelt out)."""
    import shlex

    from .runspec import RunSpec

    spec = RunSpec.from_record({**record, "method": method})
    return shlex.join(["clipadapt", *spec.train_argv(data_root="DATA", out="RUN")])


def _metric_lines(metrics: dict) -> list[str]:
    from .run_logging import scored_accuracies

    return [f"| {key} | {value} |" for key, value in scored_accuracies(metrics).items()]


def method_paper(method: str) -> str:
    """The model card's paper line: the work the method's class names (`paper`), else the method's name."""
    from .methods import method_class

    try:
        paper = method_class(method).paper
    except ClipadaptError:  # a plugin no longer installed: its card still gets written
        return method
    return str(paper) if paper else method


def model_card(meta: dict[str, str], metrics: dict, record: dict, command: str) -> str:
    """The README.md of an exported adapter: YAML front matter (license left for the user) and the run's facts."""
    method = meta["method"]
    metric_rows = _metric_lines(metrics) or ["| (none recorded) | |"]
    return "\n".join(
        [
            "---",
            "license: # choose one (the backbone's weights have their own license)",
            "library_name: clipadapt",
            "tags:",
            "- clipadapt",
            "- clip",
            "- few-shot",
            f"- {method}",
            "---",
            "",
            f"# {method} adapter for {meta['backbone']} ({record.get('dataset')}, {record.get('shots')} shots)",
            "",
            f"A clipadapt adapter: the trained parameters of `{method}` on a frozen CLIP.",
            "",
            "| | |",
            "| --- | --- |",
            f"| method | `{method}` |",
            f"| paper | {method_paper(method)} |",
            f"| backbone | `{meta['backbone']}`, weights `{meta['pretrained']}` |",
            f"| backbone identity | `{meta['backbone_identity']}` |",
            f"| protocol | {record.get('protocol')} |",
            f"| dataset | {record.get('dataset')} |",
            f"| shots | {record.get('shots')} |",
            f"| seed(s) | {record.get('seed')} |",
            f"| classes | {len(recorded_classnames(meta))} |",
            f"| clipadapt | {meta.get('clipadapt_version')} |",
            "",
            "## Metrics",
            "",
            "| metric | value |",
            "| --- | --- |",
            *metric_rows,
            "",
            "## Made by",
            "",
            "```bash",
            command,
            "```",
            "",
            "## Use",
            "",
            "```bash",
            "clipadapt predict --checkpoint hf-hub:USER/NAME image.jpg",
            "```",
            "",
            "```python",
            "import clipadapt",
            'model = clipadapt.load_model("hf-hub:USER/NAME")',
            "```",
            "",
            f"The method options and the backbone's identity are in `{EXPORT_CONFIG}` and in the metadata of "
            f"`{FILE_NAME}`; loading refuses another backbone.",
            "",
        ]
    )


def export_run(run: str, out: str) -> dict[str, Any]:
    """Write a finished run as a folder a Hub repository can hold: the adapter, config.json and a model card."""
    import shutil

    metrics, record = _finished_run(run)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ClipadaptError(f"export folder '{out}' exists and is not empty; give a new folder")
    adapter = os.path.join(run, FILE_NAME)
    meta, _ = read_adapter(adapter)
    config = {
        "format": ADAPTER_FORMAT,
        "clipadapt_version": meta.get("clipadapt_version"),
        "method": meta["method"],
        "method_config": recorded_options(meta),
        "backbone": meta["backbone"],
        "pretrained": meta["pretrained"],
        "backbone_identity": meta["backbone_identity"],
        "classnames": recorded_classnames(meta),
        # The run's settings, less the local data folder (a path on the maker's machine).
        "run": {k: v for k, v in record.items() if k != "data_root"},
        "metrics": metrics,
    }
    # A method loaded by its class path (no package records it) is named by that path in the command.
    by_path = meta.get("method_package") == "" and meta.get("method_source")
    command = train_command(by_path or meta["method"], record)
    os.makedirs(out, exist_ok=True)
    with atomic_path(os.path.join(out, FILE_NAME)) as tmp:
        shutil.copyfile(adapter, tmp)
    with atomic_path(os.path.join(out, EXPORT_CONFIG)) as tmp, open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with atomic_path(os.path.join(out, EXPORT_CARD)) as tmp, open(tmp, "w") as f:
        f.write(model_card(meta, metrics, record, command))
    return {
        "out": out,
        "files": [FILE_NAME, EXPORT_CONFIG, EXPORT_CARD],
        "method": meta["method"],
        "command": command,
    }
