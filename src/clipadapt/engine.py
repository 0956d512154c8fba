"""The training loop: method-agnostic, resumable, deterministic on the CPU.

Only the method's parameters reach the optimizer. A checkpoint (method state, optimizer, scheduler,
gradient scaler, epoch) is written atomically after every epoch; a restarted run continues from it.
Every epoch reseeds the shuffling and the augmentation from (seed, epoch), so a resumed run draws
the same batches as an uninterrupted one and ends with the same numbers.

Optionally (`patience`, `keep: best_val`) the model is scored on the few-shot validation split after
every epoch: training stops after `patience` epochs without a better validation accuracy, and the
run ends with the weights of its best validation epoch. The best weights and the stopping state are
part of the checkpoint, so a resumed run stops and selects exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import distributed
from .data.datum import Datum
from .data.loader import ImageItems, make_epoch_loader, make_loader, resolve_workers
from .data.transforms import train_transform
from .errors import ClipadaptError
from .fileio import atomic_path
from .model import AdaptedCLIP
from .validation import check_fields

Optimizer = Literal["sgd", "adamw", "adam"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
Schedule = Literal["cosine", "constant"]
Keep = Literal["last", "best_val"]
OPTIMIZERS = get_args(Optimizer)
PRECISIONS = get_args(Precision)
SCHEDULES = get_args(Schedule)
KEEP = get_args(Keep)


@dataclass
class TrainConfig:
    """Optimisation settings; a method's paper values come from its `training_defaults`."""

    optimizer: Optimizer = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 5
    batch_size: int = 16
    warmup_epochs: int = 0  # constant-lr warm-up epochs before the cosine schedule (Dassl's "constant")
    warmup_lr: float = 1e-5
    schedule: Schedule = "cosine"  # cosine (Dassl's, stepped per epoch) | constant
    patience: int = 0  # early stopping: stop after this many epochs without a better val accuracy (0: off)
    keep: Keep = "last"  # the weights a run ends with: last (the papers' default) | best_val (best val epoch)
    precision: Precision = "auto"  # auto: fp16 with gradient scaling on CUDA (the papers' AMP), fp32 on CPU
    augment: bool = True  # CoOp's random resized crop and flip
    seed: int = 1
    workers: int | None = None  # data loading processes; None: one per core, at most 8
    eval_batch_size: int = 100
    log_every: int = 10  # steps between loss records (and the last step of each epoch); the loss stays on device between

    def __post_init__(self):
        check_fields(self, "training setting")  # types and ranges (validation.RANGES), for CLI, YAML and Python

    @property
    def validates(self) -> bool:
        """Whether the run scores the validation split after every epoch."""
        return self.patience > 0 or self.keep == "best_val"

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
    if cfg.schedule == "constant":
        return cfg.lr
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

    train_seconds: float  # wall time of the training epochs, data loading included
    images_seen: int
    final_loss: float
    epochs_trained: int = 0
    best_epoch: int | None = None  # the validation-selected epoch (1-based), when the run validates
    best_val_accuracy: float | None = None
    data_seconds: float = 0.0  # the part of train_seconds spent waiting for the next batch

    @property
    def ms_per_image(self) -> float:
        """Training wall time per image, data loading included."""
        return 1000.0 * self.train_seconds / max(1, self.images_seen)


class _LossWindow:
    """Loss and loss parts summed on the device between two log records (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.parts: dict[str, Any] = {}
        self.steps = self.images = 0

    def add(self, loss: torch.Tensor, parts: dict[str, Any], images: int) -> None:
        """One step's loss and parts (floats or tensors)."""
        self.loss += loss.detach().float()
        for name, value in parts.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else value
            self.parts[name] = self.parts.get(name, 0.0) + value
        self.steps += 1
        self.images += images

    def flush(self, now: float) -> dict[str, Any]:
        """The window's means and throughput; starts a new window."""
        n = self.steps
        record = {"loss": self.loss.item() / n,
                  **{name: float(value) / n for name, value in self.parts.items()},
                  "steps_averaged": n, "images_per_s": round(self.images / max(now - self.start, 1e-9), 2)}
        self.start = now
        self._reset()
        return record


