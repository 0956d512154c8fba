"""One run into one folder, the Python API that `clipadapt train`, `eval`, `transfer` and `predict`,
the sweep, the demo and a notebook all call.

    import clipadapt
    metrics = clipadapt.train("mma", "syn_shapes", data_root="data", out="runs/mma-shapes", epochs=2)

`train` resolves the settings (method defaults < the shipped preset for the method, protocol and
backbone, or `config` < keyword settings), checks every input before any work, resumes an
interrupted run in the same folder (and refuses one made with other settings), trains and scores
under the protocol, and writes config.yaml, log.jsonl, checkpoint.pt, adapter.safetensors and
metrics.json, each whole or not at all. A finished run is never overwritten unless `overwrite`.
Status lines go to the `clipadapt.run` logger; nothing is printed.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import yaml

from . import __version__
from .adapters import FILE_NAME as ADAPTER_FILE
from .adapters import read_adapter, recorded_run, resolve_adapter
from .checks import check_device, check_not_finished, check_run_names, check_writable
from .data import build_dataset
from .data.folder import check_distinct
from .errors import ClipadaptError
from .fileio import write_json, write_text
from .registry import NUMBER_NEUTRAL_KEYS, canonical_protocol, is_known_method
from .run_logging import TB_DIR, finish_run, tensorboard_on
from .runspec import (
    ResolvedRun,
    RunSpec,
    as_read_back,
    default_backbone,
    own_method_name,
    read_record,
)

log = logging.getLogger(__name__)

SETTING_ARGUMENTS = RunSpec.setting_names()  # arguments of `train` that are settings too
RUN_FILES = (
    "metrics.json",
    "checkpoint.pt",
    "log.jsonl",
    "config.yaml",
    ADAPTER_FILE,
    "curves.png",
)  # what --overwrite discards


def feature_cache_of(setting):
    """The FeatureCache a run's `feature_cache` asks for: True the default folder, a path that folder,
    False or None no cache (a FeatureCache is used as given)."""
    # Deferred: loads torch, which this module's import must not.
    from .feature_cache import FeatureCache

    if setting is None or setting is False:
        return None
    if setting is True:
        return FeatureCache(None)
    if isinstance(setting, FeatureCache):
        return setting
    return FeatureCache(os.path.abspath(os.path.expanduser(str(setting))))


def _check_data(run: ResolvedRun) -> None:
    """Read every split the run will use (file lists only), so that a missing one fails before training."""
    # Deferred: loads torch, which this module's import must not.
    from .protocols import TRANSFER_TARGETS, transfer_targets

    spec, protocol, base_ratio = run.spec, run.protocol, run.train_config.base_ratio
    subsamples = ("base", "new") if protocol == "base2novel" else ("all",)
    for subsample in subsamples:
        check_scored_classes(
            build_dataset(
                spec.dataset, spec.data_root, spec.shots, spec.seed, subsample, base_ratio
            ),
            spec.dataset,
            spec.data_root,
            subsample,
            base_ratio if protocol == "base2novel" else None,
        )
    if protocol in TRANSFER_TARGETS:
        for target in transfer_targets(protocol, spec.dataset):
            check_scored_classes(
                build_dataset(target, spec.data_root, -1, spec.seed, "all"),
                target,
                spec.data_root,
                "all",
            )


_HALF = {"base": "base half", "new": "novel half", "all": "test split"}


def check_scored_classes(
    data, dataset: str, data_root: str, subsample: str, base_ratio: str | None = None
) -> None:
    """Refuse to score a split whose classifier has fewer than two classes: every image gets the one class,
    so the accuracy is 100 % whatever the model, and the number would look like a result."""
    if data.num_classes >= 2:
        return
    where = f"dataset '{dataset}' at '{data_root}'"
    ratio = f" (base:new {base_ratio})" if base_ratio else ""
    hint = (
        "give a folder of at least two class sub-folders"
        if subsample == "all"
        else "base-to-novel needs at least two base and two novel classes; on a small folder use --protocol "
        "fewshot"
    )
    raise ClipadaptError(
        f"{where}: the {_HALF[subsample]}{ratio} has {data.num_classes} class "
        f"({', '.join(data.classnames) or 'none'}); an accuracy over fewer than two classes "
        f"is 100 % whatever the model, so it measures nothing; {hint}"
    )


# ---- train ---------------------------------------------------------------------------------------
def _keywords_of_a_run(wrapper):
    """Show a wrapper's `**run` keywords as the RunSpec fields they set (help(), inspect, editors): the
    wrappers take them through **, so that a new field of RunSpec is an argument of each at once."""
    shown = inspect.signature(wrapper)
    own = [p for p in shown.parameters.values() if p.kind is not p.VAR_KEYWORD]
    named = {p.name for p in own}
    run_fields = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for f in fields(RunSpec)
        if f.name in RunSpec.argument_names() and f.name not in named
    ]
    first_keyword = next(
        (i for i, p in enumerate(own) if p.kind is p.KEYWORD_ONLY), len(own)
    )  # the run's fields before the wrapper's own keywords, as they read in the docs
    settings = inspect.Parameter("settings", inspect.Parameter.VAR_KEYWORD, annotation=Any)
    wrapper.__signature__ = shown.replace(
        parameters=[*own[:first_keyword], *run_fields, *own[first_keyword:], settings]
    )
    return wrapper


@_keywords_of_a_run
def train(
    method: str,
    dataset: str,
    data_root: str,
    out: str,
    *,
    device: str = "cpu",
    feature_cache=True,
    overwrite: bool = False,
    progress: bool = True,
    **run: Any,
) -> dict[str, Any]:
    """Train `method` on `dataset` under `protocol` into the folder `out` and score it; returns the metrics.

    `run` are RunSpec's fields (protocol, shots, seed, ...: this function's signature lists them all)
    and the settings: method options and training settings (scale=0.001, epochs=5, lr=2e-3, ...) over
    the preset `config` names (None: the shipped preset for the method, protocol and backbone; "none":
    the method's own defaults; else a YAML file or a shipped preset's name). Rerunning the same call after an interruption resumes from the last epoch; under torchrun
    every process calls it and rank 0 writes."""
    spec = RunSpec.from_arguments(method, dataset, data_root, **run)
    normal = spec.normalised()  # names checked before torch: a typo is not a missing preset
    from . import distributed
    from .weights import check_weights_source

    check_weights_source(normal.backbone, normal.pretrained)
    check_device(device)
    check_writable(out, "dir")
    device = distributed.init_from_env(device)  # under torchrun: join the group; one GPU per rank
    metrics = _train(spec, out, device, feature_cache, overwrite, progress)
    distributed.shutdown()  # after success only: an error leaves without the final barrier, which would wait forever
    return metrics


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse settings that name one of `train`'s own arguments (seed=3 is the seed argument, --seed 3)."""
    own = (set(RunSpec.argument_names()) | set(NOT_RECORDED)) - SETTING_ARGUMENTS
    for key in settings:
        if key in own:
            flag = "--" + key.replace("_", "-")
            raise ClipadaptError(
                f"setting '{key}' is set with {flag}, not in a config or as {key}=..."
            )


