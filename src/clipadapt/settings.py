"""The training settings of a run, free of torch: what `TrainConfig` holds, its types and its defaults.

The command line, the sweep's planning and the report read these settings without loading the
training engine (`clipadapt.engine`, which imports torch); the engine trains with them. A method's
paper values come from its `training_defaults`; `clipadapt.runconfig` merges them with a preset and
key=value overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from .validation import check_fields

Optimizer = Literal["sgd", "adamw", "adam"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
Schedule = Literal["cosine", "constant"]
Keep = Literal["last", "best_val"]
EvalSplit = Literal["test", "val"]
Logger = Literal["auto", "tensorboard", "none"]  # auto: TensorBoard when the package is installed
# Memory (MB) each frozen-prefix cache may take by default (clipadapt.frozen_cache; 0: no cache).
DEFAULT_BUDGET_MB = 4096


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
    warmup_epochs: int = (
        0  # constant-lr warm-up epochs before the cosine schedule (Dassl's "constant")
    )
    warmup_lr: float = 1e-5
    schedule: Schedule = "cosine"  # cosine (Dassl's, stepped per epoch) | constant
    patience: int = (
        0  # early stopping: stop after this many epochs without a better val accuracy (0: off)
    )
    keep: Keep = "last"  # the weights a run ends with: last (the papers' default) | best_val (best val epoch)
    precision: Precision = (
        "auto"  # auto: fp16 with gradient scaling on CUDA (the papers' AMP), fp32 on CPU
    )
    augment: bool = True  # CoOp's random resized crop and flip
    # Data settings of the studies (carried here so that every run records them in config.yaml):
    base_ratio: str | int = (
        "1:1"  # base2novel (int: only to name YAML's reading of an unquoted 4:1 in the error): B:N, the first C - floor(C·N/(B+N)) sorted classes are base
    )
    train_noise_std: float = (
        0.0  # σ of Gaussian noise added to normalised training images (fresh each load)
    )
    eval_noise_std: float = 0.0  # σ of fixed per-image noise on the validation and test images
    # The split a run scores when it ends: test (the papers' tables), or val to choose settings with a
    # sweep without ever reading the test images (base2novel and fewshot runs).
    eval_split: EvalSplit = "test"
    seed: int = 1
    workers: int | None = None  # data loading processes; None: one per core, at most 8
    eval_batch_size: int = 100
    # Memory (MB) each frozen-prefix cache may take: the training images' tokens below the method's
    # first active block (augmentation off), the class prompts' below its first text block. Above
    # it the frozen blocks are recomputed every batch; 0 turns the caches off.
    prefix_cache_mb: float = DEFAULT_BUDGET_MB
    # TensorBoard event files in the run's tb/ (auto: when the tensorboard package is installed) | none
    logger: Logger = "auto"
    log_every: int = 10  # steps between loss records (and the last step of each epoch); the loss stays on device between

    def __post_init__(self):
        check_fields(
            self, "training setting"
        )  # types and ranges (validation.RANGES), for CLI, YAML and Python

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
