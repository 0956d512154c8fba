"""clipadapt: few-shot adaptation of CLIP with multimodal adapters."""

import importlib

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "train",
    "evaluate",
    "transfer",
    "predict",
    "build_dataset",
    "build_model",
    "load_model",
    "AdaptedCLIP",
    "preprocess",
    "train_settings",
    "Method",
    "MethodConfig",
    "Paper",
    "Backbone",
    "TextBatch",
    "method_class",
]

# Imported on first use, so that `clipadapt --help` (which imports this package) does not load torch:
# public name -> (module, attribute). `train`, `evaluate`, `transfer` and `predict` are the run API
# (clipadapt.run), what the command line's sub-commands of those names call. `preprocess(model)` is the PIL-image-to-tensor transform a model takes.
_LAZY = {
    "train": ("clipadapt.run", "train"),
    "evaluate": ("clipadapt.run", "evaluate"),
    "transfer": ("clipadapt.run", "transfer"),
    "predict": ("clipadapt.run", "predict"),
    "build_dataset": ("clipadapt.data", "build_dataset"),
    "build_model": ("clipadapt.model", "build_model"),
    "load_model": ("clipadapt.model", "load_model"),
    "AdaptedCLIP": ("clipadapt.model", "AdaptedCLIP"),
    "preprocess": ("clipadapt.evaluation", "model_transform"),
    "train_settings": ("clipadapt.runconfig", "train_settings"),
    # Writing a method (docs/writing-a-method.md): the base classes, the paper it names, the types its
    # hooks take, and the one lookup from a method's name (or `module:Class`) to its class.
    "Method": ("clipadapt.methods", "Method"),
    "MethodConfig": ("clipadapt.methods", "MethodConfig"),
    "Paper": ("clipadapt.methods", "Paper"),
    "Backbone": ("clipadapt.backbone", "Backbone"),
    "TextBatch": ("clipadapt.backbone", "TextBatch"),
    "method_class": ("clipadapt.methods", "method_class"),
}


def __getattr__(name: str):
    """Load the public API lazily."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'clipadapt' has no attribute {name!r}")
