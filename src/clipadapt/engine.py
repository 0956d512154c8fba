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

import logging
import math
import os
import random
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import distributed
from .data.datum import Datum
from .data.loader import ImageItems, make_epoch_loader, make_loader, resolve_workers
from .data.transforms import train_transform
from .errors import ClipadaptError, TrainingDivergedError
from .evaluation import (
    eval_autocast_dtype,
    evaluate,
    evaluate_frozen_features,
    frozen_features,
)
from .fileio import atomic_path
from .frozen_cache import FrozenImages, plan_images
from .model import AdaptedCLIP
from .run_logging import RunLog
from .settings import TrainConfig

log = logging.getLogger(__name__)

DIVERGED_AFTER_SKIPS = (
    10  # under fp16, non-finite losses in a row that mean divergence, not a scaler skip
)


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Dassl's: momentum, no nesterov), Adam or AdamW over the given parameters."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
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
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[
        precision
    ]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    """What a finished training run reports."""

    train_seconds: (
        float  # wall time of the training epochs: data waits and the cache-building pass included
    )
    images_seen: int
    final_loss: float
    epochs_trained: int = 0
    best_epoch: int | None = None  # the validation-selected epoch (1-based), when the run validates
    best_val_accuracy: float | None = None
    data_seconds: float = 0.0  # the part of train_seconds spent waiting for the next batch
    # Optimizer steps only (forward, loss, backward, update); None when resumed from a checkpoint
    # written before steps were timed.
    step_seconds: float | None = 0.0

    @property
    def epoch_ms_per_image(self) -> float:
        """Wall time of whole epochs per image: data waits and the cache-building pass included."""
        return 1000.0 * self.train_seconds / max(1, self.images_seen)

    @property
    def step_ms_per_image(self) -> float | None:
        """Time of the optimizer steps alone per image (forward, loss, backward, update)."""
        return (
            None
            if self.step_seconds is None
            else 1000.0 * self.step_seconds / max(1, self.images_seen)
        )


