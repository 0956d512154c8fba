"""Frozen image features of evaluation images, kept on disk across runs, seeds and methods.

For a method whose image tower is CLIP's own (`Method.image_tower_is_frozen`), a test image's
features before `after_heads` depend only on the backbone's weights, the image file, the transform
and the precision they were computed in. They are computed once and stored as one safetensors file
per (backbone identity, dataset, split, exact list of image paths, transform, precision, device
type). The whole key is stored inside the file and compared on read, so a file can only ever be read
for the key it was written for; a file that cannot be read is logged as a warning and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .data.datum import Datum
from .fileio import atomic_path

log = logging.getLogger(__name__)

FORMAT = "clipadapt-features/1"
ENV_VAR = "CLIPADAPT_CACHE"  # the root of clipadapt's caches; features live in its features/ folder


def default_cache_dir() -> Path:
    """$CLIPADAPT_CACHE/features, else $XDG_CACHE_HOME/clipadapt/features, else ~/.cache/clipadapt/features."""
    root = os.environ.get(ENV_VAR)
    if root:
        return Path(root).expanduser() / "features"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "clipadapt" / "features"


def items_digest(items: list[Datum]) -> str:
    """SHA-256 of the ordered list of image paths."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(os.fsencode(item.impath) + b"\0")
    return digest.hexdigest()


class FeatureCache:
    """A folder of frozen image features, one file per key; `verbose` logs what it reads and writes."""

    def __init__(self, folder: str | os.PathLike | None = None, verbose: bool = True):
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()
        self.verbose = verbose
        self.reads = 0
        self.writes = 0

    def _say(self, message: str) -> None:
        if self.verbose:
            log.info("feature cache: %s", message)

    @staticmethod
    def names_weights(backbone_identity: str) -> bool:
        """Whether an identity names fixed weights (a random initialisation, '.../none', names none)."""
        return not backbone_identity.endswith("/none")

    @staticmethod
    def key(
        backbone_identity: str,
        dataset: str,
        split: str,
        items: list[Datum],
        transform: str,
        precision: str,
        device_type: str,
    ) -> dict[str, str]:
        """Everything the features depend on, as strings."""
        return {
            "format": FORMAT,
            "backbone_identity": backbone_identity,
            "dataset": dataset,
            "split": split,
            "num_images": str(len(items)),
            "items_sha256": items_digest(items),
            "transform": transform,
            "precision": precision,
            "device_type": device_type,
        }

    def path(self, key: dict[str, str]) -> Path:
        """The file of a key: named by the hash of the whole key."""
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"{name}.safetensors"

    def load(self, key: dict[str, str]) -> torch.Tensor | None:
        """The stored features of `key`, or None when absent or unreadable (then logged as a warning)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = json.loads((f.metadata() or {}).get("key", "null"))
                if stored != key:
                    raise ValueError("its key is not the one asked for")
                features = f.get_tensor("features")
            if features.ndim != 2 or features.shape[0] != int(key["num_images"]):
                raise ValueError(
                    f"it holds {tuple(features.shape)} features for {key['num_images']} images"
                )
        except (
            Exception
        ) as err:  # safetensors and json raise several types for a truncated or foreign file
            reason = " ".join(str(err).split())[:200]
            log.warning(
                "ignoring feature cache file '%s' (%s: %s); recomputing the features",
                path,
                type(err).__name__,
                reason,
            )
            return None
        self.reads += 1
        self._say(
            f"read {features.shape[0]} image features of {key['dataset']}/{key['split']} from {path}"
        )
        return features

    def save(self, key: dict[str, str], features: torch.Tensor) -> None:
        """Store features for `key`, whole or not at all."""
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file(
                {"features": features.detach().float().cpu().contiguous()},
                tmp,
                metadata={"key": json.dumps(key, sort_keys=True)},
            )
        self.writes += 1
        self._say(
            f"wrote {features.shape[0]} image features of {key['dataset']}/{key['split']} to {path}"
        )
