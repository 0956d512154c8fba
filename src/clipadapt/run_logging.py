"""A run's records: log.jsonl, and the same numbers as TensorBoard event files in `tb/`, and curves.png.

One call writes a record to both (`RunLog.record`), so the curves TensorBoard shows are the lines of
log.jsonl. The global step of a scalar is the optimizer step counted from the run's start; a resumed
run opens its event files with `purge_step` set to its first step, so the steps of the interrupted
epoch (which reruns whole) are dropped from the curves as they are superseded in log.jsonl. Under
torchrun only rank 0 writes (the caller passes `write`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import yaml

from .errors import ClipadaptError

log = logging.getLogger(__name__)

TB_DIR = "tb"
CURVES_FILE = "curves.png"
# Keys of a step record that are not loss parts.
_STEP_KEYS = (
    "epoch",
    "step",
    "global_step",
    "lr",
    "loss",
    "steps_averaged",
    "images_per_s",
    "data_time_share",
)
EVAL_METRICS = ("base", "novel", "hm", "accuracy")


def tensorboard_available() -> bool:
    """Whether torch's SummaryWriter imports (it needs the tensorboard package, in a version torch accepts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def tensorboard_on(logger: str) -> bool:
    """Whether a run with this `logger` setting writes event files; tensorboard without the package is an error."""
    if logger == "none":
        return False
    if logger == "tensorboard" and not tensorboard_available():
        raise ClipadaptError(
            "logger=tensorboard needs the tensorboard package: pip install 'clipadapt[tensorboard]' "
            "(or logger=none)"
        )
    return tensorboard_available()


def _writer(out_dir: str, purge_step: int | None = None):
    # Deferred: loads torch and the optional tensorboard package; this module imports without them.
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=os.path.join(out_dir, TB_DIR), purge_step=purge_step)


def step_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of one log.jsonl step record (train/loss, train/<part>, train/lr, ...)."""
    scalars = {
        "train/loss": record["loss"],
        "train/lr": record["lr"],
        "train/images_per_s": record["images_per_s"],
    }
    if "data_time_share" in record:
        scalars["train/data_time_share"] = record["data_time_share"]
    for name, value in record.items():
        if (
            name not in _STEP_KEYS
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            scalars[f"train/{name}"] = value  # a loss part
    return scalars


class RunLog:
    """log.jsonl of a run folder, and its TensorBoard event files once `open_tensorboard` was called."""

    def __init__(self, out_dir: str | None, write: bool):
        self.out_dir, self.write = out_dir, bool(out_dir) and write
        self.writer = None
        self.last_step = 0

    def open_tensorboard(self, logger: str, first_step: int, settings: dict[str, Any]) -> None:
        """Start (or, after a resume, continue from `first_step`) the event files, when the setting says so."""
        if not self.write or not tensorboard_on(logger):
            return
        self.last_step = first_step - 1
        # Always purged from the first step: a run restarted before its first checkpoint also left events.
        self.writer = _writer(self.out_dir, purge_step=first_step)
        if first_step <= 1:
            self.writer.add_text("settings/training", _yaml_block(settings), 0)

    def record(self, record: dict[str, Any]) -> None:
        """Append a record to log.jsonl; its numbers go to TensorBoard too."""
        if not self.write:
            return
        with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if "global_step" in record:
            self.last_step = record["global_step"]
        if self.writer is None:
            return
        if "global_step" in record and "loss" in record:
            for tag, value in step_scalars(record).items():
                self.writer.add_scalar(tag, value, record["global_step"])
        elif record.get("event") == "validation":
            self.writer.add_scalar("val/accuracy", record["val_accuracy"], self.last_step)
            self.writer.add_scalar("val/best_accuracy", record["best_val_accuracy"], self.last_step)
        else:
            return
        self.writer.flush()  # a killed run keeps what it logged, as log.jsonl does

    def close(self) -> None:
        """Flush and close the event files."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _yaml_block(settings: dict[str, Any]) -> str:
    # TensorBoard's text plugin reads markdown: indent four spaces for a code block.
    return "\n".join(
        "    " + line for line in yaml.safe_dump(settings, sort_keys=False).splitlines()
    )