@dataclass
class TrainerState:
    """What a Trainer carries from epoch to epoch besides the weights, the optimiser and the gradient
    scaler: what its checkpoint saves and a resumed run restores. Each field is the Trainer attribute of
    the same name; `state_dict()` is the checkpoint's layout, which checkpoints written before this
    class existed share (their missing keys read as the defaults below)."""

    start_epoch: int = 0  # epochs done: a resumed run starts at this one (the checkpoint's "epoch")
    train_seconds: float = 0.0
    data_seconds: float = 0.0
    step_seconds: float | None = (
        0.0  # None: resumed from a checkpoint written before steps were timed
    )
    images_seen: int = 0
    last_loss: float = float("nan")
    # Validation-driven selection: best accuracy so far, its epoch and weights, epochs since it, stop.
    best_val: float = -1.0
    best_epoch: int = 0
    since_best: int = 0
    stopped: bool = False
    best_state: dict[str, torch.Tensor] | None = None  # the checkpoint's "best_method"
    epoch_average: dict[str, torch.Tensor] | None = None  # the running weighted sum of epoch states

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's entries for this state (tensors as they are, for torch.save)."""
        return {
            "epoch": self.start_epoch,
            "train_seconds": self.train_seconds,
            "data_seconds": self.data_seconds,
            "step_seconds": self.step_seconds,
            "images_seen": self.images_seen,
            "last_loss": self.last_loss,
            "selection": {
                "best_val": self.best_val,
                "best_epoch": self.best_epoch,
                "since_best": self.since_best,
                "stopped": self.stopped,
            },
            "best_method": self.best_state,
            "epoch_average": self.epoch_average,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's entries; keys an older checkpoint lacks keep their defaults
        (its steps untimed: step_seconds None)."""
        selection = state.get("selection") or {}
        steps_timed = state.get("step_seconds")
        self.start_epoch = int(state["epoch"])
        self.train_seconds = float(state["train_seconds"])
        self.data_seconds = float(state.get("data_seconds", 0.0))
        self.step_seconds = None if steps_timed is None else float(steps_timed)
        self.images_seen = int(state["images_seen"])
        self.last_loss = float(state["last_loss"])
        self.best_val = float(selection.get("best_val", -1.0))
        self.best_epoch = int(selection.get("best_epoch", 0))
        self.since_best = int(selection.get("since_best", 0))
        self.stopped = bool(selection.get("stopped", False))
        self.best_state = state.get("best_method")
        self.epoch_average = state.get("epoch_average")


class _StepClock:
    """Time spent inside optimizer steps: CUDA events on a GPU (read once an epoch, no per-step sync),
    the host clock on the CPU, where each step's work is done when its Python call returns."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._pairs: list = []
        self._began = 0.0

    def begin(self) -> None:
        """Mark a step's start."""
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._pairs.append([start, None])
        else:
            self._began = time.perf_counter()

    def end(self) -> None:
        """Mark a step's end."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pairs[-1][1] = end
        else:
            self.seconds += time.perf_counter() - self._began

    def settle(self) -> float:
        """The steps' seconds so far; on CUDA call it after a synchronize (the events must have completed)."""
        if self.cuda:
            self.seconds += sum(start.elapsed_time(end) for start, end in self._pairs) / 1000.0
            self._pairs = []
        return self.seconds


class _LossWindow:
    """Loss and loss parts summed on the device between two log records (no host sync per step).

    Under torchrun each rank adds its slice's mean weighted by its share of the global batch, and a
    record sums the ranks' windows (one all-reduce a log point): the logged loss is the global batch's,
    as one process would log it, not rank 0's own."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()
        self.last_step_loss = float("nan")  # the global batch's loss at the last flushed step
        self._reset()

    def _reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.last = torch.zeros((), device=self.device)
        self.parts: dict[str, Any] = {}
        self.steps = self.images = 0
        self.data_wait = 0.0  # seconds spent waiting for the loader's batches

    def add(
        self, loss: torch.Tensor, parts: dict[str, Any], images: int, share: float = 1.0
    ) -> None:
        """One step's loss and parts (floats or tensors); `share` is this rank's part of the global batch."""
        self.last = loss.detach().float() * share
        self.loss += self.last
        for name, value in parts.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else value
            self.parts[name] = self.parts.get(name, 0.0) + value * share
        self.steps += 1
        self.images += images

    def flush(self, now: float) -> dict[str, Any]:
        """The window's means (over every rank's slice), throughput and data-wait share; starts a new window."""
        n, elapsed = self.steps, max(now - self.start, 1e-9)
        names = list(self.parts)
        values = torch.stack(
            [
                self.loss,
                self.last,
                *(
                    torch.as_tensor(self.parts[k], dtype=torch.float32, device=self.device)
                    for k in names
                ),
            ]
        )
        values = distributed.sum_over_ranks(values).tolist()
        self.last_step_loss = values[1]
        record = {
            "loss": values[0] / n,
            **{name: v / n for name, v in zip(names, values[2:], strict=True)},
            "steps_averaged": n,
            "images_per_s": round(self.images / elapsed, 2),
            "data_time_share": round(min(self.data_wait / elapsed, 1.0), 4),
        }
        self.start = now
        self._reset()
        return record


class _DivergenceWatch:
    """The first optimizer step whose loss is not finite, kept on the device (no host sync per step).

    Without a grad scaler one such step is divergence. Under fp16 the scaler skips steps whose
    gradients overflow, which is normal; only a loss that stays non-finite for `patience` steps in a row
    counts (a skipped step leaves the weights as they were, so a loss that recovers did no harm)."""

    def __init__(self, device: torch.device, patience: int):
        self.patience = patience
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.values: torch.Tensor | None = None
        self.names: list[str] = []

    def add(self, step: int, loss: torch.Tensor, parts: dict[str, Any]) -> None:
        """Record one step's loss; the step number is the epoch's (1-based)."""
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        self.in_a_row = torch.where(bad, self.in_a_row + 1, torch.zeros_like(self.in_a_row))
        hit = (self.in_a_row >= self.patience) & (self.first < 0)
        self.first = torch.where(hit, torch.full_like(self.first, step), self.first)
        values = torch.stack(
            [
                loss,
                *(
                    torch.as_tensor(v, dtype=torch.float32, device=loss.device).detach()
                    for v in parts.values()
                ),
            ]
        )
        if self.values is None or self.values.shape != values.shape:
            self.values, self.names = values.clone(), ["loss", *parts]
        self.values = torch.where(hit, values, self.values)

    def diverged(self) -> bool:
        """Whether divergence was seen on any rank (a host sync: called at the log points only)."""
        return distributed.any_rank(self.first >= 0)

    def describe(self) -> str:
        """'step S: loss nan (part x, ...)' for the first diverged step on this rank."""
        step = int(self.first)
        if step < 0:
            return "on another rank"
        values = [f"{name} {float(v):.4g}" for name, v in zip(self.names, self.values, strict=True)]
        return f"step {step}: {values[0]}" + (
            f" ({', '.join(values[1:])})" if len(values) > 1 else ""
        )


def _nonfinite_parameters(params: list[torch.nn.Parameter]) -> list[int]:
    """Indices of the parameters holding a NaN or an infinity (one host sync)."""
    if not params:
        return []
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in params])
    return [] if bool(finite.all()) else [i for i, ok in enumerate(finite.tolist()) if not ok]


class Trainer:
    """Trains a model's method on items; `run()` resumes from `out_dir/checkpoint.pt` if present."""

    def __init__(
        self,
        model: AdaptedCLIP,
        items: list[Datum],
        cfg: TrainConfig,
        out_dir: str | None = None,
        device: str | torch.device = "cpu",
        progress: bool = True,
        val_items: list[Datum] | None = None,
    ):
        if not items:
            raise ClipadaptError("the training split is empty")
        if cfg.validates and not val_items:
            raise ClipadaptError(
                "patience / keep=best_val need a validation split, and this dataset has none"
            )
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
        self.transform = train_transform(
            model.backbone.image_size,
            pp["mean"],
            pp["std"],
            augment=cfg.augment,
            noise_std=cfg.train_noise_std,
        )
        # Counters, validation-driven selection and the epoch average (TrainerState's fields) start at
        # their defaults; last_good_epoch is the epoch of the newest checkpoint on disk.
        self.restore_state(TrainerState())
        self._epoch_loader = self._epoch_sampler = (
            None  # one image loader for every epoch (its workers persist)
        )
        # Epoch averaging (the method's `epoch_weights`, e.g. PromptSRC's GPA): the running weighted sum.
        self.epoch_weights = model.method.epoch_weights(cfg.epochs)
        self._val_features = None
        self._frozen: tuple[tuple, FrozenImages, torch.Tensor] | None = (
            None  # (items key, images, labels)
        )
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        self.events = RunLog(
            out_dir, write=distributed.is_main()
        )  # log.jsonl and TensorBoard: one voice

    @property
    def checkpoint_path(self) -> str | None:
        """Where the per-epoch checkpoint lives."""
        return os.path.join(self.out_dir, "checkpoint.pt") if self.out_dir else None

    def resumable_state(self) -> TrainerState:
        """The state a checkpoint saves besides the weights, the optimiser and the scaler."""
        return TrainerState(**{f.name: getattr(self, f.name) for f in fields(TrainerState)})

    def restore_state(self, state: TrainerState) -> None:
        """Continue from `state`: the Trainer's attributes of the same names take its values."""
        for f in fields(TrainerState):
            setattr(self, f.name, getattr(state, f.name))
        self.last_good_epoch = state.start_epoch

    def save_checkpoint(self, epoch: int) -> None:
        """Method state and optimiser state after `epoch` epochs, written atomically."""
        progress = self.resumable_state()
        progress.start_epoch = epoch
        state = {
            "method": self.model.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **progress.state_dict(),
        }
        if (
            distributed.is_main()
        ):  # under torchrun rank 0 writes; the others wait until it is on disk
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
            progress = TrainerState()
            progress.load_state_dict(state)
            self.restore_state(progress)
        except Exception as err:  # torch raises many types for a truncated or foreign file
            reason = " ".join(str(err).split())[:200]
            raise ClipadaptError(
                f"cannot resume from '{path}': not a readable clipadapt checkpoint "
                f"({type(err).__name__}: {reason}); pass --overwrite to start the run again"
            ) from None
        return True

    def _add_to_epoch_average(self, epoch: int) -> None:
        """Add the state after `epoch` (1-based), times its weight, to the running epoch average."""
        if self.epoch_weights is None:
            return
        weight = self.epoch_weights[epoch - 1]
        state = self.model.method.state_dict()
        if self.epoch_average is None:
            self.epoch_average = {
                k: v.detach() * weight if v.is_floating_point() else v.clone()
                for k, v in state.items()
            }
        else:
            for k, v in state.items():
                if v.is_floating_point():
                    self.epoch_average[k] = self.epoch_average[k] + v.detach() * weight

    def _log(self, record: dict) -> None:
        self.events.record(record)

    def _cached_batches(self, epoch: int, drop_last: bool):
        """Batches of the cached frozen images, in the order the image loader draws them (this rank's
        slice of each global batch under torchrun), with the global batch size."""
        _, frozen, labels = self._frozen
        batches = distributed.global_batches(
            len(labels), self.cfg.batch_size, self.cfg.seed * 1000 + epoch, drop_last
        )
        for batch in batches:
            idx = torch.tensor(distributed.my_slice(batch), dtype=torch.long)
            yield frozen[idx], labels[idx], len(batch)

    def _image_batches(self, epoch_seed: int, drop_last: bool):
        """The epoch's image batches from the run's one loader (created on first use)."""
        if self._epoch_loader is None:
            self._epoch_loader, self._epoch_sampler = make_epoch_loader(
                self.items,
                self.transform,
                self.cfg.batch_size,
                self.cfg.workers,
                drop_last,
                pin_memory=self.device.type == "cuda",
            )
        self._epoch_sampler.set_epoch_seed(epoch_seed)
        return self._epoch_loader

    def _sharded_batches(self, epoch: int, drop_last: bool):
        """Under torchrun: this rank's slice of each global batch, the global batches a single process draws."""
        batches = distributed.global_batches(
            len(self.items), self.cfg.batch_size, self.cfg.seed * 1000 + epoch, drop_last
        )
        mine = [distributed.my_slice(b) for b in batches]
        loader = DataLoader(
            ImageItems(self.items, self.transform),
            batch_sampler=mine,
            num_workers=resolve_workers(self.cfg.workers),
        )
        for (images, labels, _), batch in zip(loader, batches, strict=True):
            yield images, labels, len(batch)

    def _items_key(self) -> tuple:
        return tuple((item.impath, item.label) for item in self.items)

    def _cache_images(self, block: int) -> float:
        """The frozen towers' output at `block` for every training image, once for the run (in the
        run's precision; output features in float32); returns the seconds it took."""
        key = self._items_key()
        if self._frozen is not None and self._frozen[0] == key and self._frozen[1].block == block:
            return 0.0
        start = time.perf_counter()
        model = self.model
        with_final = model.method.compares_with_frozen
        store = self.autocast_dtype or model.backbone.dtype
        loader = make_loader(
            self.items, self.transform, self.cfg.eval_batch_size, workers=self.cfg.workers
        )
        parts, finals, labels = [], [], []
        for images, y, _ in tqdm(
            loader, desc="frozen prefix", disable=not self.progress, leave=False
        ):
            with torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ):
                part = model.frozen_images(images.to(self.device), block, with_final=with_final)
            parts.append(part.tokens if part.at_output else part.tokens.to(store))
            finals.append(part.final)
            labels.append(y.to(self.device))
        final = torch.cat(finals) if with_final and not part.at_output else None
        self._frozen = (
            key,
            FrozenImages(torch.cat(parts), block, part.at_output, final),
            torch.cat(labels),
        )
        return time.perf_counter() - start

    @torch.no_grad()
    def validation_accuracy(self) -> float:
        """Top-1 accuracy (percent) on the validation split with the current weights."""
        model, cfg = self.model, self.cfg
        autocast_dtype = eval_autocast_dtype(self.device)
        if not model.method.image_tower_is_frozen(model.backbone):
            return evaluate(
                model,
                self.val_items,
                cfg.eval_batch_size,
                cfg.workers,
                self.device,
                progress=False,
                autocast_dtype=autocast_dtype,
                noise_std=cfg.eval_noise_std,
            ).accuracy
        if self._val_features is None:  # frozen towers: the val images' features never change
            self._val_features = (
                frozen_features(
                    model,
                    self.val_items,
                    cfg.eval_batch_size,
                    cfg.workers,
                    self.device,
                    autocast_dtype,
                    cfg.eval_noise_std,
                ),
                torch.tensor([item.label for item in self.val_items]),
            )
        return evaluate_frozen_features(
            model, *self._val_features, cfg.eval_batch_size, self.device, autocast_dtype
        ).accuracy

    def _select(self, epoch: int) -> None:
        """Score the validation split after `epoch` epochs; keep the best weights; decide to stop."""
        acc = self.validation_accuracy()
        if acc > self.best_val:  # strictly better, as the reference's `acc1 > best_acc1`
            self.best_val, self.best_epoch, self.since_best = acc, epoch, 0
            self.best_state = {
                k: v.detach().clone() for k, v in self.model.method.state_dict().items()
            }
        else:
            self.since_best += 1
        self.stopped = self.cfg.patience > 0 and self.since_best >= self.cfg.patience
        self._log(
            {
                "event": "validation",
                "epoch": epoch,
                "val_accuracy": round(acc, 4),
                "best_epoch": self.best_epoch,
                "best_val_accuracy": round(self.best_val, 4),
            }
        )
        if self.stopped:
            self._log({"event": "early_stop", "epoch": epoch, "best_epoch": self.best_epoch})
            self._status(
                f"early stop after epoch {epoch}: no better validation accuracy for {self.since_best} "
                f"epochs (best {self.best_val:.2f} at epoch {self.best_epoch})"
            )

    def _stop_if_diverged(self, watch: _DivergenceWatch, epoch: int, step: int) -> None:
        """End the run with one line when the loss or a trained parameter is no longer finite."""
        bad_params = _nonfinite_parameters(self.params)
        if not watch.diverged() and not bad_params:
            return
        if int(watch.first) >= 0 or not bad_params:
            where = watch.describe()
        else:
            name_of = {id(p): name for name, p in self.model.method.named_parameters()}
            where = (
                f"by step {step}: {len(bad_params)} of {len(self.params)} trained tensors are not finite "
                f"(first {name_of.get(id(self.params[bad_params[0]]), '?')})"
            )
        kept = (
            f"the checkpoint after epoch {self.last_good_epoch} stays in {self.checkpoint_path}"
            if self.out_dir and self.last_good_epoch > 0
            else "no checkpoint was written"
        )
        self._log({"event": "diverged", "epoch": epoch, "at": where})
        raise TrainingDivergedError(
            f"training diverged in epoch {epoch}, {where}; no adapter or metrics were written and {kept} "
            f"(lower lr={self.cfg.lr:g}, or check the loss weights)"
        )

    def _status(self, line: str) -> None:
        # `progress` is off on the ranks other than 0 and in quiet library calls: one voice per run.
        if self.progress:
            log.info(line)

    def run(self) -> TrainResult:
        """Train for the configured epochs (the remaining ones after a resume)."""
        self._resume_if_interrupted()
        steps, drop_last = self._steps_per_epoch()
        # The curves' x axis is the optimizer step from the run's start; a resume continues after its checkpoint.
        self.events.open_tensorboard(
            self.cfg.logger, self.start_epoch * steps + 1, self.cfg.to_dict()
        )
        use_cache = self._prepare_frozen_work()
        epochs_done = self.start_epoch
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if self.stopped:
                break
            self._train_epoch(epoch, steps, drop_last, use_cache)
            epochs_done = epoch + 1
            self._end_epoch(epochs_done)
        return self._finish(epochs_done)

    def _resume_if_interrupted(self) -> None:
        """Continue from the output folder's checkpoint, if it has one."""
        if self.try_resume():
            # Steps logged after this checkpoint belonged to the interrupted epoch, which reruns whole.
            self._log({"event": "resume", "after_epoch": self.start_epoch})
            self._status(f"resuming from {self.checkpoint_path} after epoch {self.start_epoch}")

    def _steps_per_epoch(self) -> tuple[int, bool]:
        """Optimizer steps an epoch, and whether the last partial batch is dropped (as Dassl's loader)."""
        batch_size = self.cfg.batch_size
        drop_last = len(self.items) >= batch_size
        steps = (
            len(self.items) // batch_size if drop_last else math.ceil(len(self.items) / batch_size)
        )
        return steps, drop_last

    def _prepare_frozen_work(self) -> bool:
        """Decide what frozen work is done once (the images' and the prompts' frozen blocks), cache
        the training images' when they fit, and log the path; whether the image cache is used."""
        cfg, model = self.cfg, self.model
        model.prefix_budget_mb = cfg.prefix_cache_mb
        plan = plan_images(
            model.backbone,
            model.method,
            len(self.items),
            cfg.augment,
            cfg.prefix_cache_mb,
            cfg.train_noise_std,
            self.autocast_dtype or model.backbone.dtype,
        )
        text_block = model.method.first_active_blocks(model.backbone)[1]
        prompts = model.prompt_prefix() if self.start_epoch < cfg.epochs else None
        text_path = (
            f"class-prompt tokens at the input of text block {prompts.block + 1} computed once per "
            f"prompt set ({prompts.tokens.nbytes / 2**20:.1f} MB)"
            if prompts is not None
            else "class prompts from the text stem every pass"
            if text_block == 0
            else "frozen class-text features computed once per prompt set"
            if text_block >= len(model.backbone.text_blocks)
            else "class prompts not cached (over prefix_cache_mb or turned off): text blocks recomputed"
        )
        path = f"{plan.describe(model.method.name)}; {text_path}"
        record = {
            "event": "feature_path",
            "path": path,
            "image_block": plan.block,
            "text_block": text_block,
            "image_cache": plan.cached,
            "image_cache_mb": round(plan.total_bytes / 2**20, 2),
            "kb_per_image": round(plan.bytes_per_image / 1024, 2),
        }
        if plan.cached and self.start_epoch < cfg.epochs and not self.stopped:
            # The cache pass is training time: it is counted, once, in train_seconds.
            seconds = self._cache_images(plan.block)
            self.train_seconds += seconds
            record["cache_seconds"] = round(seconds, 3)
        self._log(record)
        self._status(f"{model.method.name}: {path}")
        return plan.cached

    def _epoch_batches(self, epoch: int, drop_last: bool, use_cache: bool):
        """The epoch's batches (inputs, labels, global batch size or loader extra): cached frozen
        images, this rank's slices under torchrun, or the run's image loader."""
        if use_cache:
            return self._cached_batches(epoch, drop_last)
        if distributed.world_size() > 1:
            return self._sharded_batches(epoch, drop_last)
        return self._image_batches(self.cfg.seed * 1000 + epoch, drop_last)

    def _train_epoch(self, epoch: int, steps: int, drop_last: bool, use_cache: bool) -> None:
        """One epoch (0-based): its learning rate and seeds, every optimizer step, the loss records
        and divergence checks at the log points, and its time."""
        cfg, model = self.cfg, self.model
        lr = lr_at_epoch(cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        seed_everything(cfg.seed * 1000 + epoch)
        model.seed_draws(cfg.seed * 1000 + epoch)  # prompt and scale draws replay on resume
        sharded = distributed.world_size() > 1
        batches = self._epoch_batches(epoch, drop_last, use_cache)
        model.train()
        window = _LossWindow(self.device)
        watch = _DivergenceWatch(
            self.device, patience=DIVERGED_AFTER_SKIPS if self.scaler.is_enabled() else 1
        )
        step_clock = _StepClock(self.device)
        epoch_start = time.perf_counter()
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress, leave=False
        )
        batch_iter, step = iter(bar), 0
        while True:
            fetch = time.perf_counter()
            batch = next(batch_iter, None)
            waited = time.perf_counter() - fetch
            self.data_seconds += waited
            window.data_wait += waited
            if batch is None:
                break
            inputs, labels, extra = batch
            global_count = extra if sharded else len(labels)
            loss, parts = self._optimizer_step(inputs, labels, global_count, step_clock)
            self.images_seen += global_count
            window.add(loss, parts, global_count, share=len(labels) / global_count)
            step += 1
            watch.add(step, loss, parts)
            if step % cfg.log_every == 0 or step == steps:  # the only host syncs of the loop
                record = self._log_steps(window, watch, epoch, step, steps, lr)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
        if window.steps:  # a loader that yielded another number of batches than expected
            self._log_steps(window, watch, epoch, step, steps, lr)
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # once an epoch: the epoch's time includes its queued GPU work
        self.train_seconds += time.perf_counter() - epoch_start
        if self.step_seconds is not None:
            self.step_seconds += step_clock.settle()

    def _optimizer_step(
        self, inputs, labels: torch.Tensor, global_count: int, clock: _StepClock
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Forward, loss, backward (gradients averaged over the global batch) and update; the loss and
        its parts, left on the device."""
        model = self.model
        inputs = inputs.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        clock.begin()
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            logits = model(inputs)  # images, or FrozenImages entering at the first active block
            loss, parts = model.method.loss(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.params, len(labels), global_count)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        clock.end()
        return loss, parts

    def _log_steps(
        self,
        window: _LossWindow,
        watch: _DivergenceWatch,
        epoch: int,
        step: int,
        steps: int,
        lr: float,
    ) -> dict[str, Any]:
        """Record the loss window up to `step` and stop the run if it diverged; the record."""
        record = window.flush(time.perf_counter())
        self.last_loss = window.last_step_loss
        self._log(
            {
                "epoch": epoch + 1,
                "step": step,
                "global_step": epoch * steps + step,
                "lr": lr,
                **record,
            }
        )
        # At every log point, the epoch's last step included: no checkpoint holds weights gone bad.
        self._stop_if_diverged(watch, epoch + 1, step)
        return record

    def _end_epoch(self, epochs_done: int) -> None:
        """After an epoch: add it to the epoch average, validate, and write the checkpoint."""
        self._add_to_epoch_average(epochs_done)
        if self.cfg.validates:
            self._select(epochs_done)
        if self.out_dir:
            self.save_checkpoint(epochs_done)
            self.last_good_epoch = epochs_done

    def _finish(self, epochs_done: int) -> TrainResult:
        """Close the loader and the logs, put the weights the run ends with in place, and report."""
        cfg, model = self.cfg, self.model
        self._epoch_loader = self._epoch_sampler = None  # ends the loader's worker processes
        self.events.close()
        if cfg.keep == "best_val" and self.best_state is not None:
            model.method.load_state_dict(self.best_state)
        elif self.epoch_average is not None and epochs_done == cfg.epochs:
            # Every epoch's state weighed in: the average.
            model.method.load_state_dict(self.epoch_average)
        model.eval()
        return TrainResult(
            self.train_seconds,
            self.images_seen,
            self.last_loss,
            epochs_done,
            self.best_epoch if cfg.validates else None,
            self.best_val if cfg.validates else None,
            self.data_seconds,
            self.step_seconds,
        )
