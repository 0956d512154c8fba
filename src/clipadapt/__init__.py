"""clipadapt: few-shot adaptation of CLIP with multimodal adapters."""

__version__ = "0.1.0"

__all__ = ["__version__", "build_dataset", "build_model", "load_model", "AdaptedCLIP", "preprocess", "train_settings"]

# Imported on first use, so that `clipadapt --help` (which imports this package) does not load torch.
_LAZY = {"build_dataset": "clipadapt.data", "build_model": "clipadapt.model", "load_model": "clipadapt.model",
         "AdaptedCLIP": "clipadapt.model", "train_settings": "clipadapt.runconfig"}


def preprocess(model):
    """The transform from a PIL image to the tensor `model` takes: CoOp's test transform at the backbone's size."""
    from .evaluation import model_transform

    return model_transform(model)


def __getattr__(name: str):
    """Load the public API lazily."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipadapt' has no attribute {name!r}")
