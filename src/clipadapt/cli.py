"""The `clipadapt` command.

Building the parser imports nothing heavy (no torch): each command imports what it needs when it
runs. Every user error ends in one line `clipadapt: error: ...` on stderr and exit code 2, whether
argparse, a pre-run check or the library finds it; results go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time

from . import __version__
from .errors import ClipadaptError, one_line
from .registry import METHOD_NAMES, PROTOCOL_NAMES, dataset_names

log = logging.getLogger("clipadapt")


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
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got '{text}'") from None
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
        raise argparse.ArgumentTypeError(f"expected -1 (every training image) or an integer >= 1, got '{text}'")
    return value


DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def device_name(text: str) -> str:
    """An argparse type: cpu, cuda, cuda:N or mps (whether it exists is checked before the run)."""
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got '{text}'")
    return text


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any work starts."""
    if device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise ClipadaptError(f"device '{device}' is not available: this machine has "
                                 f"{count or 'no'} CUDA GPU{'s' if count != 1 else ''} (use --device cpu)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ClipadaptError("device 'mps' is not available on this machine (use --device cpu)")


def check_writable(path: str, kind: str) -> None:
    """Refuse an output folder (kind 'dir') or file ('file') that cannot be written, creating nothing."""
    path = os.path.abspath(os.path.expanduser(path))
    if kind == "dir" and os.path.exists(path) and not os.path.isdir(path):
        raise ClipadaptError(f"output folder '{path}' is a file")
    if kind == "file" and os.path.isdir(path):
        raise ClipadaptError(f"output file '{path}' is a directory")
    folder = path if kind == "dir" else os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ClipadaptError(f"cannot write to '{path}': '{folder}' is not a writable folder")


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=None,
                   help="open_clip model name (e.g. ViT-B-16), or 'synthetic' for the tiny CLIP shipped with "
                        "clipadapt (default: the one recorded in --checkpoint, else synthetic)")
    p.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag (e.g. openai), a local checkpoint file, or 'none' for random "
                        "weights (default: the shipped weights for 'synthetic', openai otherwise)")
    p.add_argument("--device", default="cpu", type=device_name, help="cpu, cuda, cuda:N or mps (default cpu)")


def _add_prompts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None,
                   help="several prompts a class: 'openai80' (CLIP's 80 templates), a JSON file of per-class "
                        "descriptions in CuPL's layout {\"class\": [\"...\", ...]} or of templates [\"a photo of "
                        "a {}.\", ...], a folder of <dataset>.json files, or 'none' for one template a class "
                        "(default: the preset's, else one template; with --checkpoint: the recorded one)")


def _resolve_pretrained(args: argparse.Namespace) -> None:
    from .synthetic_weights import DEFAULT_BACKBONE, default_pretrained  # build_model's defaults too

    if not hasattr(args, "backbone") or (args.backbone is None and getattr(args, "checkpoint", None)):
        return  # the backbone recorded in the checkpoint
    if args.backbone is None:
        args.backbone = DEFAULT_BACKBONE
    if getattr(args, "pretrained", "x") is None:
        args.pretrained = default_pretrained(args.backbone)


def _add_data_args(p: argparse.ArgumentParser, loader_flags: bool = False) -> None:
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(dataset_names())}")
    p.add_argument("--data-root", required=True, help="folder holding the datasets in CoOp's layout "
                                                      "(for --dataset folder: the image folder itself)")
    if loader_flags:  # train sets these as eval_batch_size=N workers=N, with the other settings
        p.add_argument("--batch-size", type=int_at_least(1), default=100, help="evaluation batch size (default 100)")
        p.add_argument("--workers", type=int_at_least(0), default=None,
                       help="data loading processes (default: one per core, at most 8)")


def _add_feature_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feature-cache", metavar="DIR", default=None,
                   help="folder of the test images' frozen features, shared across runs by methods whose image "
                        "tower is CLIP's own (default: $CLIPADAPT_CACHE/features, else "
                        "$XDG_CACHE_HOME/clipadapt/features, else ~/.cache/clipadapt/features)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="neither read nor write cached test image features")


def _feature_cache(args: argparse.Namespace):
    """The FeatureCache the flags ask for, or None with --no-feature-cache."""
    from .feature_cache import FeatureCache

    return None if args.no_feature_cache else FeatureCache(args.feature_cache)


def _feature_cache_argv(args: argparse.Namespace) -> list[str]:
    """The feature-cache flags again, for the commands a sweep runs."""
    if args.no_feature_cache:
        return ["--no-feature-cache"]
    return ["--feature-cache", os.path.abspath(os.path.expanduser(args.feature_cache))] if args.feature_cache else []


def _prepare_out(out: str, overwrite: bool) -> None:
    if os.path.exists(os.path.join(out, "metrics.json")) and not overwrite:
        raise ClipadaptError(f"'{out}' already holds a finished run (metrics.json); "
                             "pass --overwrite to replace it or choose another --out")


