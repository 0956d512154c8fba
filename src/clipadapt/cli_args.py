"""The arguments of every `clipadapt` sub-command: declarations only (types, defaults, help), no work.

`build_parser(commands)` binds each sub-command to its function in cli.py; building it imports no torch.
"""

from __future__ import annotations

import argparse

from . import __version__
from .checks import DEVICE_PATTERN
from .errors import ClipadaptError
from .registry import PROTOCOL_NAMES, dataset_names, describe_methods


class _Parser(argparse.ArgumentParser):
    """argparse with clipadapt's one-line errors (no usage block)."""

    def error(self, message: str):
        """Print one `clipadapt: error:` line and exit with 2."""
        self.exit(2, f"clipadapt: error: {message} (see '{self.prog} --help')\n")


def int_at_least(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got '{text}'"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (1e-3 notation accepted)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got '{text}'") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got '{text}'")
    return value


def shots_count(text: str) -> int:
    """An argparse type: -1 (every training image, as Dassl) or a count >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or (value != -1 and value < 1):
        raise argparse.ArgumentTypeError(
            f"expected -1 (every training image) or an integer >= 1, got '{text}'"
        )
    return value


def device_name(text: str) -> str:
    """An argparse type: cpu, cuda, cuda:N or mps (whether it exists is checked before the run)."""
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got '{text}'")
    return text


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone",
        default=None,
        help="open_clip model name (e.g. ViT-B-16), or 'synthetic' for the tiny CLIP shipped with "
        "clipadapt (default: the one recorded in --checkpoint, else synthetic)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (e.g. openai), a local checkpoint file, or 'none' for random "
        "weights (default: the shipped weights for 'synthetic', openai otherwise)",
    )
    p.add_argument(
        "--device", default="cpu", type=device_name, help="cpu, cuda, cuda:N or mps (default cpu)"
    )


def _add_prompts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompts",
        default=None,
        help="several prompts a class: 'openai80' (CLIP's 80 templates), a JSON file of per-class "
        'descriptions in CuPL\'s layout {"class": ["...", ...]} or of templates ["a photo of '
        "a {}.\", ...], a folder of <dataset>.json files, or 'none' for one template a class "
        "(default: the preset's, else one template; with --checkpoint: the recorded one)",
    )


def _add_data_args(p: argparse.ArgumentParser, loader_flags: bool = False) -> None:
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(dataset_names())}")
    p.add_argument(
        "--data-root",
        required=True,
        help="folder holding the datasets in CoOp's layout "
        "(for --dataset folder: the image folder itself)",
    )
    if loader_flags:  # train sets these as eval_batch_size=N workers=N, with the other settings
        p.add_argument(
            "--batch-size",
            type=int_at_least(1),
            default=100,
            help="evaluation batch size (default 100)",
        )
        p.add_argument(
            "--workers",
            type=int_at_least(0),
            default=None,
            help="data loading processes (default: one per core, at most 8)",
        )


def _add_feature_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--feature-cache",
        metavar="DIR",
        default=None,
        help="folder of the test images' frozen features, shared across runs by methods whose image "
        "tower is CLIP's own (default: $CLIPADAPT_CACHE/features, else "
        "$XDG_CACHE_HOME/clipadapt/features, else ~/.cache/clipadapt/features)",
    )
    p.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="neither read nor write cached test image features",
    )


def add_transfer_parser(sub, commands: dict) -> None:
    """`clipadapt transfer`: a trained source adapter on the cross-dataset or domain-generalization targets."""
    p = sub.add_parser(
        "transfer",
        help="evaluate a saved source adapter on cross-dataset or DG targets",
        description="Evaluate an adapter trained on a source dataset (all classes), without training, "
        "on the source's test set and on every target of the protocol; writes "
        "DIR/metrics.json as `train --protocol cross_dataset|domain_generalization` does.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="the source run's adapter.safetensors, an exported folder or a Hub id (hf-hub:USER/NAME)",
    )
    p.add_argument(
        "--protocol", required=True, choices=["cross_dataset", "domain_generalization", "dg"]
    )
    p.add_argument(
        "--source", help="the dataset it was trained on (default: read from the run's config.yaml)"
    )
    p.add_argument(
        "--data-root", required=True, help="folder holding the datasets in CoOp's layout"
    )
    p.add_argument(
        "--shots",
        type=shots_count,
        default=16,
        help="recorded shots when no config.yaml is beside the adapter",
    )
    p.add_argument(
        "--seed",
        type=int_at_least(0),
        default=1,
        help="recorded seed when no config.yaml is beside the adapter",
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=100,
        help="evaluation batch size (default 100)",
    )
    p.add_argument(
        "--workers",
        type=int_at_least(0),
        default=None,
        help="data loading processes (default: one per core, at most 8)",
    )
    p.add_argument("--backbone", default=None, help="override the backbone recorded in the adapter")
    p.add_argument("--pretrained", default=None, help="with --backbone: its weights")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", required=True, help="output folder for metrics.json")
    _add_feature_cache_args(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace a finished evaluation in --out"
    )
    p.set_defaults(func=commands["transfer"])


def add_report_parser(sub, commands: dict) -> None:
    """`clipadapt report DIR`."""
    p = sub.add_parser(
        "report",
        help="the papers' tables from a folder of runs (mean ± std over seeds)",
        description="Find every run under DIR (metrics.json; failed.json from a sweep), average over "
        "seeds and write report.md, report.csv, report.json and PNG plots for each "
        "protocol present. Missing and failed runs are listed, never averaged over.",
    )
    p.add_argument("dir", metavar="DIR", help="a folder of runs, e.g. a sweep's --out")
    p.add_argument("--out", help="where to write the report (default DIR)")
    p.add_argument("--methods", help="comma-separated row order (default: alphabetical)")
    p.add_argument("--datasets", help="comma-separated dataset order (default: alphabetical)")
    p.add_argument(
        "--references",
        action="store_true",
        help="print published numbers beside ours, with sources",
    )
    p.set_defaults(func=commands["report"])


def add_sweep_parser(sub, commands: dict) -> None:
    """`clipadapt sweep FILE --out DIR`."""
    p = sub.add_parser(
        "sweep",
        help="run a grid of runs (methods x datasets x seeds x shots) from a YAML file",
        description="Run every run of a sweep file, or of a sweep shipped with clipadapt by name "
        "(`--list`), as `clipadapt train` would, into "
        "OUT/<protocol>/<method>/<dataset>/shots<K>/seed<S>/. Finished runs are skipped, "
        "interrupted ones resume, failures are recorded (failed.json) and do not stop "
        "the others. Then `clipadapt report OUT`.",
    )
    p.add_argument(
        "file",
        metavar="FILE.yaml|NAME",
        nargs="?",
        help="the sweep file, or a shipped sweep's name (base2novel, studies/rmma_ablation, ...)",
    )
    p.add_argument(
        "--list", action="store_true", help="list the sweeps shipped with clipadapt and stop"
    )
    p.add_argument("--out", help="output folder of the sweep (required unless --list)")
    p.add_argument(
        "--data-root", help="folder of the datasets (default: the sweep file's data_root)"
    )
    p.add_argument(
        "--jobs", type=int_at_least(1), default=1, help="runs at once (default 1: in this process)"
    )
    p.add_argument(
        "--device",
        help="torch device of every run (default: the sweep file's, else cpu); with cuda "
        "and --jobs N each run is pinned to one GPU (CUDA_VISIBLE_DEVICES)",
    )
    p.add_argument(
        "--gpus", help="comma-separated GPU ids to spread runs over (default: all visible)"
    )
    p.add_argument(
        "--launcher",
        default="local",
        choices=["local", "slurm", "submitit-local"],
        help="local (default); slurm: one SLURM job array (a task per run, --jobs at once) through "
        "submitit; submitit-local: "
        "submitit's local executor (for testing a cluster setup)",
    )
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument(
        "--time", type=int, default=60, help="SLURM time limit per run in minutes (default 60)"
    )
    p.add_argument("--gpus-per-job", type=int, default=1, help="SLURM GPUs per run (default 1)")
    p.add_argument("--cpus-per-job", type=int, default=8, help="SLURM CPUs per run (default 8)")
    p.add_argument(
        "--variants", help="a study: run only these comma-separated variants (default: all)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what each run would do (skip, rerun or start, and "
        "why) and its `clipadapt` command, and with --launcher slurm the job array; then stop",
    )
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="rerun the finished runs whose recorded settings "
        "(config.yaml) differ from the sweep's now (without it the sweep refuses them)",
    )
    _add_feature_cache_args(p)
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings for every run (e.g. epochs=1)"
    )
    p.set_defaults(func=commands["sweep"])


def add_datasets_parser(sub, commands: dict) -> None:
    """`clipadapt datasets --data-root DIR`."""
    p = sub.add_parser(
        "datasets",
        help="check which CoOp datasets a data root holds, and what is missing",
        description="For every CoOp dataset (or those given): complete, with its classes and "
        "train/val/test counts, or the exact missing file or folder and where CoOp's "
        "DATASETS.md gets it, and images listed in a split file that are not on disk. "
        "Exit code 0 only when every dataset asked for is complete.",
    )
    p.add_argument(
        "--data-root", required=True, help="folder holding the datasets in CoOp's layout"
    )
    p.add_argument("--dataset", help="comma-separated datasets to check (default: all 15)")
    p.set_defaults(func=commands["datasets"])


def _add_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the official checkpoint file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument(
        "--backbone", default="ViT-B-16", help="the backbone it was trained on (default ViT-B-16)"
    )
    p.add_argument(
        "--pretrained", default="openai", help="its weights (default openai, as the official code)"
    )
    p.add_argument(
        "--classes",
        help="comma-separated class names it was trained on (recorded; methods whose inference "
        "differs on the classes they were trained on read them)",
    )
    p.add_argument(
        "--classes-file", help="file with the class names it was trained on, one per line"
    )


def build_import_alias_parser(
    command: str, method: str, options: list[tuple[str, object, object]], convert
) -> argparse.ArgumentParser:
    """The parser of `clipadapt import-NAME`: `import --method NAME` with each of the importer's `options`
    (name, default, declared type) as a flag; `convert(name, text, type)` reads a flag's value."""
    p = _Parser(
        prog=f"clipadapt {command}",
        description=f"Read a checkpoint of the official {method} code and write a clipadapt adapter "
        f"file: `clipadapt import --method {method}` with the importer's options as flags "
        "(their defaults are the method's).",
    )
    _add_import_args(p)
    for name, default, declared in options:

        def parse(text: str, name=name, declared=declared):
            try:
                return convert(name, text, declared)
            except ClipadaptError as err:  # argparse's error names the flag
                raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None

        shown = "none" if default is None else default
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=parse,
            default=None,
            help=f"{method}'s option {name} (default {shown})",
        )
    return p


