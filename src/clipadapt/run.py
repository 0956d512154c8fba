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
from dataclasses import fields, replace
from typing import Any

import yaml

from . import __version__
from .adapters import FILE_NAME as ADAPTER_FILE
from .adapters import read_adapter, recorded_run, resolve_adapter
from .checks import check_device, check_not_finished, check_run_names, check_writable
from .data import build_dataset
from .data.folder import check_distinct
from .errors import ClipadaptError
from .evalspec import (
    TRANSFER_EXECUTION,
    EvalExecution,
    EvalSpec,
    TransferSpec,
    field_names,
    split_keywords,
)
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
def _keywords_from(*parts: tuple[type, tuple[str, ...]], var_keyword: str | None = None):
    """Show a wrapper's `**` keywords as the dataclass fields they set (help(), inspect, editors): each
    part is a dataclass and the names of its fields the wrapper takes, placed before the wrapper's own
    keyword-only parameters (as they read in the docs); `var_keyword` names a trailing `**` (settings).
    The wrappers take the fields through **, so that a new field is an argument of each at once."""

    def decorate(wrapper):
        shown = inspect.signature(wrapper)
        own = [p for p in shown.parameters.values() if p.kind is not p.VAR_KEYWORD]
        named = {p.name for p in own}
        keywords = [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
            )
            for cls, names in parts
            for f in fields(cls)
            if f.name in names and f.name not in named
        ]
        first_keyword = next((i for i, p in enumerate(own) if p.kind is p.KEYWORD_ONLY), len(own))
        rest = []
        if var_keyword:
            rest = [inspect.Parameter(var_keyword, inspect.Parameter.VAR_KEYWORD, annotation=Any)]
        wrapper.__signature__ = shown.replace(
            parameters=[*own[:first_keyword], *keywords, *own[first_keyword:], *rest]
        )
        return wrapper

    return decorate


# train's and planned_record's `**run`: RunSpec's fields, then the settings
_keywords_of_a_run = _keywords_from((RunSpec, RunSpec.argument_names()), var_keyword="settings")


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
@_keywords_from((EvalSpec, field_names(EvalSpec)), (EvalExecution, field_names(EvalExecution)))
def evaluate(dataset: str, data_root: str, out: str, **given: Any) -> dict[str, Any]:
    """Score zero-shot CLIP (`method`) or a saved adapter (`checkpoint`) on one split of a dataset into
    `out`/metrics.json (and predictions.csv); returns the metrics. With a checkpoint the backbone is the
    recorded one unless `backbone` is given. `method` defaults to zeroshot; with a checkpoint it is the
    adapter's, and naming another is an error. `given` are EvalSpec's and EvalExecution's fields (this
    function's signature lists them all)."""
    what, how = split_keywords("evaluate", given, field_names(EvalSpec), field_names(EvalExecution))
    return _evaluate(EvalSpec(dataset, data_root, **what), EvalExecution(**how), out)


def _evaluate(spec: EvalSpec, how: EvalExecution, out: str) -> dict[str, Any]:
    """`evaluate` on its two objects: every input checked, then the split scored and written."""
    spec = _checked_evaluation(spec, how, out)
    data, items = _scored_split(spec)
    model = _evaluated_model(spec, data, how.device)
    if not how.overwrite:
        check_not_finished(out)  # after every input check: a bad input names itself
    start = time.time()
    result = _score_split(spec, model, items, how)
    metrics = _evaluation_metrics(spec, model, data, result, time.time() - start)
    os.makedirs(out, exist_ok=True)
    if how.save_predictions:
        # Deferred: loads torch, which this module's import must not.
        from .evaluation import write_predictions

        write_predictions(os.path.join(out, "predictions.csv"), items, result, data.classnames)
    write_json(os.path.join(out, "metrics.json"), metrics)
    log.info("wrote %s", os.path.join(out, "metrics.json"))
    return metrics