def _train(
    spec: RunSpec, out: str, device: str, feature_cache, overwrite: bool, progress: bool
) -> dict[str, Any]:
    """`train` after its argument checks; `spec` as given (its protocol None: the default, said so)."""
    # Deferred: loads torch, which this module's import must not.
    from . import distributed
    from .protocols import Execution, run_protocol
    from .runconfig import resolve_run

    resolved = resolve_run(spec)
    record = resolved.record()
    record["world_size"] = (
        distributed.world_size()
    )  # how it ran, not what it is: a resume may use another

    train_config = resolved.train_config
    tensorboard_on(
        train_config.logger
    )  # logger=tensorboard without the package: refused before anything is written
    metrics_path, config_path = os.path.join(out, "metrics.json"), os.path.join(out, "config.yaml")
    _check_data(resolved)
    main_rank = distributed.is_main()
    if overwrite and main_rank:
        for name in RUN_FILES:
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))

        shutil.rmtree(os.path.join(out, TB_DIR), ignore_errors=True)  # the old run's curves
    check_not_finished(out)
    if os.path.exists(os.path.join(out, "checkpoint.pt")) and os.path.exists(config_path):
        changed = sorted(
            key for key, _, _ in record_changes(read_record(config_path), as_read_back(record))
        )
        if changed:
            raise ClipadaptError(
                f"'{out}' holds an interrupted run with other settings ({', '.join(changed)}); "
                "rerun with the same settings to resume, or pass --overwrite"
            )
    if spec.protocol is None:
        log.info(
            "protocol: %s (the default for --dataset %s; set it with --protocol)",
            resolved.protocol,
            spec.dataset,
        )
    log.info(
        "settings: %s%s",
        resolved.preset,
        " (the shipped preset for this method, protocol and backbone; "
        "--config FILE or --config none to change)"
        if spec.config is None
        else "",
    )
    distributed.barrier()
    if main_rank:
        os.makedirs(out, exist_ok=True)
        write_text(config_path, yaml.safe_dump(record, sort_keys=False))
    execution = Execution(
        out, device, progress=progress and main_rank, feature_cache=feature_cache_of(feature_cache)
    )
    metrics = run_protocol(resolved, execution)
    if not main_rank:
        return {}
    if "variant" in record:
        metrics.update(study=record["study"], variant=record["variant"])
    metrics["world_size"] = record["world_size"]
    write_json(metrics_path, metrics)
    log.info("wrote %s", metrics_path)

    try:  # evaluation and settings in tb/, curves.png: a finished run stays finished if drawing them fails
        finish_run(out, record, metrics, train_config.logger)
    except Exception as err:  # noqa: BLE001
        log.warning(
            "the run finished (%s) but its TensorBoard summary or curves.png could not be written: %s",
            metrics_path,
            err,
        )
    return metrics


