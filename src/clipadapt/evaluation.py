"""Accuracy of a model on a list of items, with per-image predictions for error analysis."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .data.datum import Datum
from .data.loader import make_loader
from .data.transforms import test_transform
from .fileio import atomic_path
from .model import AdaptedCLIP


@dataclass
class EvalResult:
    """Accuracy (percent) and the per-image predictions behind it."""

    accuracy: float
    num_images: int
    labels: list[int] = field(default_factory=list)
    topk: list[list[int]] = field(default_factory=list)  # top-5 class indices, best first
    topk_scores: list[list[float]] = field(default_factory=list)  # their softmax probabilities


def model_transform(model: AdaptedCLIP, noise_std: float = 0.0):
    """CoOp's test transform at the backbone's size and normalisation (with fixed per-image noise if noise_std)."""
    cfg = model.backbone.preprocess_cfg
    return test_transform(model.backbone.image_size, cfg["mean"], cfg["std"], noise_std)


@torch.no_grad()
def evaluate(model: AdaptedCLIP, items: list[Datum], batch_size: int = 100, workers: int = 0,
             device: str | torch.device = "cpu", progress: bool = True, desc: str = "eval",
             autocast_dtype: torch.dtype | None = None, noise_std: float = 0.0) -> EvalResult:
    """Top-1 accuracy of `model` over `items`."""
    if not items:
        raise ValueError("nothing to evaluate: the split is empty")
    model.eval()
    loader = make_loader(items, model_transform(model, noise_std), batch_size, workers=workers)
    labels, topk, scores = [], [], []
    correct = 0
    device_type = torch.device(device).type
    for images, y, _ in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        images = images.to(device)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits = model(images).float()
        k = min(5, logits.shape[1])
        best = logits.softmax(dim=1).topk(k, dim=1)
        top = best.indices.cpu()
        correct += int((top[:, 0] == y).sum())
        labels += y.tolist()
        topk += top.tolist()
        scores += best.values.cpu().tolist()
    return EvalResult(100.0 * correct / len(items), len(items), labels, topk, scores)


def write_predictions(path: str, items: list[Datum], result: EvalResult, classnames: list[str]) -> None:
    """CSV of each image's label and top-k classes: index, name and softmax probability of each."""
    k = max((len(t) for t in result.topk), default=0)
    header = ["impath", "label", "label_name"]
    for rank in range(1, k + 1):
        header += [f"top{rank}", f"top{rank}_name", f"top{rank}_score"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for item, label, top, scores in zip(items, result.labels, result.topk, result.topk_scores):
            row = [item.impath, label, classnames[label]]
            for index, score in zip(top, scores):
                row += [index, classnames[index], f"{score:.4f}"]
            writer.writerow(row)
