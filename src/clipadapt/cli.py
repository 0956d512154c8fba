"""The `clipadapt` command: argument parsing and printing; the work is the library's (clipadapt.run and
the modules it calls), and nothing in the library imports this module.

Building the parser imports nothing heavy: the modules imported at the top are torch-free
(tests/test_torch_boundary.py names them); the two commands that train at once (`pretrain`, `demo`)
import theirs when they run. Every user error ends in one line `clipadapt: error: ...` on stderr
and exit code 2, whether argparse, a pre-run check or the library finds it; results go to stdout,
status lines and progress to stderr (`-q` keeps only warnings, `-v` adds other libraries' messages).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .adapters import export_run, import_official
from .checks import check_run_names
from .cli_args import build_parser as declare
from .data.check import check_data_root, format_state
from .data.coop import COOP_DATASETS
from .errors import ClipadaptError, one_line
from .report import scored_text, write_report
from .run import (
    SETTING_ARGUMENTS,
    check_class_names,
    check_settings,
    evaluate,
    method_info,
    predict,
    read_class_names,
    train,
    transfer,
)
from .runconfig import parse_overrides
from .runspec import RunSpec
from .sweep import (
    describe_sweeps,
    dry_run_lines,
    locate_sweep_file,
    read_sweep,
    run_sweep,
    select_variants,
)


# ---- output --------------------------------------------------------------------------------------
class _StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (a test's captured stream, a redirected one)."""

    @property
    def stream(self):
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


def configure_logging(verbose: bool, quiet: bool) -> None:
    """clipadapt's status lines on stderr (-q: warnings only); -v adds every library's messages."""
    package = logging.getLogger("clipadapt")
    for handler in [h for h in package.handlers if isinstance(h, _StderrHandler)]:
        package.removeHandler(
            handler
        )  # main() may run several times in one process (tests, a sweep)
    handler = _StderrHandler()
    handler.setFormatter(_LineFormatter())
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    # Our lines reach our handler only: a root handler (open_clip's factory calls logging.basicConfig on
    # its first message) would print each of them a second time.
    package.propagate = False
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.setLevel(
        logging.INFO if verbose else logging.ERROR
    )  # other libraries: errors only, unless -v
    if verbose:
        others = _StderrHandler()
        others.addFilter(lambda record: not record.name.startswith("clipadapt"))
        others.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(others)


def _feature_cache(args: argparse.Namespace):
    """The run API's feature_cache setting from --feature-cache DIR / --no-feature-cache."""
    if args.no_feature_cache and args.feature_cache:
        raise ClipadaptError(
            "--feature-cache DIR and --no-feature-cache contradict each other; give one"
        )
    return False if args.no_feature_cache else (args.feature_cache or True)


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _print_json(metrics: dict, keys) -> None:
    line = {k: metrics[k] for k in keys if k in metrics}
    if metrics.get("scored"):  # what each number was measured on: images and classes per split
        line["scored"] = scored_text(metrics)
    print(json.dumps(line))