def _checked_evaluation(spec: EvalSpec, how: EvalExecution, out: str) -> EvalSpec:
    """The names, device, folder and split checked; the spec with its method (zeroshot by default, the
    own name of a method from elsewhere) and, unless the checkpoint's is used, its backbone resolved."""
    # Deferred: loads torch, which this module's import must not.
    from .weights import check_weights_source

    check_run_names(spec.method, spec.dataset)
    method = None if spec.method is None else own_method_name(spec.method)
    if spec.checkpoint and method is not None:
        recorded = read_adapter(spec.checkpoint)[0].get("method")
        if recorded != method:
            raise ClipadaptError(
                f"--method {method} contradicts the checkpoint '{spec.checkpoint}', an adapter of "
                f"method '{recorded}'; drop --method (the adapter's method is used)"
            )
    backbone, pretrained = spec.backbone, spec.pretrained
    if not (spec.checkpoint and backbone is None):
        backbone, pretrained = default_backbone(backbone, pretrained)
        check_weights_source(backbone, pretrained)
    check_device(how.device)
    check_writable(out, "dir")
    if spec.split not in ("test", "val"):
        raise ClipadaptError(f"split must be test or val, got '{spec.split}'")
    return replace(spec, method=method or "zeroshot", backbone=backbone, pretrained=pretrained)


def _scored_split(spec: EvalSpec):
    """The dataset (its classes checked) and the images of the split to score."""
    data = build_dataset(
        spec.dataset, spec.data_root, shots=spec.shots, seed=spec.seed, subsample=spec.subsample
    )
    check_scored_classes(data, spec.dataset, spec.data_root, spec.subsample)
    items = data.test if spec.split == "test" else data.val
    if not items:
        raise ClipadaptError(
            f"dataset '{spec.dataset}' at '{spec.data_root}' has no {spec.split} images "
            f"({spec.subsample} classes)"
        )
    return data, items


def _evaluated_model(spec: EvalSpec, data, device: str):
    """The saved adapter loaded for the dataset's classes, or the untrained method built (refused when
    it has trainable parameters: untrained, it measures nothing)."""
    # Deferred: loads torch, which this module's import must not.
    from .model import build_model, load_model

    if spec.checkpoint:
        from_file = spec.backbone_from_checkpoint or spec.backbone is None
        return load_model(
            spec.checkpoint,
            data.classnames,
            device=device,
            backbone=None if from_file else spec.backbone,
            pretrained=None if from_file else spec.pretrained,
            prompts=spec.prompts,
            default_template=data.template,
            dataset=spec.dataset,
        )
    options = {} if spec.prompts is None else {"prompts": spec.prompts}
    model = build_model(
        spec.method,
        data.classnames,
        spec.backbone,
        spec.pretrained,
        default_template=data.template,
        device=device,
        dataset=spec.dataset,
        **options,
    )
    if model.method.num_trainable():
        raise ClipadaptError(
            f"method '{spec.method}' has trainable parameters: evaluating it untrained measures "
            "nothing; pass --checkpoint ADAPTER (written by `clipadapt train`)"
        )
    return model


def _score_split(spec: EvalSpec, model, items, how: EvalExecution):
    """The model's result on the split's images, run as `how` says."""
    # Deferred: loads torch, which this module's import must not.
    from .evaluation import evaluate as score

    return score(
        model,
        items,
        how.batch_size,
        how.workers,
        how.device,
        desc=f"{spec.dataset}/{spec.split}/{spec.subsample}",
        feature_cache=feature_cache_of(how.feature_cache),
        dataset=spec.dataset,
        split=f"{spec.split}/{spec.subsample}",
        progress=how.progress,
    )


def _evaluation_metrics(spec: EvalSpec, model, data, result, seconds: float) -> dict[str, Any]:
    """metrics.json of an evaluation: the accuracy, what it was measured on and what measured it."""
    return {
        "accuracy": round(result.accuracy, 4),
        "num_images": result.num_images,
        "dataset": spec.dataset,
        "split": spec.split,
        "shots": spec.shots,
        "seed": spec.seed,
        "subsample": spec.subsample,
        "method": model.method.name if spec.checkpoint else spec.method,
        "backbone": model.backbone.name,
        "pretrained": str(model.backbone_source.get("pretrained")),
        "backbone_identity": model.backbone.identity,
        "num_classes": data.num_classes,
        "scored": {"accuracy": result.counts()},
        "prompt_template": model.template,
        "prompts": model.method.config.prompts,
        "data_root": os.path.abspath(spec.data_root),
        "checkpoint": spec.checkpoint,
        "eval_seconds": round(seconds, 2),
        "clipadapt": __version__,
    }