def read_log(out_dir: str) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def step_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step records that stand: a resumed run reran the interrupted epoch, whose later records replace the
    first ones (by global step), in step order."""
    latest: dict[int, dict] = {}
    for r in records:
        if "global_step" in r and "loss" in r:
            latest[r["global_step"]] = r
    return [latest[s] for s in sorted(latest)]


def scored_accuracies(metrics: dict[str, Any]) -> dict[str, float]:
    """Every accuracy a run's metrics.json holds, by name: base, novel, hm or accuracy, and for the transfer
    protocols the source, each target (listed in `targets`) and target_average."""

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    transfer = (
        ["source", *metrics.get("targets", []), "target_average"] if "targets" in metrics else []
    )
    found = {}
    for key in dict.fromkeys([*EVAL_METRICS, *transfer, *metrics]):
        value = metrics.get(key)
        if number(value) and (key in EVAL_METRICS or key in transfer):
            found[key] = float(value)
        elif isinstance(value, dict) and number(
            value.get("accuracy")
        ):  # an older layout: {target: {accuracy}}
            found[key] = float(value["accuracy"])
    return found


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The evaluation numbers of a run's metrics.json as TensorBoard tags: eval/base, ..., eval/<target>."""
    return {f"eval/{key}": value for key, value in scored_accuracies(metrics).items()}


def finish_run(out_dir: str, record: dict[str, Any], metrics: dict[str, Any], logger: str) -> None:
    """After a run is scored: its evaluation and settings (text and hparams) in the event files, and curves.png."""
    records = read_log(out_dir)
    steps = step_records(records)
    scores = final_metrics(metrics)
    if tensorboard_on(logger):
        # Deferred: loads torch and the optional tensorboard package.
        from torch.utils.tensorboard.summary import hparams

        last = steps[-1]["global_step"] if steps else 0
        writer = _writer(out_dir)
        for tag, value in scores.items():
            writer.add_scalar(tag, value, last)
        writer.add_text("settings/run", _yaml_block(record), last)
        flat = {
            k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
            for k, v in record.items()
            if v is not None and k != "data_root"
        }
        file_writer = writer._get_file_writer()
        for summary in hparams(flat, scores):
            file_writer.add_summary(summary, last)
        writer.close()
    write_curves(out_dir, steps, [r for r in records if r.get("event") == "validation"], scores)


def write_curves(
    out_dir: str, steps: list[dict], validations: list[dict], scores: dict[str, float]
) -> str | None:
    """curves.png: the training loss and the accuracies against epoch (for those without TensorBoard)."""
    try:  # deferred: matplotlib is slow to import and draws only when a run ends
        from matplotlib.figure import (
            Figure,  # the object API: no backend is chosen for the caller's process
        )
    except ImportError:
        return None
    if not steps:
        return None
    per_epoch: dict[int, int] = {}
    for r in steps:
        per_epoch[r["epoch"]] = max(per_epoch.get(r["epoch"], 0), r["step"])
    epoch_at = [r["epoch"] - 1 + r["step"] / per_epoch[r["epoch"]] for r in steps]
    fig = Figure(figsize=(9, 3.4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epoch_at, [r["loss"] for r in steps], label="loss")
    for part in sorted({k for r in steps for k in r if k not in _STEP_KEYS}):
        loss_ax.plot(
            epoch_at, [r.get(part, float("nan")) for r in steps], label=part, linewidth=0.8
        )
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend(fontsize=7)
    if validations:
        acc_ax.plot(
            [v["epoch"] for v in validations],
            [v["val_accuracy"] for v in validations],
            marker="o",
            label="val accuracy",
        )
    last_epoch = max(per_epoch)
    for tag, value in scores.items():
        acc_ax.plot(
            [last_epoch], [value], marker="s", linestyle="none", label=tag.removeprefix("eval/")
        )
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_xlim(0, last_epoch + 0.5)
    if validations or scores:
        acc_ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, CURVES_FILE)
    fig.savefig(path, dpi=100)
    return path
