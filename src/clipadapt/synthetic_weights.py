"""The tiny CLIP shipped inside the package, pretrained on the synthetic world."""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED_NAME = "synthetic"
SHIPPED_CONFIG = "clipadapt-synthetic"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "synthetic-clip.safetensors"
SHIPPED_RECORD = WEIGHTS_DIR / "synthetic-clip.json"
SHIPPED_TAGS = ("shipped", "default", "synthetic", None, "")


def is_shipped(name: str) -> bool:
    """Whether a backbone name means the shipped tiny CLIP."""
    return name in (SHIPPED_NAME, SHIPPED_CONFIG)


def shipped_record() -> dict:
    """What was measured when the shipped weights were made (zero-shot accuracies, training settings)."""
    with open(SHIPPED_RECORD) as f:
        return json.load(f)


def load_shipped(pretrained: str | None):
    """(model, identity) for the shipped tiny CLIP: its weights, an exported file, or random ('none')."""
    import open_clip
    import torch

    from .backbone import weights_identity
    from .errors import ClipadaptError
    from .synthetic.pretrain import load_exported

    if pretrained == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(SHIPPED_CONFIG), f"{SHIPPED_NAME}/none"
    path = SHIPPED_WEIGHTS if pretrained in SHIPPED_TAGS else Path(pretrained)
    if not path.is_file():
        raise ClipadaptError(f"weights of the synthetic backbone not found at '{path}' "
                             "(run `clipadapt pretrain-synthetic --install` to make them)")
    return load_exported(str(path)), weights_identity(SHIPPED_NAME, str(path))