class Trainer:
    """Trains a model's method on items; `run()` resumes from `out_dir/checkpoint.pt` if present."""

    def __init__(self, model: AdaptedCLIP, items: list[Datum], cfg: TrainConfig, out_dir: str | None = None,
                 device: str | torch.device = "cpu", progress: bool = True, val_items: list[Datum] | None = None):
        if not items:
            raise ClipadaptError("the training split is empty")
        if cfg.validates and not val_items:
            raise ClipadaptError("patience / keep=best_val need a validation split, and this dataset has none")
        self.model, self.items, self.cfg = model, items, cfg
        self.val_items = list(val_items or [])
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
        self.data_seconds = 0.0
        self._epoch_loader = self._epoch_sampler = None  # one image loader for every epoch (its workers persist)
        # Validation-driven selection: best accuracy so far, its epoch and weights, epochs since it.
        self.best_val, self.best_epoch, self.best_state = -1.0, 0, None
        self.since_best, self.stopped = 0, False
        self._val_features = None
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
                 "data_seconds": self.data_seconds,
                 "images_seen": self.images_seen, "last_loss": self.last_loss,
                 "selection": {"best_val": self.best_val, "best_epoch": self.best_epoch,
                               "since_best": self.since_best, "stopped": self.stopped},
                 "best_method": self.best_state}
        if distributed.is_main():  # under torchrun rank 0 writes; the others wait until it is on disk
            with atomic_path(self.checkpoint_path) as tmp:
                torch.save(state, tmp)
        distributed.barrier()

    def try_resume(self) -> bool:
        """Load the last checkpoint if the output folder has one."""
        path = self.checkpoint_path
        if not path or not os.path.exists(path):
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.start_epoch = int(state["epoch"])
            self.train_seconds, self.images_seen = float(state["train_seconds"]), int(state["images_seen"])
            self.last_loss = float(state["last_loss"])
            self.data_seconds = float(state.get("data_seconds", 0.0))
            sel = state.get("selection") or {}
            self.best_val, self.best_epoch = float(sel.get("best_val", -1.0)), int(sel.get("best_epoch", 0))
            self.since_best, self.stopped = int(sel.get("since_best", 0)), bool(sel.get("stopped", False))
            self.best_state = state.get("best_method")
        except Exception as err:  # torch raises many types for a truncated or foreign file
            reason = " ".join(str(err).split())[:200]
            raise ClipadaptError(f"cannot resume from '{path}': not a readable clipadapt checkpoint "
                                 f"({type(err).__name__}: {reason}); pass --overwrite to start the run again") from None
        return True

    def _log(self, record: dict) -> None:
        if self.out_dir and distributed.is_main():
            with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def _image_batches(self, epoch_seed: int, drop_last: bool):
        """The epoch's image batches from the run's one loader (created on first use)."""
        if self._epoch_loader is None:
            self._epoch_loader, self._epoch_sampler = make_epoch_loader(
                self.items, self.transform, self.cfg.batch_size, self.cfg.workers, drop_last,
                pin_memory=self.device.type == "cuda")
        self._epoch_sampler.set_epoch_seed(epoch_seed)
        return self._epoch_loader

    def _feature_batches(self, epoch: int, drop_last: bool):
        """Batches of cached frozen image features, shuffled as the image loader would be."""
        feats, labels = self._features
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch))
        stop = len(order) - len(order) % self.cfg.batch_size if drop_last else len(order)
        for start in range(0, stop, self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            yield feats[idx], labels[idx], idx

    def _sharded_batches(self, epoch: int, drop_last: bool, use_cache: bool):
        """Under torchrun: this rank's slice of each global batch, the global batches a single process draws."""
        seed, bs = self.cfg.seed * 1000 + epoch, self.cfg.batch_size
        if use_cache:
            n = len(self._features[1])
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
            stop = n - n % bs if drop_last else n
            batches = [order[start:start + bs] for start in range(0, stop, bs)]
        else:
            batches = distributed.global_batches(len(self.items), bs, seed, drop_last)
        mine = [distributed.my_slice(b) for b in batches]
        if use_cache:
            feats, labels = self._features
            for batch, idx in zip(batches, mine):
                yield feats[idx], labels[idx], len(batch)
        else:
            loader = DataLoader(ImageItems(self.items, self.transform), batch_sampler=mine,
                                num_workers=resolve_workers(self.cfg.workers))
            for (images, labels, _), batch in zip(loader, batches):
                yield images, labels, len(batch)

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

    @torch.no_grad()
    def validation_accuracy(self) -> float:
        """Top-1 accuracy (percent) on the validation split with the current weights."""
        from .evaluation import evaluate, model_transform

        model = self.model
        if not model.method.image_tower_is_frozen(model.backbone):
            return evaluate(model, self.val_items, self.cfg.eval_batch_size, self.cfg.workers, self.device,
                            progress=False).accuracy
        if self._val_features is None:  # frozen towers: the val images' features never change
            loader = make_loader(self.val_items, model_transform(model), self.cfg.eval_batch_size,
                                 workers=self.cfg.workers)
            feats, labels = [], []
            for images, y, _ in loader:
                feats.append(model.frozen_image_features(images.to(self.device)).float())
                labels.append(y.to(self.device))
            self._val_features = (torch.cat(feats), torch.cat(labels))
        model.eval()
        feats, labels = self._val_features
        correct = 0
        for start in range(0, len(labels), self.cfg.eval_batch_size):
            logits = model.logits_from_frozen_image_features(feats[start:start + self.cfg.eval_batch_size])
            correct += int((logits.argmax(dim=1) == labels[start:start + self.cfg.eval_batch_size]).sum())
        return 100.0 * correct / len(labels)

    def _select(self, epoch: int) -> None:
        """Score the validation split after `epoch` epochs; keep the best weights; decide to stop."""
        acc = self.validation_accuracy()
        if acc > self.best_val:  # strictly better, as the reference's `acc1 > best_acc1`
            self.best_val, self.best_epoch, self.since_best = acc, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.method.state_dict().items()}
        else:
            self.since_best += 1
        self.stopped = self.cfg.patience > 0 and self.since_best >= self.cfg.patience
        self._log({"event": "validation", "epoch": epoch, "val_accuracy": round(acc, 4),
                   "best_epoch": self.best_epoch, "best_val_accuracy": round(self.best_val, 4)})
        if self.stopped:
            self._log({"event": "early_stop", "epoch": epoch, "best_epoch": self.best_epoch})
            if self.progress:
                print(f"early stop after epoch {epoch}: no better validation accuracy for {self.since_best} epochs "
                      f"(best {self.best_val:.2f} at epoch {self.best_epoch})", file=sys.stderr)

    def run(self) -> TrainResult:
        """Train for the configured epochs (the remaining ones after a resume)."""
        cfg, model = self.cfg, self.model
        if self.try_resume():
            # Steps logged after this checkpoint belonged to the interrupted epoch, which reruns whole.
            self._log({"event": "resume", "after_epoch": self.start_epoch})
            if self.progress:
                print(f"resuming from {self.checkpoint_path} after epoch {self.start_epoch}", file=sys.stderr)
        drop_last = len(self.items) >= cfg.batch_size  # as Dassl's train loader
        use_cache = model.method.output_only and not cfg.augment
        if model.method.output_only:
            path = ("frozen image features computed once for the run (augmentation off)" if use_cache else
                    "augmentation on: frozen image features recomputed for every batch")
            self._log({"event": "feature_path", "path": path})
            if self.progress:
                print(f"{model.method.name}: {path}", file=sys.stderr)
        if use_cache and self.start_epoch < cfg.epochs and not self.stopped:
            self._cache_features()
        epochs_done = self.start_epoch
        for epoch in range(self.start_epoch, cfg.epochs):
            if self.stopped:
                break
            lr = lr_at_epoch(cfg, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            seed_everything(cfg.seed * 1000 + epoch)
            model.seed_draws(cfg.seed * 1000 + epoch)  # prompt and scale draws replay on resume
            sharded = distributed.world_size() > 1
            if sharded:
                batches = self._sharded_batches(epoch, drop_last, use_cache)
            elif use_cache:
                batches = self._feature_batches(epoch, drop_last)
            else:
                batches = self._image_batches(cfg.seed * 1000 + epoch, drop_last)
            model.train()
            steps = len(self.items) // cfg.batch_size if drop_last else math.ceil(len(self.items) / cfg.batch_size)
            window = _LossWindow(self.device)
            epoch_start = time.perf_counter()
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress, leave=False)
            batch_iter, step = iter(bar), 0
            while True:
                fetch = time.perf_counter()
                batch = next(batch_iter, None)
                self.data_seconds += time.perf_counter() - fetch
                if batch is None:
                    break
                inputs, labels, extra = batch
                global_count = extra if sharded else len(labels)
                inputs = inputs.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    logits = model.logits_from_features(inputs) if use_cache else model(inputs)
                    loss, parts = model.method.loss(logits.float(), labels)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                distributed.average_gradients(self.params, len(labels), global_count)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.images_seen += global_count
                window.add(loss, parts, len(labels))
                step += 1
                if step % cfg.log_every == 0 or step == steps:  # the only host syncs of the loop
                    self.last_loss = loss.item()
                    record = window.flush(time.perf_counter())
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
                    self._log({"epoch": epoch + 1, "step": step, "lr": lr, **record})
            if window.steps:  # a loader that yielded another number of batches than expected
                self.last_loss = loss.item()
                self._log({"epoch": epoch + 1, "step": step, "lr": lr, **window.flush(time.perf_counter())})
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # once an epoch: the epoch's time includes its queued GPU work
            self.train_seconds += time.perf_counter() - epoch_start
            epochs_done = epoch + 1
            if cfg.validates:
                self._select(epochs_done)
            if self.out_dir:
                self.save_checkpoint(epochs_done)
        self._epoch_loader = self._epoch_sampler = None  # ends the loader's worker processes
        if cfg.keep == "best_val" and self.best_state is not None:
            model.method.load_state_dict(self.best_state)
        model.eval()
        return TrainResult(self.train_seconds, self.images_seen, self.last_loss, epochs_done,
                           self.best_epoch if cfg.validates else None,
                           self.best_val if cfg.validates else None, self.data_seconds)