# ---- commands ------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate zero-shot CLIP or a saved adapter on one split of a dataset."""
    metrics = evaluate(
        args.dataset,
        args.data_root,
        args.out,
        method=args.method,
        checkpoint=args.checkpoint,
        split=args.split,
        subsample=args.subsample,
        shots=args.shots,
        seed=args.seed,
        backbone=args.backbone,
        pretrained=args.pretrained,
        backbone_from_checkpoint=args.backbone_from_checkpoint,
        prompts=args.prompts,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        feature_cache=_feature_cache(args),
        save_predictions=args.save_predictions,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _print_json(metrics, ("dataset", "split", "subsample", "method", "accuracy", "num_images"))
    return 0


RESULT_KEYS = {
    "base2novel": ("base", "novel", "hm"),
    "fewshot": ("accuracy",),
}  # others: source, target_average


def cmd_train(args: argparse.Namespace) -> int:
    """Train a method under a protocol and evaluate it; resumes an interrupted run in the same folder."""
    check_run_names(
        args.method, args.dataset, args.protocol
    )  # before the settings' types pull in torch

    settings = parse_overrides(args.overrides)
    check_settings(settings)
    run = {name: getattr(args, name) for name in RunSpec.argument_names()}  # a flag each
    for key in SETTING_ARGUMENTS & set(
        settings
    ):  # prompts=... and base_ratio=... are their flags' settings
        if run[key] is not None:
            flag = "--" + key.replace("_", "-")
            raise ClipadaptError(f"{flag} and {key}=... contradict each other; give one")
        run[key] = settings.pop(key)
    metrics = train(
        out=args.out,
        device=args.device,
        feature_cache=_feature_cache(args),
        overwrite=args.overwrite,
        progress=not args.quiet,
        **run,
        **settings,
    )
    if metrics:  # under torchrun only rank 0 has results
        shown = RESULT_KEYS.get(metrics["protocol"], ("source", "target_average"))
        _print_json(
            metrics,
            (*shown, "trainable_params", "train_step_ms_per_image", "train_epoch_ms_per_image"),
        )
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """Evaluate a saved source adapter, without training, on the targets of cross_dataset or domain_generalization."""
    metrics = transfer(
        args.checkpoint,
        args.protocol,
        args.data_root,
        args.out,
        source=args.source,
        shots=args.shots,
        seed=args.seed,
        backbone=args.backbone,
        pretrained=args.pretrained,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        feature_cache=_feature_cache(args),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _print_json(metrics, ("protocol", "method", "dataset", "source", "target_average"))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a method's trainable parameter count on a backbone."""

    info = method_info(args.method, args.backbone, **parse_overrides(args.overrides))
    if args.json:
        print(json.dumps(info))
        return 0
    print(
        f"method {info['method']} on {info['backbone']}: {info['trainable_params']:,} trainable parameters"
    )
    for key, value in info["config"].items():
        print(f"  {key}: {value}")
    return 0


def _class_names(args: argparse.Namespace) -> list[str] | None:
    """The class names --classes or --classes-file give (None when neither)."""
    if args.classes_file and args.classes is not None:
        raise ClipadaptError("--classes and --classes-file contradict each other; give one")
    if args.classes_file:
        return check_class_names(
            read_class_names(args.classes_file), f"class file '{args.classes_file}'"
        )
    if args.classes is not None:
        return check_class_names(_split(args.classes) or [], "--classes")
    return None


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images against any class names with a saved adapter (or zero-shot CLIP)."""
    for result in predict(
        args.images,
        _class_names(args),
        args.checkpoint,
        args.top_k,
        args.prompts,
        args.backbone,
        args.pretrained,
        args.device,
    ):
        if args.json:
            print(json.dumps(result))
        else:
            print(
                result["image"]
                + ": "
                + ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in result["top"])
            )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Convert a checkpoint of a method's official code into a clipadapt adapter file."""

    method = args.import_method or args.method
    # `import --method M` takes the reader's options as key=value; `import-M` as flags (those given).
    options = (
        {k: v for k, v in args.import_options.items() if v is not None}
        if args.import_method
        else parse_overrides(args.overrides)
    )
    written = import_official(
        method,
        args.path,
        args.out,
        args.backbone,
        args.pretrained,
        classnames=_class_names(args) or [],
        **options,
    )
    config = written["config"]
    if "adapter_dim" in config:
        shape = f"blocks {config['adapter_start']}-{config['adapter_end']}, width {config['adapter_dim']}"
    elif "rep_layers" in config:
        shape = (
            f"{config['n_rep_tokens']} tokens of width {config['rep_dim']} on blocks "
            f"{config['rep_layers'][0]}-{config['rep_layers'][-1]}"
        )
    else:
        shape = ", ".join(f"{k} {v}" for k, v in config.items() if v not in (None, "", [], {}))
    print(
        f"wrote {args.out}: {method}, {shape}, {written['parameters']:,} parameters, "
        f"for {args.backbone} ({args.pretrained})",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a finished run as a Hub-ready folder (adapter, config.json, model card)."""
    written = export_run(args.run, args.out)
    print(
        f"wrote {args.out}: {', '.join(written['files'])} ({written['method']}); upload it with "
        f"`hf upload USER/NAME {args.out}`",
        file=sys.stderr,
    )
    return 0


def cmd_pretrain_synthetic(args: argparse.Namespace) -> int:
    """Pretrain the tiny CLIP on the synthetic world, record its zero-shot accuracy, optionally install it."""
    # Deferred: loads torch, which this module's import must not.
    from .synthetic.pretrain import pretrain_and_record

    record = pretrain_and_record(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        lr=args.lr,
        install=args.install,
    )
    print(json.dumps(record["zero_shot"], indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo on generated data."""
    # Deferred: loads torch, which this module's import must not.
    from .demo import run_demo

    result = run_demo(args.out, quick=args.quick, overwrite=args.overwrite)
    print(result.text)
    if result.failed:
        raise ClipadaptError(
            f"{len(result.failed)} demo run(s) failed, e.g. {next(iter(result.failed.items()))}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Aggregate the finished runs under a folder into the papers' tables."""
    out = args.out or args.dir
    print(
        write_report(
            args.dir, out, _split(args.methods), _split(args.datasets), references=args.references
        )
    )
    print(f"wrote {os.path.join(out, 'report.md')}, report.csv, report.json")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep file's grid of runs under one folder; exit 1 when a run failed."""
    if args.list:
        for name, text in describe_sweeps():
            print(f"{name:40s} {text}")
        return 0
    if not args.file or not args.out:
        raise ClipadaptError(
            "give a sweep file (or a shipped sweep's name, see --list) and --out DIR"
        )

    sweep = read_sweep(locate_sweep_file(args.file), parse_overrides(args.overrides))
    if args.variants:
        sweep = select_variants(sweep, _split(args.variants))
    sweep.feature_cache = _feature_cache(args)
    slurm = {
        "partition": args.partition,
        "time": args.time,
        "gpus": args.gpus_per_job,
        "cpus": args.cpus_per_job,
    }
    if args.dry_run:
        print(
            "\n".join(
                dry_run_lines(
                    sweep,
                    args.out,
                    args.data_root,
                    args.jobs,
                    args.device,
                    args.launcher,
                    slurm,
                    args.rerun_changed,
                )
            )
        )
        return 0
    result = run_sweep(
        sweep,
        args.out,
        args.data_root,
        args.jobs,
        args.device,
        args.gpus,
        args.launcher,
        slurm,
        progress=not args.quiet,
        rerun_changed=args.rerun_changed,
    )
    print(
        f"{result.total} runs: {result.skipped} already finished, {result.finished} finished now, "
        f"{len(result.failed)} failed"
    )
    for run_dir, error in result.failed.items():
        print(f"  FAILED {run_dir}: {error}")
    print(f"tables: clipadapt report {args.out}")
    return 1 if result.failed else 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """List each CoOp dataset's state under a data root; exit 0 only when every one asked for is complete."""

    states = check_data_root(args.data_root, _split(args.dataset))
    for state in states:
        print("\n".join(format_state(state)))
    done = sum(s.complete for s in states)
    print(
        f"{done} of {len(states)} datasets complete under {os.path.abspath(os.path.expanduser(args.data_root))}"
        + (
            ""
            if all(s.complete or s.name not in COOP_DATASETS for s in states)
            else "; see github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
        )
    )
    return 0 if done == len(states) else 1


# ---- entry point ---------------------------------------------------------------------------------
COMMANDS = {
    "eval": cmd_eval,
    "train": cmd_train,
    "transfer": cmd_transfer,
    "report": cmd_report,
    "sweep": cmd_sweep,
    "datasets": cmd_datasets,
    "info": cmd_info,
    "predict": cmd_predict,
    "import": cmd_import,
    "pretrain-synthetic": cmd_pretrain_synthetic,
    "demo": cmd_demo,
    "export": cmd_export,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command (declared in cli_args)."""
    return declare(COMMANDS)


IMPORT_ALIAS = "import-"


def _import_alias(argv: list[str]) -> argparse.Namespace | None:
    """`clipadapt [-v|-q] import-NAME ...` parsed as `import --method NAME` with the importer's options as
    flags, their defaults the method's config; None for any other command line."""
    position = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if position is None or not argv[position].startswith(IMPORT_ALIAS):
        return None
    from .adapters import importer_options
    from .cli_args import build_import_alias_parser
    from .methods import method_class
    from .validation import convert_setting, declared_ranges

    command, rest = argv[position], argv[position + 1 :]
    method = command.removeprefix(IMPORT_ALIAS).replace("-", "_")
    options = importer_options(method)  # an unknown method or one without a reader: one line
    ranges = declared_ranges(method_class(method).Config)
    alias = build_import_alias_parser(
        command,
        method,
        options,
        lambda name, text, tp: convert_setting(name, text, tp, "option", ranges.get(name)),
    )
    args = alias.parse_args(rest)
    given = {name: getattr(args, name) for name, _, _ in options}
    for name in given:
        delattr(args, name)
    head = argv[:position]
    return argparse.Namespace(
        **vars(args),
        command="import",
        func=cmd_import,
        import_method=method,
        import_options=given,
        verbose="-v" in head or "--verbose" in head,
        quiet="-q" in head or "--quiet" in head,
    )


def parse_command_line(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse argv, accepting key=value overrides anywhere after the sub-command, also after its options;
    `import-NAME` is parsed by its own parser (built from the method's reader)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    alias = _import_alias(argv)
    if alias is not None:
        return alias
    # argparse fills a `nargs="*"` positional that follows another positional (sweep FILE) as soon as it
    # reads that one, so `sweep FILE --out DIR epochs=1` would leave epochs=1 unrecognised.
    args, extra = parser.parse_known_args(argv)
    misplaced = [a for a in extra if "=" in a and not a.startswith("-")]
    if misplaced and hasattr(args, "overrides"):
        args.overrides = [*(args.overrides or []), *misplaced]
        extra = [a for a in extra if a not in misplaced]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a sub-command, turning user errors into one line and exit code 2."""
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
    except ClipadaptError as err:  # import-NAME of an unknown method, or of one without a reader
        print(f"clipadapt: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    if not args.command:  # help asked for by giving nothing: the convention is exit 0
        parser.print_help()
        return 0
    configure_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except ClipadaptError as err:
        print(f"clipadapt: error: {one_line(str(err)) or type(err).__name__}", file=sys.stderr)
        return 2
    except OSError as err:
        if not err.filename:  # not about a path the user gave: a real failure, with its traceback
            raise
        print(f"clipadapt: error: cannot use '{err.filename}': {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