@_keywords_from((TransferSpec, field_names(TransferSpec)), (EvalExecution, TRANSFER_EXECUTION))
def transfer(
    checkpoint: str, protocol: str, data_root: str, out: str, **given: Any
) -> dict[str, Any]:
    """Score a source adapter, without training, on its source's test set and every target of the
    cross-dataset or domain-generalization protocol, into `out`/metrics.json; returns the metrics.
    `given` are TransferSpec's and EvalExecution's fields (this function's signature lists them)."""
    what, how = split_keywords("transfer", given, field_names(TransferSpec), TRANSFER_EXECUTION)
    return _transfer(
        TransferSpec(checkpoint, protocol, data_root, **what), EvalExecution(**how), out
    )


def _transfer(spec: TransferSpec, how: EvalExecution, out: str) -> dict[str, Any]:
    """`transfer` on its two objects: every input checked, then the source and targets scored."""
    # Deferred: loads torch, which this module's import must not.
    from .model import load_model
    from .protocols import evaluate_transfer

    spec, trained = _checked_transfer(spec, how, out)
    model = load_model(
        spec.checkpoint,
        device=how.device,
        backbone=spec.backbone,
        pretrained=spec.pretrained if spec.backbone else None,
    )
    start = time.time()
    kwargs = dict(
        batch_size=how.batch_size,
        workers=how.workers,
        device=how.device,
        progress=how.progress,
        feature_cache=feature_cache_of(how.feature_cache),
    )
    metrics = evaluate_transfer(model, spec.protocol, spec.source, spec.data_root, kwargs)
    metrics.update(
        {
            "trainable_params": model.method.num_trainable(),
            "total_seconds": round(time.time() - start, 2),
            "protocol": spec.protocol,
            "method": model.method.name,
            "dataset": spec.source,
            "shots": trained.get("shots", spec.shots),
            "seed": trained.get("seed", spec.seed),
            "backbone": model.backbone_source.get("backbone"),
            "pretrained": str(model.backbone_source.get("pretrained")),
            "backbone_identity": model.backbone.identity,
            "checkpoint": os.path.abspath(spec.checkpoint),
        }
    )
    write_json(os.path.join(out, "metrics.json"), metrics)
    log.info("wrote %s", os.path.join(out, "metrics.json"))
    return metrics


def _checked_transfer(
    spec: TransferSpec, how: EvalExecution, out: str
) -> tuple[TransferSpec, dict[str, Any]]:
    """The device, folder, protocol and source checked; the spec with its protocol's canonical name, its
    adapter file (of a folder or a Hub id) and its source (the recorded training dataset by default),
    and the training run's record."""
    # Deferred: loads torch, which this module's import must not.
    from .protocols import TRANSFER_TARGETS, transfer_targets

    check_device(how.device)
    check_writable(out, "dir")
    protocol = canonical_protocol(spec.protocol)
    if protocol not in TRANSFER_TARGETS:
        raise ClipadaptError(
            f"transfer evaluates the {' and '.join(TRANSFER_TARGETS)} protocols, not '{protocol}'"
        )
    checkpoint = resolve_adapter(spec.checkpoint)
    trained = recorded_run(checkpoint)  # the training run says what it saw
    source = spec.source or trained.get("dataset")
    if not source:
        raise ClipadaptError(
            f"give --source: no config.yaml or config.json recorded with '{spec.checkpoint}' names "
            "the training dataset"
        )
    transfer_targets(protocol, source)
    if not how.overwrite:
        check_not_finished(out)
    return replace(spec, protocol=protocol, checkpoint=checkpoint, source=source), trained


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
