"""The `clipadapt` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from . import __version__
from .errors import ClipadaptError

log = logging.getLogger("clipadapt")


def _add_backbone_args(p: argparse.ArgumentParser, default_backbone: str = "ViT-B-16",
                       default_pretrained: str = "openai") -> None:
    p.add_argument("--backbone", default=default_backbone,
                   help=f"open_clip model name, or 'synthetic' for the shipped tiny CLIP (default {default_backbone})")
    p.add_argument("--pretrained", default=default_pretrained,
                   help="open_clip pretrained tag, a local checkpoint file, or 'none' for random weights "
                        f"(default {default_pretrained})")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from .data import known_datasets

    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(known_datasets())}")
    p.add_argument("--data-root", required=True, help="folder holding the datasets in CoOp's layout "
                                                      "(for --dataset folder: the image folder itself)")
    p.add_argument("--batch-size", type=int, default=100, help="evaluation batch size (default 100)")
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")


def _prepare_out(out: str, overwrite: bool) -> None:
    if os.path.exists(os.path.join(out, "metrics.json")) and not overwrite:
        raise ClipadaptError(f"'{out}' already holds a finished run (metrics.json); "
                             "pass --overwrite to replace it or choose another --out")
    os.makedirs(out, exist_ok=True)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate zero-shot CLIP or a saved adapter on one split of a dataset."""
    from .data import build_dataset
    from .evaluation import evaluate, write_predictions
    from .fileio import write_json
    from .model import build_model, load_model

    _prepare_out(args.out, args.overwrite)
    data = build_dataset(args.dataset, args.data_root, shots=-1, subsample=args.subsample)
    if not data.test:
        raise ClipadaptError(f"dataset '{args.dataset}' has no test images for subsample '{args.subsample}'")
    if args.checkpoint:
        model = load_model(args.checkpoint, data.classnames, device=args.device,
                           backbone=None if args.backbone_from_checkpoint else args.backbone,
                           pretrained=None if args.backbone_from_checkpoint else args.pretrained)
        model.set_classes(data.classnames, data.template)
        method = model.method.name
    else:
        model = build_model(args.method, data.classnames, args.backbone, args.pretrained,
                            template=data.template, device=args.device)
        method = args.method
    start = time.time()
    result = evaluate(model, data.test, args.batch_size, args.workers, args.device,
                      desc=f"{args.dataset}/{args.subsample}")
    metrics = {
        "accuracy": round(result.accuracy, 4), "num_images": result.num_images, "dataset": args.dataset,
        "subsample": args.subsample, "method": method, "backbone": model.backbone.name,
        "pretrained": str(args.pretrained), "backbone_identity": model.backbone.identity,
        "num_classes": data.num_classes, "prompt_template": model.template,
        "checkpoint": args.checkpoint, "eval_seconds": round(time.time() - start, 2), "clipadapt": __version__,
    }
    if args.save_predictions:
        write_predictions(os.path.join(args.out, "predictions.csv"), data.test, result)
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(json.dumps({k: metrics[k] for k in ("dataset", "subsample", "method", "accuracy", "num_images")}))
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo on generated data."""
    from .demo import run_demo

    return run_demo(args.out, quick=args.quick, overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    from .methods import METHODS

    parser = argparse.ArgumentParser(
        prog="clipadapt",
        description="Few-shot adaptation of CLIP with multimodal adapters. Sub-commands evaluate, train, "
                    "inspect and apply adapters; `clipadapt COMMAND --help` explains each.")
    parser.add_argument("--version", action="version", version=f"clipadapt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("eval", help="evaluate zero-shot CLIP or a saved adapter on a dataset",
                       description="Evaluate a method on the test split of a dataset and write DIR/metrics.json "
                                   "(accuracy in percent, number of images, dataset, subsample, method, backbone).")
    p.add_argument("--method", default="zeroshot", help=f"one of: {', '.join(METHODS)} (default zeroshot)")
    p.add_argument("--checkpoint", help="a saved adapter (.safetensors) to evaluate instead of --method")
    p.add_argument("--backbone-from-checkpoint", action="store_true",
                   help="with --checkpoint: load the backbone recorded in the adapter file")
    _add_data_args(p)
    p.add_argument("--subsample", default="all", choices=["all", "base", "new"],
                   help="classes to evaluate on: all, the base half or the new half (default all)")
    _add_backbone_args(p)
    p.add_argument("--out", required=True, help="output folder for metrics.json")
    p.add_argument("--save-predictions", action="store_true", help="also write DIR/predictions.csv")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="run the whole job on generated data, no download needed",
                       description="Generate a small dataset, run the methods on it and print a report.")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--quick", action="store_true", help="a reduced size, for tests")
    p.add_argument("--overwrite", action="store_true", help="replace a finished demo in --out")
    p.set_defaults(func=cmd_demo)
    return parser


def _error_message(err: BaseException) -> str:
    # Errors raised in DataLoader workers come back with the worker's traceback in the message.
    text = str(err).strip().splitlines()
    last = text[-1] if text else type(err).__name__
    return last.split(": ", 1)[1] if last.startswith(type(err).__name__ + ":") else last


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a sub-command, turning user errors into one line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(message)s")
    if not args.command:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ClipadaptError as err:
        print(f"clipadapt: error: {_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
