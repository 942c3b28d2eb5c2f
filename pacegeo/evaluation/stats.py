"""Paired comparisons over scenes: mean gain and its bootstrap interval."""

from __future__ import annotations

import numpy as np


def paired_gain_ci(mine: list[float], other: list[float], higher: bool, n_boot: int = 4000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean per-scene gain of ``mine`` over ``other`` (positive = ``mine`` better) and its 95%
    bootstrap interval, resampling scenes (both lists hold the same scenes in the same order)."""
    diff = np.asarray(mine, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if not higher:
        diff = -diff
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


__all__ = ["paired_gain_ci"]
