"""Accuracy of a model on a list of items, with per-image predictions for error analysis."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .data.datum import Datum
from .data.loader import make_loader
from .data.transforms import test_transform
from .feature_cache import FeatureCache
from .fileio import atomic_path
from .model import AdaptedCLIP


@dataclass
class EvalResult:
    """Accuracy (percent) and the per-image predictions behind it."""

    accuracy: float
    num_images: int
    num_classes: int = 0  # the classes the model chose among (the logits' width)
    labels: list[int] = field(default_factory=list)
    topk: list[list[int]] = field(default_factory=list)  # top-5 class indices, best first
    topk_scores: list[list[float]] = field(default_factory=list)  # their softmax probabilities

    def counts(self) -> dict[str, int]:
        """What the accuracy was measured on: {images, classes}, recorded beside it in metrics.json."""
        return {"images": self.num_images, "classes": self.num_classes}


def model_transform(model: AdaptedCLIP, noise_std: float = 0.0):
    """CoOp's test transform at the backbone's size and normalisation (with fixed per-image noise if noise_std)."""
    cfg = model.backbone.preprocess_cfg
    return test_transform(model.backbone.image_size, cfg["mean"], cfg["std"], noise_std)


def eval_autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The default evaluation precision: fp16 autocast on CUDA, fp32 on the CPU (bf16 is emulated there)."""
    return torch.float16 if torch.device(device).type == "cuda" else None


def _autocast(device: torch.device, autocast_dtype: torch.dtype | None):
    return torch.autocast(
        device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    )


def frozen_features(
    model: AdaptedCLIP,
    items: list[Datum],
    batch_size: int,
    workers: int | None = 0,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    noise_std: float = 0.0,
    progress: bool = False,
    desc: str = "eval",
) -> torch.Tensor:
    """The frozen towers' image features of `items` (float32, on the CPU), in item order."""
    device = torch.device(device)
    loader = make_loader(
        items,
        model_transform(model, noise_std),
        batch_size,
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    feats = []
    for images, _, _ in tqdm(
        loader, desc=f"{desc} (image features)", disable=not progress, unit="batch", leave=False
    ):
        with _autocast(device, autocast_dtype):  # frozen_image_features runs without grad
            feats.append(
                model.frozen_image_features(images.to(device, non_blocking=True)).float().cpu()
            )
    return torch.cat(feats)


def _score(
    model: AdaptedCLIP,
    batches,
    logits_of,
    num_images: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    desc: str,
    progress: bool,
) -> EvalResult:
    labels, topk, scores = [], [], []
    correct, num_classes = 0, 0
    for inputs, y, _ in tqdm(batches, desc=desc, disable=not progress, unit="batch", leave=False):
        with _autocast(device, autocast_dtype):
            logits = logits_of(inputs.to(device, non_blocking=True)).float()
        num_classes = logits.shape[1]
        k = min(5, num_classes)
        best = logits.softmax(dim=1).topk(k, dim=1)
        top = best.indices.cpu()
        correct += int((top[:, 0] == y).sum())
        labels += y.tolist()
        topk += top.tolist()
        scores += best.values.cpu().tolist()
    return EvalResult(100.0 * correct / num_images, num_images, num_classes, labels, topk, scores)


@torch.no_grad()
def evaluate_frozen_features(
    model: AdaptedCLIP,
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Top-1 accuracy from the frozen image features of `frozen_features` (methods with a frozen image tower).

    The one scoring path from frozen features: `evaluate` with a feature cache and the trainer's
    validation both go through it, so a cached score and a fresh one are the same computation."""
    if len(features) != len(labels) or not len(labels):
        raise ValueError(f"{len(features)} features for {len(labels)} labels")
    model.eval()
    labels = labels.cpu()
    batches = (
        (features[start : start + batch_size], labels[start : start + batch_size], None)
        for start in range(0, len(labels), batch_size)
    )
    return _score(
        model,
        batches,
        model.logits_from_frozen_image_features,
        len(labels),
        torch.device(device),
        autocast_dtype,
        desc,
        progress,
    )


@torch.no_grad()
def evaluate(
    model: AdaptedCLIP,
    items: list[Datum],
    batch_size: int = 100,
    workers: int | None = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "eval",
    autocast_dtype: torch.dtype | None | str = "auto",
    feature_cache: FeatureCache | None = None,
    dataset: str = "",
    split: str = "",
    noise_std: float = 0.0,
) -> EvalResult:
    """Top-1 accuracy of `model` over `items`.

    `autocast_dtype` "auto" is `eval_autocast_dtype(device)`. With a `feature_cache`, a method whose
    image tower is frozen reads the images' frozen features from it (`dataset` and `split` label the
    entry; the key holds the exact image list), computing and storing them on a miss. Random
    weights (identity '.../none') are never cached: nothing identifies them. `noise_std` adds fixed
    per-image Gaussian noise after normalisation (the noisy-images study); it is part of the key."""
    if not items:
        raise ValueError("nothing to evaluate: the split is empty")
    device = torch.device(device)
    if autocast_dtype == "auto":
        autocast_dtype = eval_autocast_dtype(device)
    model.eval()
    if (
        feature_cache is not None
        and model.method.image_tower_is_frozen(model.backbone)
        and FeatureCache.names_weights(model.backbone.identity)
    ):
        transform = model_transform(model, noise_std)
        key = FeatureCache.key(
            model.backbone.identity,
            dataset,
            split,
            items,
            f"{transform!r} noise_std={noise_std}",
            str(autocast_dtype or torch.float32),
            device.type,
        )
        feats = feature_cache.load(key)
        if feats is None:
            feats = frozen_features(
                model, items, batch_size, workers, device, autocast_dtype, noise_std, progress, desc
            )
            feature_cache.save(key, feats)
        labels = torch.tensor([item.label for item in items])
        return evaluate_frozen_features(
            model, feats, labels, batch_size, device, autocast_dtype, progress, desc
        )
    loader = make_loader(
        items,
        model_transform(model, noise_std),
        batch_size,
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    return _score(model, loader, model, len(items), device, autocast_dtype, desc, progress)


def write_predictions(
    path: str, items: list[Datum], result: EvalResult, classnames: list[str]
) -> None:
    """CSV of each image's label and top-k classes: index, name and softmax probability of each."""
    k = max((len(t) for t in result.topk), default=0)
    header = ["impath", "label", "label_name"]
    for rank in range(1, k + 1):
        header += [f"top{rank}", f"top{rank}_name", f"top{rank}_score"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for item, label, top, scores in zip(
            items, result.labels, result.topk, result.topk_scores, strict=True
        ):
            row = [item.impath, label, classnames[label]]
            for index, score in zip(top, scores, strict=True):
                row += [index, classnames[index], f"{score:.4f}"]
            writer.writerow(row)