def build_parser(commands: dict) -> argparse.ArgumentParser:
    """The argument parser with every sub-command, each bound to its function in `commands` (by name)."""
    methods = describe_methods()  # entry-point metadata only: no method module is imported
    parser = _Parser(
        prog="clipadapt",
        description="Few-shot adaptation of CLIP with multimodal adapters. Sub-commands evaluate, train, "
        "inspect and apply adapters; `clipadapt COMMAND --help` explains each.",
    )
    parser.add_argument("--version", action="version", version=f"clipadapt {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="also show other libraries' log messages"
    )
    verbosity.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no status lines or progress bars: results, warnings and errors only",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "eval",
        help="evaluate zero-shot CLIP or a saved adapter on a dataset",
        description="Evaluate a method on the test (or validation) split of a dataset and write DIR/metrics.json "
        "(accuracy in percent, number of images, dataset, subsample, method, backbone).",
    )
    p.add_argument(
        "--method",
        help=f"one of: {methods} (default zeroshot; with --checkpoint: "
        "the adapter's own, which a different --method contradicts)",
    )
    p.add_argument(
        "--checkpoint",
        help="a saved adapter (.safetensors, an exported folder or hf-hub:USER/NAME) to evaluate instead of --method",
    )
    p.add_argument(
        "--backbone-from-checkpoint",
        action="store_true",
        help="with --checkpoint: load the backbone recorded in the adapter file",
    )
    _add_data_args(p, loader_flags=True)
    p.add_argument(
        "--subsample",
        default="all",
        choices=["all", "base", "new"],
        help="classes to evaluate on: all, the base half or the new half (default all)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="the split scored: test, or val for choosing settings (default test)",
    )
    p.add_argument(
        "--shots",
        type=shots_count,
        default=-1,
        help="with --split val: Dassl's min(K,4)-shot validation draw of `train --shots K` "
        "(default -1: the whole validation split)",
    )
    p.add_argument("--seed", type=int_at_least(0), default=1, help="seed of that draw (default 1)")
    _add_backbone_args(p)
    _add_prompts_arg(p)
    p.add_argument("--out", required=True, help="output folder for metrics.json")
    _add_feature_cache_args(p)
    p.add_argument("--save-predictions", action="store_true", help="also write DIR/predictions.csv")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.set_defaults(func=commands["eval"])

    p = sub.add_parser(
        "train",
        help="train a method under a protocol, then evaluate it",
        description="Train on the few-shot split (base classes for base2novel), evaluate, and write "
        "DIR/metrics.json, DIR/adapter.safetensors, DIR/config.yaml and DIR/log.jsonl. "
        "Rerunning an interrupted run with the same command resumes it.",
    )
    p.add_argument("--method", required=True, help=f"one of: {methods}")
    _add_data_args(p)
    p.add_argument(
        "--shots",
        type=shots_count,
        default=16,
        help="images per class for training (default 16; -1: every training image, as Dassl)",
    )
    p.add_argument(
        "--seed",
        type=int_at_least(0),
        default=1,
        help="seed of the few-shot draw and of training (default 1)",
    )
    p.add_argument(
        "--protocol",
        default=None,
        choices=PROTOCOL_NAMES,
        help="base2novel: train on base classes, test base and novel; fewshot: all classes; "
        "cross_dataset: all classes, test on the source and on other datasets (imagenet, syn_*); "
        "domain_generalization (dg): all classes, test on the source and its shifted domains "
        "(imagenet, syn_objects) (default: fewshot for --dataset folder, base2novel otherwise)",
    )
    _add_backbone_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--config",
        default=None,
        help="YAML settings file, a shipped preset's name (e.g. synthetic/mma.yaml), or 'none' for the "
        "method's own defaults (default: the method's preset for the protocol and backbone, from the "
        "presets/ folder beside its module: clipadapt/presets/ for the built-ins); key=value "
        "arguments override it",
    )
    _add_prompts_arg(p)
    p.add_argument(
        "--base-ratio",
        default=None,
        metavar="B:N",
        help="base2novel: base to novel classes, the first C - floor(C*N/(B+N)) sorted classes are base "
        "(default 1:1, CoOp's ceil(C/2); the same as the base_ratio=B:N setting)",
    )
    p.add_argument(
        "--study",
        default=None,
        help="the study this run belongs to (recorded for `clipadapt report`)",
    )
    p.add_argument(
        "--variant", default=None, help="the study's variant this run is (its row in the report)"
    )
    _add_feature_cache_args(p)
    p.add_argument(
        "--overwrite", action="store_true", help="discard a finished or interrupted run in --out"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="method options (e.g. scale=0.001) or training settings (e.g. epochs=5 lr=2e-3 "
        "workers=4 eval_batch_size=100)",
    )
    p.set_defaults(func=commands["train"])

    add_transfer_parser(sub, commands)
    add_report_parser(sub, commands)
    add_sweep_parser(sub, commands)
    add_datasets_parser(sub, commands)

    p = sub.add_parser(
        "info",
        help="trainable parameter count of a method on a backbone",
        description="Build a method on a backbone (random weights) and print its trainable parameters.",
    )
    p.add_argument("--method", required=True, help=f"one of: {methods}")
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    p.add_argument("--json", action="store_true", help="print JSON (key trainable_params)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="method options")
    p.set_defaults(func=commands["info"])

    p = sub.add_parser(
        "predict",
        help="classify images against any class names",
        description="Print the top classes of each image. The class names may be ones the adapter "
        "never saw in training.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument(
        "--checkpoint",
        help="a saved adapter (file, exported folder or hf-hub:USER/NAME); without it, zero-shot CLIP",
    )
    p.add_argument(
        "--classes",
        help="comma-separated class names (default with --checkpoint: the classes "
        "it was trained on)",
    )
    p.add_argument("--classes-file", help="a file with one class name a line")
    p.add_argument(
        "--top-k", type=int_at_least(1), default=5, help="classes to print per image (default 5)"
    )
    _add_prompts_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument(
        "--backbone", default=None, help="override the backbone recorded in the checkpoint"
    )
    p.add_argument(
        "--pretrained", default=None, help="override the weights recorded in the checkpoint"
    )
    p.add_argument(
        "--device", default="cpu", type=device_name, help="cpu, cuda, cuda:N or mps (default cpu)"
    )
    p.set_defaults(func=commands["predict"])

    p = sub.add_parser(
        "import",
        help="convert a checkpoint of a method's official code (also: import-NAME)",
        description="Read a checkpoint saved by a method's official code (Dassl's model.pth.tar-N, "
        "CLIP-LoRA's save_lora .pt, ...) and write a clipadapt adapter file. key=value "
        "arguments are the importer's options (the method's reader declares them; options it "
        "does not fix default to the method's config). `clipadapt import-NAME PATH --out FILE` "
        "(NAME: the method's name, '-' for '_') is the same command for that method, with the "
        "importer's options as flags (`clipadapt import-NAME --help` lists them).",
    )
    _add_import_args(p)
    p.add_argument(
        "--method",
        required=True,
        help="the method that saved it (any method whose class has an official_adapter reader)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="the importer's options")
    p.set_defaults(func=commands["import"], import_method=None)

    p = sub.add_parser(
        "export",
        help="write a finished run as a Hugging Face Hub-ready folder",
        description="Copy a finished run's adapter into a new folder with config.json (method "
        "options, backbone identity, run settings) and a README.md model card; upload "
        "it with `hf upload USER/NAME DIR`, load it with "
        "--checkpoint DIR or --checkpoint hf-hub:USER/NAME.",
    )
    p.add_argument("run", help="the run folder (train --out)")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    p.set_defaults(func=commands["export"])

    p = sub.add_parser(
        "pretrain-synthetic",
        help="pretrain the tiny CLIP on the synthetic world",
        description="Contrastive pretraining of the shipped tiny CLIP (under an hour on 2 CPU "
        "cores with the defaults); writes weights, the training log and its zero-shot "
        "accuracy on the synthetic datasets. Rerun the same command to resume.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--steps", type=int_at_least(1), default=5000, help="optimizer steps (default 5000)"
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(2),
        default=128,
        help="image-caption pairs per step (default 128)",
    )
    p.add_argument(
        "--pool-size",
        type=int_at_least(1),
        default=24000,
        help="scenes rendered up front, per kind: random scenes, shape groups, other groups (default 24000)",
    )
    p.add_argument(
        "--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)"
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="copy the result into the package (src/clipadapt/weights)",
    )
    p.set_defaults(func=commands["pretrain-synthetic"])

    p = sub.add_parser(
        "demo",
        help="run the whole job on generated data, no download needed",
        description="Generate a small dataset, run the methods on it and print a report.",
    )
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--quick", action="store_true", help="a reduced size, for tests")
    p.add_argument("--overwrite", action="store_true", help="replace a finished demo in --out")
    p.set_defaults(func=commands["demo"])
    return parser
