"""The training loop: method-agnostic, resumable, deterministic on the CPU.

Only the method's parameters reach the optimizer. A checkpoint (method state, optimizer, scheduler,
gradient scaler, epoch) is written atomically after every epoch; a restarted run continues from it.
Every epoch reseeds the shuffling and the augmentation from (seed, epoch), so a resumed run draws
the same batches as an uninterrupted one and ends with the same numbers.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .data.datum import Datum
from .data.loader import make_loader
from .data.transforms import train_transform
from .errors import ClipadaptError
from .fileio import atomic_path
from .model import AdaptedCLIP

OPTIMIZERS = ("sgd", "adamw", "adam")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass
class TrainConfig:
    """Optimisation settings; a method's paper values come from its `training_defaults`."""

    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 5
    batch_size: int = 16
    warmup_epochs: int = 0  # constant-lr warm-up epochs before the cosine schedule (Dassl's "constant")
    warmup_lr: float = 1e-5
    precision: str = "auto"  # auto: fp16 with gradient scaling on CUDA (the papers' AMP), fp32 on CPU
    augment: bool = True  # CoOp's random resized crop and flip
    seed: int = 1
    workers: int = 0
    eval_batch_size: int = 100

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ClipadaptError(f"optimizer must be one of {OPTIMIZERS}, got '{self.optimizer}'")
        if self.precision not in PRECISIONS:
            raise ClipadaptError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ClipadaptError("epochs, batch_size and lr must be positive")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    @classmethod
    def field_names(cls) -> set[str]:
        """Names of the settings."""
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Dassl's: momentum, no nesterov), Adam or AdamW over the given parameters."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate during `epoch` (0-based): constant warm-up, then Dassl's cosine (T_max = epochs), per epoch."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Autocast dtype (None for fp32) and whether to scale gradients."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ClipadaptError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    """What a finished training run reports."""

    train_seconds: float
    images_seen: int
    final_loss: float

    @property
    def ms_per_image(self) -> float:
        """Training wall time per image."""
        return 1000.0 * self.train_seconds / max(1, self.images_seen)


class Trainer:
    """Trains a model's method on items; `run()` resumes from `out_dir/checkpoint.pt` if present."""

    def __init__(self, model: AdaptedCLIP, items: list[Datum], cfg: TrainConfig, out_dir: str | None = None,
                 device: str | torch.device = "cpu", progress: bool = True):
        if not items:
            raise ClipadaptError("the training split is empty")
        self.model, self.items, self.cfg = model, items, cfg
        self.out_dir, self.device, self.progress = out_dir, torch.device(device), progress
        self.params = model.method.trainable_parameters()
        if not self.params:
            raise ClipadaptError(f"method '{model.method.name}' has nothing to train")
        self.optimizer = build_optimizer(self.params, cfg)
        self.autocast_dtype, scale_grads = resolve_precision(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=scale_grads)
        pp = model.backbone.preprocess_cfg
        self.transform = train_transform(model.backbone.image_size, pp["mean"], pp["std"], augment=cfg.augment)
        self.start_epoch, self.train_seconds, self.images_seen, self.last_loss = 0, 0.0, 0, float("nan")
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    @property
    def checkpoint_path(self) -> str | None:
        """Where the per-epoch checkpoint lives."""
        return os.path.join(self.out_dir, "checkpoint.pt") if self.out_dir else None

    def save_checkpoint(self, epoch: int) -> None:
        """Method state and optimiser state after `epoch` epochs, written atomically."""
        state = {"epoch": epoch, "method": self.model.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "train_seconds": self.train_seconds,
                 "images_seen": self.images_seen, "last_loss": self.last_loss}
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def try_resume(self) -> bool:
        """Load the last checkpoint if the output folder has one."""
        path = self.checkpoint_path
        if not path or not os.path.exists(path):
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.train_seconds, self.images_seen = float(state["train_seconds"]), int(state["images_seen"])
        self.last_loss = float(state["last_loss"])
        return True

    def _log(self, record: dict) -> None:
        if self.out_dir:
            with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def _feature_batches(self, epoch: int, drop_last: bool):
        """Batches of cached frozen image features, shuffled as the image loader would be."""
        feats, labels = self._features
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch))
        stop = len(order) - len(order) % self.cfg.batch_size if drop_last else len(order)
        for start in range(0, stop, self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            yield feats[idx], labels[idx], idx

    def _cache_features(self) -> None:
        """Frozen image features of every training image, one backbone pass for the whole run."""
        loader = make_loader(self.items, self.transform, self.cfg.eval_batch_size, workers=self.cfg.workers)
        feats, labels = [], []
        for images, y, _ in tqdm(loader, desc="frozen features", disable=not self.progress, leave=False):
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                feats.append(self.model.frozen_image_features(images.to(self.device)).float())
            labels.append(y.to(self.device))
        self._features = (torch.cat(feats), torch.cat(labels))

    def run(self) -> TrainResult:
        """Train for the configured epochs (the remaining ones after a resume)."""
        cfg, model = self.cfg, self.model
        if self.try_resume():
            # Steps logged after this checkpoint belonged to the interrupted epoch, which reruns whole.
            self._log({"event": "resume", "after_epoch": self.start_epoch})
            if self.progress:
                print(f"resuming from {self.checkpoint_path} after epoch {self.start_epoch}")
        drop_last = len(self.items) >= cfg.batch_size  # as Dassl's train loader
        use_cache = model.method.output_only and not cfg.augment
        if model.method.output_only:
            path = ("frozen image features computed once for the run (augmentation off)" if use_cache else
                    "augmentation on: frozen image features recomputed for every batch")
            self._log({"event": "feature_path", "path": path})
            if self.progress:
                print(f"{model.method.name}: {path}")
        if use_cache and self.start_epoch < cfg.epochs:
            self._cache_features()
        for epoch in range(self.start_epoch, cfg.epochs):
            lr = lr_at_epoch(cfg, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            seed_everything(cfg.seed * 1000 + epoch)
            model.seed_draws(cfg.seed * 1000 + epoch)  # prompt and scale draws replay on resume
            if use_cache:
                batches = self._feature_batches(epoch, drop_last)
            else:
                batches = make_loader(self.items, self.transform, cfg.batch_size, shuffle=True, workers=cfg.workers,
                                      seed=cfg.seed * 1000 + epoch, drop_last=drop_last)
            model.train()
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress, leave=False)
            for step, (inputs, labels, _) in enumerate(bar):
                start = time.perf_counter()
                inputs, labels = inputs.to(self.device), labels.to(self.device)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    logits = model.logits_from_features(inputs) if use_cache else model(inputs)
                    loss, parts = model.method.loss(logits.float(), labels)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                self.train_seconds += elapsed
                self.images_seen += len(labels)
                self.last_loss = loss.item()
                bar.set_postfix(loss=f"{self.last_loss:.4f}", img_s=f"{len(labels) / elapsed:.1f}")
                self._log({"epoch": epoch + 1, "step": step + 1, "lr": lr, "loss": self.last_loss, **parts,
                           "images_per_s": round(len(labels) / elapsed, 2)})
            if self.out_dir:
                self.save_checkpoint(epoch + 1)
        model.eval()
        return TrainResult(self.train_seconds, self.images_seen, self.last_loss)
