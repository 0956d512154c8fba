"""Datasets drawn from the project's synthetic world (filled in by the synthetic-world module)."""

from __future__ import annotations

SYNTHETIC_DATASETS: dict = {}


def read_synthetic(name: str, root: str):
    """Train/val/test items and prompt template of a synthetic dataset."""
    raise KeyError(name)