def _note(message: str) -> None:
    """A progress or status line: stderr, so that stdout carries only results."""
    print(message, file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate zero-shot CLIP or a saved adapter on one split of a dataset."""
    from .data import build_dataset
    from .evaluation import evaluate, write_predictions
    from .fileio import write_json
    from .model import build_model, load_model

    data = build_dataset(args.dataset, args.data_root, shots=args.shots, seed=args.seed, subsample=args.subsample)
    items = data.test if args.split == "test" else data.val
    if not items:
        raise ClipadaptError(f"dataset '{args.dataset}' at '{args.data_root}' has no {args.split} images "
                             f"({args.subsample} classes)")
    if args.checkpoint:
        from_file = args.backbone_from_checkpoint or args.backbone is None
        model = load_model(args.checkpoint, data.classnames, device=args.device,
                           backbone=None if from_file else args.backbone,
                           pretrained=None if from_file else args.pretrained, prompts=args.prompts,
                           default_template=data.template, dataset=args.dataset)
        method = model.method.name
    else:
        prompts = {} if args.prompts is None else {"prompts": args.prompts}
        model = build_model(args.method, data.classnames, args.backbone, args.pretrained,
                            default_template=data.template, device=args.device, dataset=args.dataset, **prompts)
        method = args.method
        if model.method.num_trainable():
            raise ClipadaptError(f"method '{method}' has trainable parameters: evaluating it untrained measures "
                                 "nothing; pass --checkpoint ADAPTER (written by `clipadapt train`)")
    _prepare_out(args.out, args.overwrite)  # after every input check: a bad input names itself
    start = time.time()
    result = evaluate(model, items, args.batch_size, args.workers, args.device,
                      desc=f"{args.dataset}/{args.split}/{args.subsample}", feature_cache=_feature_cache(args),
                      dataset=args.dataset, split=f"{args.split}/{args.subsample}")
    metrics = {
        "accuracy": round(result.accuracy, 4), "num_images": result.num_images, "dataset": args.dataset,
        "split": args.split, "shots": args.shots, "seed": args.seed,
        "subsample": args.subsample, "method": method, "backbone": model.backbone.name,
        "pretrained": str(model.backbone_source.get("pretrained")), "backbone_identity": model.backbone.identity,
        "num_classes": data.num_classes, "prompt_template": model.template, "prompts": model.method.config.prompts,
        "data_root": os.path.abspath(args.data_root),
        "checkpoint": args.checkpoint, "eval_seconds": round(time.time() - start, 2), "clipadapt": __version__,
    }
    os.makedirs(args.out, exist_ok=True)
    if args.save_predictions:
        write_predictions(os.path.join(args.out, "predictions.csv"), items, result, data.classnames)
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(json.dumps({k: metrics[k] for k in ("dataset", "split", "subsample", "method", "accuracy", "num_images")}))
    _note(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


def _default_protocol(args: argparse.Namespace) -> str:
    if args.protocol:
        return args.protocol
    # A user's own folder has no base/novel convention: train and test on all its classes.
    return "fewshot" if args.dataset == "folder" else "base2novel"


def _check_data(protocol: str, args: argparse.Namespace, base_ratio: str = "1:1") -> None:
    """Read every split the run will use (file lists only), so that a missing one fails before training."""
    from .data import build_dataset
    from .protocols import TRANSFER_TARGETS, transfer_targets

    subsamples = ("base", "new") if protocol == "base2novel" else ("all",)
    for subsample in subsamples:
        build_dataset(args.dataset, args.data_root, args.shots, args.seed, subsample, base_ratio)
    if protocol in TRANSFER_TARGETS:
        for target in transfer_targets(protocol, args.dataset):
            build_dataset(target, args.data_root, -1, args.seed, "all")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a method under a protocol and evaluate it; resumes an interrupted run in the same folder."""
    from . import distributed
    from .registry import canonical_protocol

    if args.protocol:
        args.protocol = canonical_protocol(args.protocol)
    args.device = distributed.init_from_env(args.device)  # under torchrun: join the group; one GPU per rank
    code = _train_run(args)  # an error leaves without the final barrier, which would wait forever
    distributed.shutdown()
    return code


def _train_run(args: argparse.Namespace) -> int:
    import yaml

    from . import distributed
    from .fileio import write_json, write_text
    from .protocols import RunSpec, run_protocol
    from .runconfig import choose_preset, parse_overrides, resolve

    protocol = _default_protocol(args)
    preset_name, preset = choose_preset(args.config, args.method, protocol, args.backbone)
    overrides = parse_overrides(args.overrides)
    if args.prompts is not None:
        overrides["prompts"] = args.prompts
    if args.base_ratio is not None:
        overrides["base_ratio"] = args.base_ratio
    method_cfg, train_cfg, resolved = resolve(args.method, preset, overrides)
    train_cfg.seed = args.seed
    resolved["seed"] = args.seed
    run = {"protocol": protocol, "dataset": args.dataset, "data_root": os.path.abspath(args.data_root),
           "shots": args.shots, "seed": args.seed, "backbone": args.backbone, "pretrained": str(args.pretrained),
           "preset": preset_name, **resolved}
    if args.study or args.variant:  # a study's run: the report groups it by study and names its row by variant
        run.update(study=args.study, variant=args.variant or args.method)
    out = args.out
    metrics_path, config_path = os.path.join(out, "metrics.json"), os.path.join(out, "config.yaml")
    _check_data(protocol, args, train_cfg.base_ratio)
    main_rank = distributed.is_main()
    if args.overwrite and main_rank:
        for name in ("metrics.json", "checkpoint.pt", "log.jsonl", "config.yaml", "adapter.safetensors"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    _prepare_out(out, overwrite=False)
    if os.path.exists(os.path.join(out, "checkpoint.pt")) and os.path.exists(config_path):
        with open(config_path) as f:
            previous = yaml.safe_load(f)
        if previous != run:
            changed = sorted(k for k in set(previous) | set(run) if previous.get(k) != run.get(k))
            raise ClipadaptError(f"'{out}' holds an interrupted run with other settings ({', '.join(changed)}); "
                                 "rerun with the same settings to resume, or pass --overwrite")
    if not args.protocol:
        _note(f"protocol: {protocol} (the default for --dataset {args.dataset}; set it with --protocol)")
    _note(f"settings: {preset_name}" + (" (the shipped preset for this method, protocol and backbone; "
                                         "--config FILE or --config none to change)" if args.config is None else ""))
    distributed.barrier()
    if main_rank:
        os.makedirs(out, exist_ok=True)
        write_text(config_path, yaml.safe_dump(run, sort_keys=False))
    spec = RunSpec(args.method, args.dataset, args.data_root, args.shots, args.seed, args.backbone,
                   args.pretrained, out, args.device, progress=main_rank, feature_cache=_feature_cache(args))
    metrics = run_protocol(protocol, spec, method_cfg.to_dict(), train_cfg)
    if not main_rank:
        return 0
    if "variant" in run:
        metrics.update(study=run["study"], variant=run["variant"])
    write_json(metrics_path, metrics)
    shown = {"base2novel": ("base", "novel", "hm"), "fewshot": ("accuracy",)}.get(
        protocol, ("source", "target_average"))
    print(json.dumps({k: metrics[k] for k in (*shown, "trainable_params", "train_ms_per_image") if k in metrics}))
    _note(f"wrote {metrics_path}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """Evaluate a saved source adapter, without training, on the targets of cross_dataset or domain_generalization."""
    import yaml

    from .fileio import write_json
    from .model import load_model
    from .protocols import evaluate_transfer, transfer_targets
    from .registry import canonical_protocol

    protocol = canonical_protocol(args.protocol)
    run_config = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "config.yaml")
    trained = {}
    if os.path.exists(run_config):  # the training run's folder says what the adapter was trained on
        with open(run_config) as f:
            trained = yaml.safe_load(f) or {}
    source = args.source or trained.get("dataset")
    if not source:
        raise ClipadaptError(f"give --source: no config.yaml beside '{args.checkpoint}' names the training dataset")
    transfer_targets(protocol, source)
    _prepare_out(args.out, args.overwrite)
    model = load_model(args.checkpoint, device=args.device, backbone=args.backbone,
                       pretrained=args.pretrained if args.backbone else None)
    start = time.time()
    kwargs = dict(batch_size=args.batch_size, workers=args.workers, device=args.device, progress=True,
                  feature_cache=_feature_cache(args))
    metrics = evaluate_transfer(model, protocol, source, args.data_root, kwargs)
    metrics.update({
        "trainable_params": model.method.num_trainable(), "total_seconds": round(time.time() - start, 2),
        "protocol": protocol, "method": model.method.name, "dataset": source,
        "shots": trained.get("shots", args.shots), "seed": trained.get("seed", args.seed),
        "backbone": model.backbone_source.get("backbone"), "pretrained": str(model.backbone_source.get("pretrained")),
        "backbone_identity": model.backbone.identity, "checkpoint": os.path.abspath(args.checkpoint),
    })
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(json.dumps({k: metrics[k] for k in ("protocol", "method", "dataset", "source", "target_average")}))
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a method's trainable parameter count on a backbone."""
    from .model import build_model
    from .runconfig import parse_overrides

    model = build_model(args.method, ["a", "b"], args.backbone, "none", **parse_overrides(args.overrides))
    info = {"method": args.method, "backbone": args.backbone, "trainable_params": model.method.num_trainable(),
            "image_blocks": len(model.backbone.image_blocks), "text_blocks": len(model.backbone.text_blocks),
            "config": model.method.config.to_dict()}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"method {info['method']} on {info['backbone']}: {info['trainable_params']:,} trainable parameters")
        for key, value in info["config"].items():
            print(f"  {key}: {value}")
    return 0


def _read_classes(args: argparse.Namespace) -> list[str] | None:
    """The class names from --classes or --classes-file; None when neither is given."""
    from .data.folder import check_distinct

    if args.classes_file:
        try:
            with open(args.classes_file) as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise ClipadaptError(f"cannot read class file '{args.classes_file}': "
                                 f"{getattr(err, 'strerror', None) or 'not a text file'}") from None
        where = f"class file '{args.classes_file}'"
    elif args.classes is not None:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        where = "--classes"
    else:
        return None
    if len(names) < 2:
        raise ClipadaptError("need at least two class names to classify between")
    check_distinct(names, where)
    return names


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images against any class names with a saved adapter (or zero-shot CLIP)."""
    import torch

    from .data.loader import load_image
    from .evaluation import model_transform
    from .model import build_model, load_model

    names = _read_classes(args)
    if names is None and not args.checkpoint:
        raise ClipadaptError("give the class names with --classes 'a,b,c' or --classes-file FILE "
                             "(with --checkpoint they default to the classes it was trained on)")
    for path in args.images:  # every image is checked before the first line is printed
        if not os.path.isfile(path):
            raise ClipadaptError(f"cannot read image '{path}': no such file")
    if args.checkpoint:
        model = load_model(args.checkpoint, names, backbone=args.backbone, pretrained=args.pretrained,
                           device=args.device, prompts=args.prompts)
        names = model.classnames
        if len(names) < 2:
            raise ClipadaptError(f"adapter '{args.checkpoint}' records no class names; give them with --classes")
    else:
        prompts = {} if args.prompts is None else {"prompts": args.prompts}
        model = build_model("zeroshot", names, args.backbone or "synthetic", args.pretrained or "shipped",
                            device=args.device, **prompts)
    model.eval()
    transform = model_transform(model)
    k = min(args.top_k, len(names))
    for start in range(0, len(args.images), 32):
        paths = args.images[start:start + 32]
        batch = torch.stack([transform(load_image(p)) for p in paths]).to(args.device)
        with torch.no_grad():
            probs = model(batch).float().softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        for path, p, idx in zip(paths, top.values.tolist(), top.indices.tolist()):
            preds = [{"class": names[i], "probability": round(v, 4)} for v, i in zip(p, idx)]
            if args.json:
                print(json.dumps({"image": path, "top": preds}))
            else:
                print(path + ": " + ", ".join(f"{q['class']} ({q['probability']:.3f})" for q in preds))
    return 0


def cmd_import_mma(args: argparse.Namespace) -> int:
    """Convert a checkpoint of the official MMA code into a clipadapt adapter file."""
    from .methods.mma import official_config, official_state_dict

    state = official_state_dict(args.path)
    return _write_imported(args, "mma", official_config(state, args.scale, args.path), state)


def cmd_import_mma_pp(args: argparse.Namespace) -> int:
    """Convert a checkpoint of the official MMA++ code (VLM-MMApp) into a clipadapt adapter file."""
    from .methods.mma import official_config, official_state_dict
    from .methods.mma_pp import MMAPPConfig

    state = official_state_dict(args.path)  # MMA++ saves MMA's keys: its dropout has no parameters
    blocks = official_config(state, path=args.path)
    config = MMAPPConfig(adapter_start=blocks.adapter_start, adapter_end=blocks.adapter_end,
                         adapter_dim=blocks.adapter_dim, dropout=args.dropout, train_scale=args.train_scale,
                         test_scale=args.test_scale, reg_weight=args.reg_weight)
    return _write_imported(args, "mma_pp", config, state)


def _write_imported(args: argparse.Namespace, method: str, config, state: dict) -> int:
    """Write official adapter tensors as a clipadapt adapter file, after checking keys and shapes."""
    from safetensors.torch import save_file

    from .backbone import backbone_identity, check_weights_source, load_backbone
    from .fileio import atomic_path
    from .methods import method_class
    from .methods.mma import check_official_fits
    from .model import ADAPTER_FORMAT

    check_weights_source(args.backbone, args.pretrained)
    # The backbone's architecture, without its weights, is enough to check every key and shape now.
    architecture = load_backbone(args.backbone, "none")
    check_official_fits(method_class(method)(config, architecture, ["a", "b"]), state, args.path)
    meta = {"format": ADAPTER_FORMAT, "clipadapt_version": __version__, "method": method,
            "method_config": json.dumps(config.to_dict()),
            "backbone_identity": backbone_identity(args.backbone, args.pretrained),
            "backbone": args.backbone, "pretrained": str(args.pretrained), "classnames": "[]",
            "imported_from": os.path.abspath(args.path)}
    with atomic_path(args.out) as tmp:
        save_file({k: v.float().contiguous() for k, v in state.items()}, tmp, metadata=meta)
    n = sum(v.numel() for v in state.values())
    _note(f"wrote {args.out}: {method} adapters on blocks {config.adapter_start}-{config.adapter_end}, "
          f"width {config.adapter_dim}, {n:,} parameters, for {args.backbone} ({args.pretrained})")
    return 0


def cmd_import_mmrl(args: argparse.Namespace) -> int:
    """Convert a checkpoint of the official MMRL code into a clipadapt adapter file."""
    from safetensors.torch import save_file

    from .backbone import weights_identity
    from .fileio import atomic_path
    from .methods.mmrl import official_config, official_state_dict
    from .model import ADAPTER_FORMAT

    state = official_state_dict(args.path)
    config = official_config(state, args.last_block, alpha=args.alpha, inference=args.inference)
    classes = _read_classes(args) if (args.classes or args.classes_file) else []
    meta = {"format": ADAPTER_FORMAT, "clipadapt_version": __version__, "method": "mmrl",
            "method_config": json.dumps(config.to_dict()),
            "backbone_identity": weights_identity(args.backbone, args.pretrained),
            "backbone": args.backbone, "pretrained": str(args.pretrained), "classnames": json.dumps(classes),
            "imported_from": os.path.abspath(args.path)}
    with atomic_path(args.out) as tmp:
        save_file({k: v.float().contiguous() for k, v in state.items()}, tmp, metadata=meta)
    n = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: mmrl, {config.n_rep_tokens} tokens of width {config.rep_dim} on blocks "
          f"{config.rep_layers[0]}-{config.rep_layers[-1]}, {n:,} parameters, for {args.backbone} ({args.pretrained})")
    return 0


def cmd_pretrain_synthetic(args: argparse.Namespace) -> int:
    """Pretrain the tiny CLIP on the synthetic world, record its zero-shot accuracy, optionally install it."""
    import shutil

    from .data.synthetic import SYNTHETIC_DATASETS
    from .fileio import write_json
    from .synthetic.pretrain import pretrain, zero_shot_probe, zero_shot_record
    from .synthetic_weights import SHIPPED_RECORD, SHIPPED_WEIGHTS

    start = time.time()
    weights = pretrain(args.out, steps=args.steps, batch_size=args.batch_size, pool_size=args.pool_size,
                       lr=args.lr, eval_fn=zero_shot_probe())
    minutes = (time.time() - start) / 60
    record = {"weights": os.path.basename(weights), "pretrain_minutes": round(minutes, 1),
              "zero_shot": zero_shot_record(weights, os.path.join(args.out, "data"), list(SYNTHETIC_DATASETS))}
    with open(os.path.join(args.out, "pretrain_config.json")) as f:
        record["pretrain"] = json.load(f)
    write_json(os.path.join(args.out, "synthetic-clip.json"), record)
    print(json.dumps(record["zero_shot"], indent=1))
    if args.install:
        shutil.copyfile(weights, SHIPPED_WEIGHTS)
        shutil.copyfile(os.path.join(args.out, "synthetic-clip.json"), SHIPPED_RECORD)
        shutil.copyfile(os.path.join(args.out, "pretrain_log.jsonl"), SHIPPED_WEIGHTS.parent / "pretrain_log.jsonl")
        _note(f"installed into {SHIPPED_WEIGHTS.parent}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo on generated data."""
    from .demo import run_demo

    return run_demo(args.out, quick=args.quick, overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    METHODS = METHOD_NAMES
    parser = _Parser(
        prog="clipadapt",
        description="Few-shot adaptation of CLIP with multimodal adapters. Sub-commands evaluate, train, "
                    "inspect and apply adapters; `clipadapt COMMAND --help` explains each.")
    parser.add_argument("--version", action="version", version=f"clipadapt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("eval", help="evaluate zero-shot CLIP or a saved adapter on a dataset",
                       description="Evaluate a method on the test (or validation) split of a dataset and write DIR/metrics.json "
                                   "(accuracy in percent, number of images, dataset, subsample, method, backbone).")
    p.add_argument("--method", default="zeroshot", help=f"one of: {', '.join(METHODS)} (default zeroshot)")
    p.add_argument("--checkpoint", help="a saved adapter (.safetensors) to evaluate instead of --method")
    p.add_argument("--backbone-from-checkpoint", action="store_true",
                   help="with --checkpoint: load the backbone recorded in the adapter file")
    _add_data_args(p, loader_flags=True)
    p.add_argument("--subsample", default="all", choices=["all", "base", "new"],
                   help="classes to evaluate on: all, the base half or the new half (default all)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="the split scored: test, or val for choosing settings (default test)")
    p.add_argument("--shots", type=shots_count, default=-1,
                   help="with --split val: Dassl's min(K,4)-shot validation draw of `train --shots K` "
                        "(default -1: the whole validation split)")
    p.add_argument("--seed", type=int_at_least(0), default=1, help="seed of that draw (default 1)")
    _add_backbone_args(p)
    _add_prompts_arg(p)
    p.add_argument("--out", required=True, help="output folder for metrics.json")
    _add_feature_cache_args(p)
    p.add_argument("--save-predictions", action="store_true", help="also write DIR/predictions.csv")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.set_defaults(func=cmd_eval, out_kind="dir")

    p = sub.add_parser("train", help="train a method under a protocol, then evaluate it",
                       description="Train on the few-shot split (base classes for base2novel), evaluate, and write "
                                   "DIR/metrics.json, DIR/adapter.safetensors, DIR/config.yaml and DIR/log.jsonl. "
                                   "Rerunning an interrupted run with the same command resumes it.")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    _add_data_args(p)
    p.add_argument("--shots", type=shots_count, default=16,
                   help="images per class for training (default 16; -1: every training image, as Dassl)")
    p.add_argument("--seed", type=int_at_least(0), default=1,
                   help="seed of the few-shot draw and of training (default 1)")
    p.add_argument("--protocol", default=None, choices=PROTOCOL_NAMES,
                   help="base2novel: train on base classes, test base and novel; fewshot: all classes; "
                        "cross_dataset: all classes, test on the source and on other datasets (imagenet, syn_*); "
                        "domain_generalization (dg): all classes, test on the source and its shifted domains "
                        "(imagenet, syn_objects) (default: fewshot for --dataset folder, base2novel otherwise)")
    _add_backbone_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", default=None,
                   help="YAML settings file, a shipped preset's name (e.g. synthetic/mma.yaml), or 'none' for the "
                        "method's own defaults (default: the shipped preset for the method, protocol and backbone, "
                        "from clipadapt/presets/); key=value arguments override it")
    _add_prompts_arg(p)
    p.add_argument("--base-ratio", default=None, metavar="B:N",
                   help="base2novel: base to novel classes, the first C - floor(C*N/(B+N)) sorted classes are base "
                        "(default 1:1, CoOp's ceil(C/2); the same as the base_ratio=B:N setting)")
    p.add_argument("--study", default=None, help="the study this run belongs to (recorded for `clipadapt report`)")
    p.add_argument("--variant", default=None, help="the study's variant this run is (its row in the report)")
    _add_feature_cache_args(p)
    p.add_argument("--overwrite", action="store_true", help="discard a finished or interrupted run in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="method options (e.g. scale=0.001) or training settings (e.g. epochs=5 lr=2e-3 "
                        "workers=4 eval_batch_size=100)")
    p.set_defaults(func=cmd_train, out_kind="dir")

    add_transfer_parser(sub)
    add_report_parser(sub)
    add_sweep_parser(sub)
    add_datasets_parser(sub)

    p = sub.add_parser("info", help="trainable parameter count of a method on a backbone",
                       description="Build a method on a backbone (random weights) and print its trainable parameters.")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    p.add_argument("--json", action="store_true", help="print JSON (key trainable_params)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="method options")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="classify images against any class names",
                       description="Print the top classes of each image. The class names may be ones the adapter "
                                   "never saw in training.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", help="a saved adapter; without it, zero-shot CLIP")
    p.add_argument("--classes", help="comma-separated class names (default with --checkpoint: the classes "
                                     "it was trained on)")
    p.add_argument("--classes-file", help="a file with one class name a line")
    p.add_argument("--top-k", type=int_at_least(1), default=5, help="classes to print per image (default 5)")
    _add_prompts_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("--backbone", default=None, help="override the backbone recorded in the checkpoint")
    p.add_argument("--pretrained", default=None, help="override the weights recorded in the checkpoint")
    p.add_argument("--device", default="cpu", type=device_name, help="cpu, cuda, cuda:N or mps (default cpu)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("import-mma", help="convert a checkpoint of the official MMA code",
                       description="Read the adapter_learner state dict of an official MMA checkpoint "
                                   "(model-best.pth.tar, model.pth.tar-5) and write a clipadapt adapter file.")
    p.add_argument("path", help="the official checkpoint file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--backbone", default="ViT-B-16", help="the backbone it was trained on (default ViT-B-16)")
    p.add_argument("--pretrained", default="openai", help="its weights (default openai, as the official code)")
    p.add_argument("--scale", type=positive_float, default=0.001,
                   help="ADAPTER_SCALE it was trained with (default 0.001)")
    p.set_defaults(func=cmd_import_mma, out_kind="file")

    p = sub.add_parser("import-mmrl", help="convert a checkpoint of the official MMRL code",
                       description="Read the representation learner and proj_rep of an official MMRL checkpoint "
                                   "(model-best.pth.tar, model.pth.tar-10) and write a clipadapt adapter file.")
    p.add_argument("path", help="the official checkpoint file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--backbone", default="ViT-B-16", help="the backbone it was trained on (default ViT-B-16)")
    p.add_argument("--pretrained", default="openai", help="its weights (default openai, as the official code)")
    p.add_argument("--last-block", type=int, default=12, help="last REP_LAYERS block (default 12: blocks 6-12)")
    p.add_argument("--alpha", type=float, default=0.7, help="ALPHA it was trained with (default 0.7)")
    p.add_argument("--inference", default="auto", choices=["auto", "fusion", "class"],
                   help="auto: fused logits on the classes it was trained on (give them with --classes or "
                        "--classes-file), class logits elsewhere (default auto)")
    p.add_argument("--classes", help="comma-separated class names it was trained on")
    p.add_argument("--classes-file", help="file with the class names it was trained on, one per line")
    p.set_defaults(func=cmd_import_mmrl, out_kind="file")

    p = sub.add_parser("import-mma-pp", help="convert a checkpoint of the official MMA++ code",
                       description="Read the adapter_learner state dict of an official MMA++ checkpoint "
                                   "(adapter_learner/model.pth.tar-50) and write a clipadapt adapter file. Its keys "
                                   "are MMA's, so the scales it was trained with are given here.")
    p.add_argument("path", help="the official checkpoint file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--backbone", default="ViT-B-16", help="the backbone it was trained on (default ViT-B-16)")
    p.add_argument("--pretrained", default="openai", help="its weights (default openai, as the official code)")
    p.add_argument("--train-scale", type=float, default=0.01, help="ADAPTER_TRAIN_SCALE (default 0.01)")
    p.add_argument("--test-scale", type=float, default=0.0065,
                   help="ADAPTER_TEST_SCALE (default 0.0065; 0.005 for the ImageNet-source config)")
    p.add_argument("--reg-weight", type=float, default=2.5, help="ADAPTER_TRAIN_SCALE_REG (default 2.5)")
    p.add_argument("--dropout", type=float, default=0.1, help="ADAPTER_DROP (default 0.1; 0.2 for b2n_hc)")
    p.set_defaults(func=cmd_import_mma_pp, out_kind="file")

    p = sub.add_parser("pretrain-synthetic", help="pretrain the tiny CLIP on the synthetic world",
                       description="Contrastive pretraining of the shipped tiny CLIP (under an hour on 2 CPU "
                                   "cores with the defaults); writes weights, the training log and its zero-shot "
                                   "accuracy on the synthetic datasets. Rerun the same command to resume.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int_at_least(1), default=5000, help="optimizer steps (default 5000)")
    p.add_argument("--batch-size", type=int_at_least(2), default=128, help="image-caption pairs per step (default 128)")
    p.add_argument("--pool-size", type=int_at_least(1), default=24000,
                   help="scenes rendered up front, per kind: random scenes, shape groups, other groups (default 24000)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--install", action="store_true", help="copy the result into the package (src/clipadapt/weights)")
    p.set_defaults(func=cmd_pretrain_synthetic, out_kind="dir")

    p = sub.add_parser("demo", help="run the whole job on generated data, no download needed",
                       description="Generate a small dataset, run the methods on it and print a report.")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--quick", action="store_true", help="a reduced size, for tests")
    p.add_argument("--overwrite", action="store_true", help="replace a finished demo in --out")
    p.set_defaults(func=cmd_demo, out_kind="dir")
    return parser


def _preflight(args: argparse.Namespace) -> None:
    """Checks every command needs before any work: the device exists, the output can be written."""
    if getattr(args, "device", None) not in (None, "cpu"):  # None: the sweep file's device
        check_device(args.device)
    if getattr(args, "out_kind", None) and getattr(args, "out", None):
        check_writable(args.out, args.out_kind)


def add_transfer_parser(sub) -> None:
    """`clipadapt transfer`: a trained source adapter on the cross-dataset or domain-generalization targets."""
    p = sub.add_parser("transfer", help="evaluate a saved source adapter on cross-dataset or DG targets",
                       description="Evaluate an adapter trained on a source dataset (all classes), without training, "
                                   "on the source's test set and on every target of the protocol; writes "
                                   "DIR/metrics.json as `train --protocol cross_dataset|domain_generalization` does.")
    p.add_argument("--checkpoint", required=True, help="the source run's adapter.safetensors")
    p.add_argument("--protocol", required=True, choices=["cross_dataset", "domain_generalization", "dg"])
    p.add_argument("--source", help="the dataset it was trained on (default: read from the run's config.yaml)")
    p.add_argument("--data-root", required=True, help="folder holding the datasets in CoOp's layout")
    p.add_argument("--shots", type=shots_count, default=16, help="recorded shots when no config.yaml is beside the adapter")
    p.add_argument("--seed", type=int_at_least(0), default=1, help="recorded seed when no config.yaml is beside the adapter")
    p.add_argument("--batch-size", type=int_at_least(1), default=100, help="evaluation batch size (default 100)")
    p.add_argument("--workers", type=int_at_least(0), default=None,
                   help="data loading processes (default: one per core, at most 8)")
    p.add_argument("--backbone", default=None, help="override the backbone recorded in the adapter")
    p.add_argument("--pretrained", default=None, help="with --backbone: its weights")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", required=True, help="output folder for metrics.json")
    _add_feature_cache_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace a finished evaluation in --out")
    p.set_defaults(func=cmd_transfer, out_kind="dir")


def cmd_report(args: argparse.Namespace) -> int:
    """Aggregate the finished runs under a folder into the papers' tables."""
    from .report import write_report

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None  # noqa: E731
    out = args.out or args.dir
    text = write_report(args.dir, out, split(args.methods), split(args.datasets), references=args.references)
    print(text)
    print(f"wrote {os.path.join(out, 'report.md')}, report.csv, report.json")
    return 0


def add_report_parser(sub) -> None:
    """`clipadapt report DIR`."""
    p = sub.add_parser("report", help="the papers' tables from a folder of runs (mean ± std over seeds)",
                       description="Find every run under DIR (metrics.json; failed.json from a sweep), average over "
                                   "seeds and write report.md, report.csv, report.json and PNG plots for each "
                                   "protocol present. Missing and failed runs are listed, never averaged over.")
    p.add_argument("dir", metavar="DIR", help="a folder of runs, e.g. a sweep's --out")
    p.add_argument("--out", help="where to write the report (default DIR)")
    p.add_argument("--methods", help="comma-separated row order (default: alphabetical)")
    p.add_argument("--datasets", help="comma-separated dataset order (default: alphabetical)")
    p.add_argument("--references", action="store_true", help="print published numbers beside ours, with sources")
    p.set_defaults(func=cmd_report)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep file's grid of runs under one folder; exit 1 when a run failed."""
    from .runconfig import parse_overrides
    from .sweep import read_sweep, run_sweep

    sweep = read_sweep(args.file, parse_overrides(args.overrides))
    if args.variants:
        from .sweep import select_variants

        sweep = select_variants(sweep, [v.strip() for v in args.variants.split(",") if v.strip()])
    sweep.run_flags = _feature_cache_argv(args)
    if args.dry_run:
        for run in sweep.runs:
            print(" ".join(["clipadapt", *sweep.train_argv(run, args.out, args.data_root or sweep.data_root or "DATA")]))
        return 0
    slurm = {"partition": args.partition, "time": args.time, "gpus": args.gpus_per_job, "cpus": args.cpus_per_job}
    result = run_sweep(sweep, args.out, args.data_root, args.jobs, args.device, args.gpus, args.launcher, slurm)
    print(f"{result.total} runs: {result.skipped} already finished, {result.finished} finished now, "
          f"{len(result.failed)} failed")
    for run_dir, error in result.failed.items():
        print(f"  FAILED {run_dir}: {error}")
    print(f"tables: clipadapt report {args.out}")
    return 1 if result.failed else 0


def add_sweep_parser(sub) -> None:
    """`clipadapt sweep FILE --out DIR`."""
    p = sub.add_parser("sweep", help="run a grid of runs (methods x datasets x seeds x shots) from a YAML file",
                       description="Run every run of a sweep file (configs/sweeps/) as `clipadapt train` into "
                                   "OUT/<protocol>/<method>/<dataset>/shots<K>/seed<S>/. Finished runs are skipped, "
                                   "interrupted ones resume, failures are recorded (failed.json) and do not stop "
                                   "the others. Then `clipadapt report OUT`.")
    p.add_argument("file", metavar="FILE.yaml", help="the sweep file")
    p.add_argument("--out", required=True, help="output folder of the sweep")
    p.add_argument("--data-root", help="folder of the datasets (default: the sweep file's data_root)")
    p.add_argument("--jobs", type=int_at_least(1), default=1, help="runs at once (default 1: in this process)")
    p.add_argument("--device", help="torch device of every run (default: the sweep file's, else cpu); with cuda "
                                    "and --jobs N each run is pinned to one GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--gpus", help="comma-separated GPU ids to spread runs over (default: all visible)")
    p.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit-local"],
                   help="local (default); slurm: one SLURM job per run through submitit; submitit-local: "
                        "submitit's local executor (for testing a cluster setup)")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--time", type=int, default=60, help="SLURM time limit per run in minutes (default 60)")
    p.add_argument("--gpus-per-job", type=int, default=1, help="SLURM GPUs per run (default 1)")
    p.add_argument("--cpus-per-job", type=int, default=8, help="SLURM CPUs per run (default 8)")
    p.add_argument("--variants", help="a study: run only these comma-separated variants (default: all)")
    p.add_argument("--dry-run", action="store_true", help="print the runs' commands and stop")
    _add_feature_cache_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings for every run (e.g. epochs=1)")
    p.set_defaults(func=cmd_sweep)


def cmd_datasets(args: argparse.Namespace) -> int:
    """List each CoOp dataset's state under a data root; exit 0 only when every one asked for is complete."""
    from .data.check import check_dataset, format_state
    from .data.coop import COOP_DATASETS

    names = [n.strip() for n in args.dataset.split(",")] if args.dataset else list(COOP_DATASETS)
    for name in names:
        if name not in COOP_DATASETS:
            raise ClipadaptError(f"unknown dataset '{name}'; CoOp datasets: {', '.join(COOP_DATASETS)}")
    if not os.path.isdir(os.path.expanduser(args.data_root)):
        raise ClipadaptError(f"data root '{args.data_root}' is not a folder")
    states = [check_dataset(n, args.data_root) for n in names]
    for state in states:
        print("\n".join(format_state(state)))
    done = sum(s.complete for s in states)
    print(f"{done} of {len(states)} datasets complete under {os.path.abspath(os.path.expanduser(args.data_root))}"
          + ("" if done == len(states) else "; see github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"))
    return 0 if done == len(states) else 1


def add_datasets_parser(sub) -> None:
    """`clipadapt datasets --data-root DIR`."""
    p = sub.add_parser("datasets", help="check which CoOp datasets a data root holds, and what is missing",
                       description="For every CoOp dataset (or those given): complete, with its classes and "
                                   "train/val/test counts, or the exact missing file or folder and where CoOp's "
                                   "DATASETS.md gets it, and images listed in a split file that are not on disk. "
                                   "Exit code 0 only when every dataset asked for is complete.")
    p.add_argument("--data-root", required=True, help="folder holding the datasets in CoOp's layout")
    p.add_argument("--dataset", help="comma-separated datasets to check (default: all 15)")
    p.set_defaults(func=cmd_datasets)


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv, accepting key=value overrides anywhere after the sub-command, also after its options."""
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
    args = parse_command_line(parser, argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(message)s")
    if not args.command:
        parser.print_help()
        return 2
    try:
        _resolve_pretrained(args)
        _preflight(args)
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
