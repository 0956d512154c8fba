"""The evaluation protocols: which splits a run trains on, which it tests on, what it reports."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch

from . import distributed
from .data import build_dataset
from .data.synthetic import BENCHMARK
from .data.synthetic import DG_TARGETS as SYNTHETIC_DG_TARGETS
from .engine import Trainer, seed_everything
from .errors import ClipadaptError
from .evaluation import evaluate
from .feature_cache import FeatureCache
from .model import build_model
from .registry import canonical_protocol
from .runspec import ResolvedRun
from .scoring import harmonic_mean

# Domain generalization: train on the source (all classes), test on its shifted versions.
DG_TARGETS = {
    "imagenet": ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
    **SYNTHETIC_DG_TARGETS,
}
# Cross-dataset transfer: train on the source (all classes), test on other datasets with their own classes.
CROSS_DATASET_TARGETS = {
    "imagenet": [
        "caltech101",
        "oxford_pets",
        "stanford_cars",
        "oxford_flowers",
        "food101",
        "fgvc_aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
    ],
    # On the synthetic world every benchmark dataset is a source for the five others.
    **{source: [d for d in BENCHMARK if d != source] for source in BENCHMARK},
}
TRANSFER_TARGETS = {"cross_dataset": CROSS_DATASET_TARGETS, "domain_generalization": DG_TARGETS}


def transfer_targets(protocol: str, source: str) -> list[str]:
    """The target datasets of a cross-dataset or domain-generalization source."""
    table = TRANSFER_TARGETS[canonical_protocol(protocol)]
    if source not in table:
        raise ClipadaptError(
            f"no {protocol} targets for source '{source}'; sources: {', '.join(table)}"
        )
    return table[source]


@dataclass(frozen=True)
class Execution:
    """Where and how a run executes, which is not what it is (runspec.RunSpec): its folder, device,
    progress bars and feature cache; two executions of one run give the same numbers."""

    out_dir: str | None
    device: str = "cpu"
    progress: bool = True
    feature_cache: FeatureCache | None = (
        None  # test images' frozen features shared across runs (None: off)
    )


def _train(run: ResolvedRun, execution: Execution, classes_split):
    spec = run.spec
    seed_everything(spec.seed)  # the adapters' initial weights depend on the run's seed only
    model = build_model(
        spec.method,
        classes_split.classnames,
        spec.backbone,
        spec.pretrained,
        default_template=classes_split.template,
        device=execution.device,
        dataset=spec.dataset,
        method_config=run.method_config,
    )
    training: dict = {}
    if model.method.trainable_parameters():
        result = Trainer(
            model,
            classes_split.train,
            run.train_config,
            execution.out_dir,
            execution.device,
            execution.progress,
            val_items=classes_split.val,
        ).run()
        seconds = result.train_seconds
        step_ms = result.step_ms_per_image
        training["epochs_trained"] = result.epochs_trained
        training["train_data_seconds"] = round(result.data_seconds, 3)
        training["train_step_ms_per_image"] = None if step_ms is None else round(step_ms, 3)
        training["train_epoch_ms_per_image"] = round(result.epoch_ms_per_image, 3)
        if result.best_epoch is not None:
            training.update(
                best_epoch=result.best_epoch, best_val_accuracy=round(result.best_val_accuracy, 4)
            )
    else:
        seconds = 0.0
        training.update(train_step_ms_per_image=0.0, train_epoch_ms_per_image=0.0)
    if execution.out_dir and distributed.is_main():
        model.save_adapter(os.path.join(execution.out_dir, "adapter.safetensors"))
    return model, seconds, training


def evaluate_transfer(
    model, protocol: str, source: str, data_root: str, eval_kwargs: dict, source_test=None
) -> dict:
    """Accuracy of one trained adapter on its source's test set and on every target, and the targets' mean."""
    targets = transfer_targets(protocol, source)
    if source_test is None:
        source_data = build_dataset(source, data_root, -1, 1, "all")
        model.set_classes(source_data.classnames, source_data.template)
        source_test = source_data.test
    result = evaluate(
        model, source_test, desc=source, dataset=source, split="test/all", **eval_kwargs
    )
    metrics, scored = {"source": round(result.accuracy, 4)}, {"source": result.counts()}
    for target in targets:
        shifted = build_dataset(
            target, data_root, -1, 1, "all"
        )  # the whole test split: no draw, no seed
        model.set_classes(shifted.classnames, shifted.template, trained_on=False)
        result = evaluate(
            model, shifted.test, desc=target, dataset=target, split="test/all", **eval_kwargs
        )
        metrics[target], scored[target] = round(result.accuracy, 4), result.counts()
    metrics["targets"] = list(targets)
    metrics["scored"] = scored  # images and classes behind each accuracy
    metrics["target_average"] = round(sum(metrics[t] for t in targets) / len(targets), 4)
    return metrics


def reset_peak_memory(device: str) -> None:
    """Start a new peak-memory window on CUDA; on the CPU the peak is the process's since it started."""
    # The CPU's resident high-water mark is left alone: resetting it (/proc/self/clear_refs) changes the
    # whole process's state, which a library call must not do.
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory_mb(device: str) -> tuple[float | None, str]:
    """Peak memory in MiB and what it measures: CUDA's allocator since reset_peak_memory, else the process's."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20, "cuda_allocated"
    # Deferred: POSIX only.
    import resource

    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(
        resource.RUSAGE_SELF
    ).ru_maxrss / scale, "process_peak_rss_since_start"


class _EvalClock:
    """Images scored and seconds spent in evaluate() (reading, transforming and encoding the test images)."""

    def __init__(self):
        self.images, self.seconds = 0, 0.0

    def __call__(self, model, items, **kwargs):
        start = time.perf_counter()
        result = evaluate(model, items, **kwargs)
        self.seconds += time.perf_counter() - start
        self.images += result.num_images
        return result


def _scored(data, split: str, dataset: str) -> list:
    """The images a run scores at its end: the test split, or the validation split (never empty)."""
    items = data.test if split == "test" else data.val
    if split == "val" and items is data.test:  # ImageNet: Dassl validates on the test split
        raise ClipadaptError(
            f"dataset '{dataset}' has no validation split of its own (its val images are its test "
            "images, as in Dassl); eval_split=val cannot keep the test split unread"
        )
    if not items:
        raise ClipadaptError(
            f"dataset '{dataset}' has no {split} images to score (eval_split={split}); "
            + (
                "an own folder needs a val/ sub-folder"
                if split == "val"
                else "check its split files"
            )
        )
    return items


def run_protocol(run: ResolvedRun, execution: Execution) -> dict:
    """Train and evaluate a resolved run under its protocol; returns the metrics dict."""
    start = time.time()
    spec, cfg, feature_cache = run.spec, run.train_config, execution.feature_cache
    reset_peak_memory(execution.device)
    protocol = canonical_protocol(run.protocol)
    kwargs = dict(
        batch_size=cfg.eval_batch_size,
        workers=cfg.workers,
        device=execution.device,
        progress=execution.progress,
        noise_std=cfg.eval_noise_std,
        feature_cache=feature_cache,
    )
    clock = _EvalClock()
    data_settings = {
        "train_noise_std": cfg.train_noise_std,
        "eval_noise_std": cfg.eval_noise_std,
        "eval_split": cfg.eval_split,
    }
    split = cfg.eval_split
    if split != "test" and protocol in TRANSFER_TARGETS:
        raise ClipadaptError(
            f"eval_split={split} is for base2novel and fewshot runs; {protocol} scores the test "
            "splits of its targets"
        )
    cache_counts = (feature_cache.reads, feature_cache.writes) if feature_cache else (0, 0)
    if protocol == "base2novel":
        base = build_dataset(
            spec.dataset, spec.data_root, spec.shots, spec.seed, "base", cfg.base_ratio
        )
        new = build_dataset(
            spec.dataset, spec.data_root, spec.shots, spec.seed, "new", cfg.base_ratio
        )
        data_settings.update(
            base_ratio=cfg.base_ratio,
            num_base_classes=base.num_classes,
            num_novel_classes=new.num_classes,
        )
        base_items, new_items = (
            _scored(base, split, spec.dataset),
            _scored(new, split, spec.dataset),
        )
        model, seconds, training = _train(run, execution, base)
        if not distributed.is_main():
            return {}  # under torchrun rank 0 evaluates
        eval_start = time.time()
        base_result = clock(
            model,
            base_items,
            desc=f"{split} base",
            dataset=spec.dataset,
            split=f"{split}/base",
            **kwargs,
        )
        model.set_classes(new.classnames, new.template, trained_on=False, dataset=spec.dataset)
        novel_result = clock(
            model,
            new_items,
            desc=f"{split} novel",
            dataset=spec.dataset,
            split=f"{split}/new",
            **kwargs,
        )
        base_acc, novel_acc = base_result.accuracy, novel_result.accuracy
        metrics = {
            "base": round(base_acc, 4),
            "novel": round(novel_acc, 4),
            "hm": round(harmonic_mean(base_acc, novel_acc), 4),
            "scored": {"base": base_result.counts(), "novel": novel_result.counts()},
        }
    elif protocol == "fewshot":
        data = build_dataset(spec.dataset, spec.data_root, spec.shots, spec.seed, "all")
        items = _scored(data, split, spec.dataset)
        model, seconds, training = _train(run, execution, data)
        if not distributed.is_main():
            return {}
        eval_start = time.time()
        result = clock(
            model, items, desc=split, dataset=spec.dataset, split=f"{split}/all", **kwargs
        )
        metrics = {"accuracy": round(result.accuracy, 4), "scored": {"accuracy": result.counts()}}
    elif protocol in TRANSFER_TARGETS:
        transfer_targets(protocol, spec.dataset)  # an unknown source fails before any training
        data = build_dataset(spec.dataset, spec.data_root, spec.shots, spec.seed, "all")
        model, seconds, training = _train(run, execution, data)
        if not distributed.is_main():
            return {}
        eval_start = time.time()
        kwargs.pop("noise_std")  # the transfer protocols test clean images
        metrics = evaluate_transfer(
            model, protocol, spec.dataset, spec.data_root, kwargs, source_test=data.test
        )
    metrics.update(training)
    metrics["eval_seconds"] = round(time.time() - eval_start, 3)
    if feature_cache is not None:  # how many test splits read their image features from the cache
        metrics["feature_cache_reads"] = feature_cache.reads - cache_counts[0]
        metrics["feature_cache_writes"] = feature_cache.writes - cache_counts[1]
    metrics.update(data_settings)
    peak, peak_kind = peak_memory_mb(execution.device)
    if clock.seconds:
        metrics["eval_images_per_s"] = round(clock.images / clock.seconds, 2)
    metrics.update(
        {"peak_memory_mb": None if peak is None else round(peak, 1), "peak_memory_kind": peak_kind}
    )
    metrics.update(
        {
            "trainable_params": model.method.num_trainable(),
            "train_seconds": round(seconds, 3),
            "total_seconds": round(time.time() - start, 2),
            "protocol": protocol,
            "method": spec.method,
            "dataset": spec.dataset,
            "shots": spec.shots,
            "seed": spec.seed,
            "backbone": spec.backbone,
            "pretrained": str(spec.pretrained),
            "backbone_identity": model.backbone.identity,
        }
    )
    return metrics
