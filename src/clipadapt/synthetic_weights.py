"""The tiny CLIP shipped inside the package (pretrained on the synthetic world)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = {"synthetic": ("clipadapt-synthetic", WEIGHTS_DIR / "synthetic-clip.safetensors")}


def resolve_shipped(name: str, pretrained: str | None) -> tuple[str, str | None]:
    """Map the shipped backbone's short name to its open_clip config and weights file."""
    if name not in SHIPPED:
        return name, pretrained
    config, path = SHIPPED[name]
    if pretrained in ("none", None, ""):
        return config, None
    if pretrained in ("shipped", "default") and path.is_file():
        return config, str(path)
    return config, pretrained
