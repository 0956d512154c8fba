"""The names clipadapt knows, in one place and free of torch, so that `clipadapt --help` and the
checks before a run start fast: methods (and the module and class of each), protocols, datasets.

`clipadapt.methods.METHODS` imports the classes listed here; nothing else lists the methods.
"""

from __future__ import annotations

# name -> (module under clipadapt.methods, class), in the order the help and the tables list them.
METHOD_CLASSES = {
    "zeroshot": ("zeroshot", "ZeroShot"),
    "clip_adapter": ("clip_adapter", "CLIPAdapter"),
    "coop": ("coop", "CoOp"),
    "mma": ("mma", "MMA"),
    "mma_pp": ("mma_pp", "MMAPP"),
    "rmadapter": ("rmadapter", "RMAdapter"),
    "rmma": ("rmma", "RMMA"),
    "mma_attn": ("mma_attn", "MMAAttn"),
    "mmrl": ("mmrl", "MMRL"),
    "maple": ("maple", "MaPLe"),
    "clip_lora": ("clip_lora", "CLIPLoRA"),
    "promptsrc": ("promptsrc", "PromptSRC"),
    "cocoop": ("cocoop", "CoCoOp"),
    "kgcoop": ("kgcoop", "KgCoOp"),
}
METHOD_NAMES = tuple(METHOD_CLASSES)

PROTOCOLS = ("base2novel", "fewshot", "cross_dataset", "domain_generalization")
PROTOCOL_ALIASES = {"dg": "domain_generalization"}
PROTOCOL_NAMES = (*PROTOCOLS, *PROTOCOL_ALIASES)  # what --protocol accepts

SYNTHETIC_DATASET_NAMES = (
    "syn_shapes",
    "syn_colours",
    "syn_objects",
    "syn_patterns",
    "syn_counts",
    "syn_layouts",
    "syn_objects_sketch",
    "syn_objects_noise",
    "syn_objects_clutter",
)
FOLDER_DATASET = "folder"

# config.yaml keys that say how a run was executed rather than what it is: not settings at all.
RUN_CIRCUMSTANCES = ("world_size",)
# config.yaml keys that change no number a run computes: where the data lies, how a run was executed, the
# preset file the settings came from (its contents are the settings beside it), data loader processes,
# evaluation and image-class pair batching, the prefix cache's size, logging. The resume check, the sweep's
# rerun check and the report's rows all ignore them.
NUMBER_NEUTRAL_KEYS = (
    "data_root",
    *RUN_CIRCUMSTANCES,
    "preset",
    "workers",
    "eval_batch_size",
    "prefix_cache_mb",
    "log_every",
    "logger",
    "pair_chunk",
)


def canonical_protocol(name: str) -> str:
    """The protocol's full name (`dg` is domain_generalization); an unknown name is an error."""
    from .errors import ClipadaptError

    name = PROTOCOL_ALIASES.get(name, name)
    if name not in PROTOCOLS:
        raise ClipadaptError(
            f"unknown protocol '{name}'; known: {', '.join(PROTOCOLS)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in PROTOCOL_ALIASES.items())})"
        )
    return name


def dataset_names() -> list[str]:
    """The names `build_dataset` accepts: CoOp's benchmarks, an image folder, the synthetic world."""
    from .data.coop import COOP_DATASETS  # plain Python: no torch, no numpy

    return [*COOP_DATASETS, FOLDER_DATASET, *SYNTHETIC_DATASET_NAMES]
