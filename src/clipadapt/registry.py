"""Names the command line lists in its help, kept free of torch so that `clipadapt --help` starts fast.

`clipadapt.methods.METHODS` and `clipadapt.data.known_datasets()` are the registries themselves;
tests/test_settings.py checks that these lists name the same methods and datasets.
"""

METHOD_NAMES = ("zeroshot", "clip_adapter", "coop", "mma", "mma_pp", "rmadapter", "rmma", "mma_attn", "mmrl", "maple",
                "clip_lora")
PROTOCOL_NAMES = ("base2novel", "fewshot", "cross_dataset", "domain_generalization", "dg")  # dg: an alias
SYNTHETIC_DATASET_NAMES = ("syn_shapes", "syn_colours", "syn_objects", "syn_patterns", "syn_counts", "syn_layouts",
                           "syn_objects_sketch", "syn_objects_noise", "syn_objects_clutter")


def dataset_names() -> list[str]:
    """The names `build_dataset` accepts: CoOp's benchmarks, an image folder, the synthetic world."""
    from .data.coop import COOP_DATASETS  # plain Python: no torch, no numpy

    return [*COOP_DATASETS, "folder", *SYNTHETIC_DATASET_NAMES]