# ---- a run's recorded settings against the settings it would get now (resume and rerun checks) ----------
# Keys that may differ between two calls of one run without making it another run: registry.NUMBER_NEUTRAL_KEYS
# (the data folder's path, the preset file's name, workers, logging, ...). The device, --jobs, the feature
# cache and timestamps are not in config.yaml at all.
_MISSING = object()


def record_changes(previous: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(key, recorded, now) for each setting two config.yaml records of one run give differently.

    NUMBER_NEUTRAL_KEYS aside. A key the older record lacks is unchanged when its value now is the setting's
    (or the RunSpec field's) default: a setting added to clipadapt since keeps the older behaviour at its
    default."""
    from .runconfig import setting_defaults

    defaults = {
        **RunSpec.recorded_defaults(),
        **(setting_defaults(now["method"]) if is_known_method(str(now.get("method"))) else {}),
    }
    changes = []
    for key in dict.fromkeys([*previous, *now]):
        old, new = previous.get(key, _MISSING), now.get(key, _MISSING)
        if (
            key in NUMBER_NEUTRAL_KEYS
            or old == new
            or (old is _MISSING and key in defaults and new == defaults[key])
        ):
            continue
        changes.append((key, previous.get(key), now.get(key)))
    return changes


NOT_RECORDED = (
    "out",
    "device",
    "feature_cache",
    "overwrite",
    "progress",
)  # train arguments config.yaml lacks


@_keywords_of_a_run
def planned_record(method: str, dataset: str, data_root: str, **run: Any) -> dict[str, Any]:
    """The config.yaml that `train` with these arguments would write, computed without training or reading data."""
    from .runconfig import resolve_run

    spec = RunSpec.from_arguments(method, dataset, data_root, **run)
    check_settings(spec.settings_dict)
    return as_read_back(resolve_run(spec).record())


def changed_settings(out: str, **train_kwargs: Any) -> list[tuple[str, Any, Any]] | None:
    """(key, recorded, now) for each config.yaml key of the run in `out` that `train(out=out, **train_kwargs)`
    would record differently (`record_changes`); None when `out` has no config.yaml."""
    config_path = os.path.join(out, "config.yaml")
    if not os.path.exists(config_path):
        return None
    now = planned_record(**{k: v for k, v in train_kwargs.items() if k not in NOT_RECORDED})
    return record_changes(read_record(config_path), now)


# ---- evaluate and transfer a saved adapter -------------------------------------------------------
def evaluate(
    dataset: str,
    data_root: str,
    out: str,
    *,
    method: str | None = None,
    checkpoint: str | None = None,
    split: str = "test",
    subsample: str = "all",
    shots: int = -1,
    seed: int = 1,
    backbone: str | None = None,
    pretrained: str | None = None,
    backbone_from_checkpoint: bool = False,
    prompts: str | None = None,
    device: str = "cpu",
    batch_size: int = 100,
    workers: int | None = None,
    feature_cache=True,
    save_predictions: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score zero-shot CLIP (`method`) or a saved adapter (`checkpoint`) on one split of a dataset into
    `out`/metrics.json (and predictions.csv); returns the metrics. With a checkpoint the backbone is the
    recorded one unless `backbone` is given. `method` defaults to zeroshot; with a checkpoint it is the
    adapter's, and naming another is an error."""
    # Deferred: loads torch, which this module's import must not.
    from .evaluation import evaluate as score
    from .evaluation import write_predictions
    from .model import build_model, load_model
    from .weights import check_weights_source

    check_run_names(method, dataset)
    if method is not None:
        method = own_method_name(method)
    if checkpoint and method is not None:
        recorded = read_adapter(checkpoint)[0].get("method")
        if recorded != method:
            raise ClipadaptError(
                f"--method {method} contradicts the checkpoint '{checkpoint}', an adapter of "
                f"method '{recorded}'; drop --method (the adapter's method is used)"
            )
    method = method or "zeroshot"
    if not (checkpoint and backbone is None):
        backbone, pretrained = default_backbone(backbone, pretrained)
        check_weights_source(backbone, pretrained)
    check_device(device)
    check_writable(out, "dir")
    if split not in ("test", "val"):
        raise ClipadaptError(f"split must be test or val, got '{split}'")
    data = build_dataset(dataset, data_root, shots=shots, seed=seed, subsample=subsample)
    check_scored_classes(data, dataset, data_root, subsample)
    items = data.test if split == "test" else data.val
    if not items:
        raise ClipadaptError(
            f"dataset '{dataset}' at '{data_root}' has no {split} images ({subsample} classes)"
        )
    if checkpoint:
        from_file = backbone_from_checkpoint or backbone is None
        model = load_model(
            checkpoint,
            data.classnames,
            device=device,
            backbone=None if from_file else backbone,
            pretrained=None if from_file else pretrained,
            prompts=prompts,
            default_template=data.template,
            dataset=dataset,
        )
        method = model.method.name
    else:
        options = {} if prompts is None else {"prompts": prompts}
        model = build_model(
            method,
            data.classnames,
            backbone,
            pretrained,
            default_template=data.template,
            device=device,
            dataset=dataset,
            **options,
        )
        if model.method.num_trainable():
            raise ClipadaptError(
                f"method '{method}' has trainable parameters: evaluating it untrained measures "
                "nothing; pass --checkpoint ADAPTER (written by `clipadapt train`)"
            )
    if not overwrite:
        check_not_finished(out)  # after every input check: a bad input names itself
    start = time.time()
    result = score(
        model,
        items,
        batch_size,
        workers,
        device,
        desc=f"{dataset}/{split}/{subsample}",
        feature_cache=feature_cache_of(feature_cache),
        dataset=dataset,
        split=f"{split}/{subsample}",
        progress=progress,
    )
    metrics = {
        "accuracy": round(result.accuracy, 4),
        "num_images": result.num_images,
        "dataset": dataset,
        "split": split,
        "shots": shots,
        "seed": seed,
        "subsample": subsample,
        "method": method,
        "backbone": model.backbone.name,
        "pretrained": str(model.backbone_source.get("pretrained")),
        "backbone_identity": model.backbone.identity,
        "num_classes": data.num_classes,
        "scored": {"accuracy": result.counts()},
        "prompt_template": model.template,
        "prompts": model.method.config.prompts,
        "data_root": os.path.abspath(data_root),
        "checkpoint": checkpoint,
        "eval_seconds": round(time.time() - start, 2),
        "clipadapt": __version__,
    }
    os.makedirs(out, exist_ok=True)
    if save_predictions:
        write_predictions(os.path.join(out, "predictions.csv"), items, result, data.classnames)
    write_json(os.path.join(out, "metrics.json"), metrics)
    log.info("wrote %s", os.path.join(out, "metrics.json"))
    return metrics


def transfer(
    checkpoint: str,
    protocol: str,
    data_root: str,
    out: str,
    *,
    source: str | None = None,
    shots: int = 16,
    seed: int = 1,
    backbone: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    batch_size: int = 100,
    workers: int | None = None,
    feature_cache=True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a source adapter, without training, on its source's test set and every target of the
    cross-dataset or domain-generalization protocol, into `out`/metrics.json; returns the metrics."""
    # Deferred: loads torch, which this module's import must not.
    from .model import load_model
    from .protocols import TRANSFER_TARGETS, evaluate_transfer, transfer_targets

    check_device(device)
    check_writable(out, "dir")
    protocol = canonical_protocol(protocol)
    if protocol not in TRANSFER_TARGETS:
        raise ClipadaptError(
            f"transfer evaluates the {' and '.join(TRANSFER_TARGETS)} protocols, not '{protocol}'"
        )

    given, checkpoint = (
        checkpoint,
        resolve_adapter(checkpoint),
    )  # a folder or a Hub id: its adapter file
    trained = recorded_run(checkpoint)  # the training run says what it saw
    source = source or trained.get("dataset")
    if not source:
        raise ClipadaptError(
            f"give --source: no config.yaml or config.json recorded with '{given}' names the "
            "training dataset"
        )
    transfer_targets(protocol, source)
    if not overwrite:
        check_not_finished(out)
    model = load_model(
        checkpoint, device=device, backbone=backbone, pretrained=pretrained if backbone else None
    )
    start = time.time()
    kwargs = dict(
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress,
        feature_cache=feature_cache_of(feature_cache),
    )
    metrics = evaluate_transfer(model, protocol, source, data_root, kwargs)
    metrics.update(
        {
            "trainable_params": model.method.num_trainable(),
            "total_seconds": round(time.time() - start, 2),
            "protocol": protocol,
            "method": model.method.name,
            "dataset": source,
            "shots": trained.get("shots", shots),
            "seed": trained.get("seed", seed),
            "backbone": model.backbone_source.get("backbone"),
            "pretrained": str(model.backbone_source.get("pretrained")),
            "backbone_identity": model.backbone.identity,
            "checkpoint": os.path.abspath(checkpoint),
        }
    )
    write_json(os.path.join(out, "metrics.json"), metrics)
    log.info("wrote %s", os.path.join(out, "metrics.json"))
    return metrics


# ---- predict and describe ------------------------------------------------------------------------
# A line no class name has: code, markup or a config line (a class file given by mistake).
_NOT_A_CLASS_NAME = re.compile(
    r"^(import |from \S+ import |def |class \w+[(:]|#|//|<|\{|\[)|[=;{}]|:$"
)


def read_class_names(path: str) -> list[str]:
    """Class names from a text file, one a line (blank lines skipped); a file that is not such a list is refused."""
    try:
        with open(path) as f:
            lines = [
                (number, line.strip()) for number, line in enumerate(f, start=1) if line.strip()
            ]
    except (OSError, UnicodeDecodeError) as err:
        raise ClipadaptError(
            f"cannot read class file '{path}': "
            f"{getattr(err, 'strerror', None) or 'not a text file'}"
        ) from None
    if not lines:
        raise ClipadaptError(f"class file '{path}' is empty: give one class name a line")
    for number, line in lines:
        if _NOT_A_CLASS_NAME.search(line):
            raise ClipadaptError(
                f"class file '{path}' line {number} is not a class name ({line[:60]!r}): "
                "give a text file with one class name a line"
            )
    return [line for _, line in lines]


def check_class_names(names: list[str], where: str) -> list[str]:
    """At least two distinct class names, or a clear error naming where they came from."""
    if len(names) < 2:
        raise ClipadaptError("need at least two class names to classify between")
    check_distinct(names, where)
    return names


def predict(
    images: list[str],
    classes: list[str] | None = None,
    checkpoint: str | None = None,
    top_k: int = 5,
    prompts: str | None = None,
    backbone: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    batch_size: int = 32,
) -> Iterator[dict[str, Any]]:
    """The top classes of each image, {image, top: [{class, probability}]}, as the images are scored.

    Without `checkpoint`, zero-shot CLIP against `classes`; with one, `classes` default to those it was
    trained on. Every input is checked before the first image is scored."""
    # Deferred: loads torch, which this module's import must not.
    from .model import build_model, load_model

    check_device(device)
    if classes is None and not checkpoint:
        raise ClipadaptError(
            "give the class names with --classes 'a,b,c' or --classes-file FILE "
            "(with --checkpoint they default to the classes it was trained on)"
        )
    for path in images:
        if os.path.isdir(path):
            raise ClipadaptError(
                f"cannot read image '{path}': it is a folder; give its image files "
                f"(e.g. {os.path.join(path, '*.jpg')})"
            )
        if not os.path.isfile(path):
            raise ClipadaptError(f"cannot read image '{path}': no such file")
    if checkpoint:
        model = load_model(
            checkpoint,
            classes,
            backbone=backbone,
            pretrained=pretrained,
            device=device,
            prompts=prompts,
        )
        if len(model.classnames) < 2:
            raise ClipadaptError(
                f"adapter '{checkpoint}' records no class names; give them with --classes"
            )
    else:
        options = {} if prompts is None else {"prompts": prompts}
        backbone, pretrained = default_backbone(backbone, pretrained)
        model = build_model("zeroshot", classes, backbone, pretrained, device=device, **options)
    return _predictions(model, images, top_k, device, batch_size)


def _predictions(
    model, images: list[str], top_k: int, device: str, batch_size: int
) -> Iterator[dict[str, Any]]:
    # Deferred: loads torch, which this module's import must not.
    import torch

    # Deferred: loads torch, which this module's import must not.
    from .data.loader import load_image
    from .evaluation import model_transform

    transform = model_transform(model)
    model.eval()
    names = model.classnames
    k = min(top_k, len(names))
    for start in range(0, len(images), batch_size):
        paths = images[start : start + batch_size]
        batch = torch.stack([transform(load_image(p)) for p in paths]).to(device)
        with torch.no_grad():
            probs = model(batch).float().softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        for path, p, idx in zip(paths, top.values.tolist(), top.indices.tolist(), strict=True):
            yield {
                "image": path,
                "top": [
                    {"class": names[i], "probability": round(v, 4)}
                    for v, i in zip(p, idx, strict=True)
                ],
            }


def method_info(method: str, backbone="ViT-B-16", **options: Any) -> dict[str, Any]:
    """A method's trainable parameter count and options on a backbone's architecture (a name, built with
    random weights, or a loaded Backbone)."""
    # Deferred: loads torch, which this module's import must not.
    from .model import build_model

    model = build_model(method, ["a", "b"], backbone, "none", **options)
    return {
        "method": model.method.name,
        "backbone": getattr(backbone, "name", backbone),
        "trainable_params": model.method.num_trainable(),
        "image_blocks": len(model.backbone.image_blocks),
        "text_blocks": len(model.backbone.text_blocks),
        "config": model.method.config.to_dict(),
    }
