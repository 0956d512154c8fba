"""How accuracies are combined, free of torch so that `report` can use it without the training stack."""

from __future__ import annotations


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two accuracies (0 when either is 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)
