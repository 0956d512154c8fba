"""clipadapt: few-shot adaptation of CLIP with multimodal adapters."""

__version__ = "0.1.0"

from .data import build_dataset  # noqa: E402
from .model import AdaptedCLIP, build_model, load_model  # noqa: E402

__all__ = ["__version__", "build_dataset", "build_model", "load_model", "AdaptedCLIP"]
