"""What an evaluation of a saved adapter (or zero-shot CLIP) is, apart from where and how it runs.

`EvalSpec` holds what defines the numbers (the data, the split, the model); `EvalExecution` holds what
does not (device, batch size, workers, feature cache, progress, what else is written). The public
`clipadapt.evaluate(...)` and `clipadapt.transfer(...)` take their fields as keywords and build them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


def field_names(cls) -> tuple[str, ...]:
    """The field names of a dataclass, in order."""
    return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class EvalSpec:
    """One split of one dataset scored by zero-shot CLIP (`method`) or a saved adapter (`checkpoint`)."""

    dataset: str
    data_root: str
    method: str | None = None
    checkpoint: str | None = None
    split: str = "test"
    subsample: str = "all"
    shots: int = -1
    seed: int = 1
    backbone: str | None = None
    pretrained: str | None = None
    backbone_from_checkpoint: bool = False
    prompts: str | None = None


@dataclass(frozen=True)
class TransferSpec:
    """A source adapter scored, without training, under a cross-dataset or domain-generalization protocol."""

    checkpoint: str
    protocol: str
    data_root: str
    source: str | None = None
    shots: int = 16
    seed: int = 1
    backbone: str | None = None
    pretrained: str | None = None


@dataclass(frozen=True)
class EvalExecution:
    """Where and how an evaluation runs and what it writes besides metrics.json: not its numbers."""

    device: str = "cpu"
    batch_size: int = 100
    workers: int | None = None
    feature_cache: Any = True  # True the default folder, a path, False/None none, or a FeatureCache
    save_predictions: bool = False
    overwrite: bool = False
    progress: bool = True


TRANSFER_EXECUTION = tuple(n for n in field_names(EvalExecution) if n != "save_predictions")


def split_keywords(
    caller: str, keywords: dict[str, Any], spec_fields: tuple[str, ...], execution_fields
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keywords parted into the spec's and the execution's; one that is neither is refused as Python
    refuses an unknown keyword."""
    for key in keywords:
        if key not in spec_fields and key not in execution_fields:
            raise TypeError(f"{caller}() got an unexpected keyword argument '{key}'")
    what = {k: v for k, v in keywords.items() if k in spec_fields}
    how = {k: v for k, v in keywords.items() if k in execution_fields}
    return what, how
