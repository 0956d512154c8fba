"""The evaluation protocols: which splits a run trains on, which it tests on, what it reports."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .data import build_dataset
from .engine import Trainer, TrainConfig, seed_everything
from .evaluation import evaluate
from .errors import ClipadaptError
from .model import build_model

PROTOCOLS = ("base2novel", "fewshot", "dg")
# Domain generalization: train on the source (all classes), test on its shifted versions.
DG_TARGETS = {"imagenet": ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
              "syn_objects": ["syn_objects_sketch", "syn_objects_noise", "syn_objects_clutter"]}


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two accuracies (0 when either is 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


@dataclass
class RunSpec:
    """Everything a protocol run needs besides the method's and the trainer's settings."""

    method: str
    dataset: str
    data_root: str
    shots: int
    seed: int
    backbone: str
    pretrained: str | None
    out_dir: str | None
    device: str = "cpu"
    progress: bool = True


def _train(spec: RunSpec, classes_split, method_options: dict, cfg: TrainConfig):
    seed_everything(spec.seed)  # the adapters' initial weights depend on the run's seed only
    model = build_model(spec.method, classes_split.classnames, spec.backbone, spec.pretrained,
                        default_template=classes_split.template, device=spec.device, dataset=spec.dataset,
                        **method_options)
    training: dict = {}
    if model.method.trainable_parameters():
        result = Trainer(model, classes_split.train, cfg, spec.out_dir, spec.device, spec.progress,
                         val_items=classes_split.val).run()
        seconds, ms = result.train_seconds, result.ms_per_image
        training["epochs_trained"] = result.epochs_trained
        if result.best_epoch is not None:
            training.update(best_epoch=result.best_epoch, best_val_accuracy=round(result.best_val_accuracy, 4))
    else:
        seconds, ms = 0.0, 0.0
    if spec.out_dir:
        model.save_adapter(os.path.join(spec.out_dir, "adapter.safetensors"))
    return model, seconds, ms, training


def run_protocol(protocol: str, spec: RunSpec, method_options: dict, cfg: TrainConfig) -> dict:
    """Train and evaluate under `protocol`; returns the metrics dict."""
    start = time.time()
    kwargs = dict(batch_size=cfg.eval_batch_size, workers=cfg.workers, device=spec.device, progress=spec.progress)
    if protocol == "base2novel":
        base = build_dataset(spec.dataset, spec.data_root, spec.shots, spec.seed, "base")
        new = build_dataset(spec.dataset, spec.data_root, spec.shots, spec.seed, "new")
        model, seconds, ms, training = _train(spec, base, method_options, cfg)
        base_acc = evaluate(model, base.test, desc="test base", **kwargs).accuracy
        model.set_classes(new.classnames, new.template, spec.dataset)
        novel_acc = evaluate(model, new.test, desc="test novel", **kwargs).accuracy
        metrics = {"base": round(base_acc, 4), "novel": round(novel_acc, 4),
                   "hm": round(harmonic_mean(base_acc, novel_acc), 4)}
    elif protocol == "fewshot":
        data = build_dataset(spec.dataset, spec.data_root, spec.shots, spec.seed, "all")
        model, seconds, ms, training = _train(spec, data, method_options, cfg)
        metrics = {"accuracy": round(evaluate(model, data.test, desc="test", **kwargs).accuracy, 4)}
    elif protocol == "dg":
        if spec.dataset not in DG_TARGETS:
            raise ClipadaptError(f"no domain-generalization targets for '{spec.dataset}'; "
                                 f"sources: {', '.join(DG_TARGETS)}")
        data = build_dataset(spec.dataset, spec.data_root, spec.shots, spec.seed, "all")
        model, seconds, ms, training = _train(spec, data, method_options, cfg)
        metrics = {"source": round(evaluate(model, data.test, desc=spec.dataset, **kwargs).accuracy, 4)}
        for target in DG_TARGETS[spec.dataset]:
            shifted = build_dataset(target, spec.data_root, -1, spec.seed, "all")
            model.set_classes(shifted.classnames, shifted.template, target)
            metrics[target] = round(evaluate(model, shifted.test, desc=target, **kwargs).accuracy, 4)
        targets = [metrics[t] for t in DG_TARGETS[spec.dataset]]
        metrics["target_average"] = round(sum(targets) / len(targets), 4)
    else:
        raise ClipadaptError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    metrics.update(training)
    metrics.update({
        "trainable_params": model.method.num_trainable(), "train_seconds": round(seconds, 3),
        "train_ms_per_image": round(ms, 3), "total_seconds": round(time.time() - start, 2),
        "protocol": protocol, "method": spec.method, "dataset": spec.dataset, "shots": spec.shots, "seed": spec.seed,
        "backbone": spec.backbone, "pretrained": str(spec.pretrained), "backbone_identity": model.backbone.identity,
    })
    return metrics
