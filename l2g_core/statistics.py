"""Confidence intervals for retrieval metrics: per-query bootstrap and paired bootstrap of a difference.

A benchmark reports a mean over queries (mAP, P@1, ...). With a few hundred queries its sampling error is several
points, so every figure carries a 95 % interval from resampling the queries with replacement, and a claim that one
mode beats another is a *paired* bootstrap: the same resampled queries for both modes, the interval of the
difference of means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2g_core.errors import ConfigError

__all__ = ["Interval", "bootstrap_mean", "paired_difference"]


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval.

    Attributes:
        value: the statistic on the full sample.
        low, high: percentile bootstrap interval bounds.
        n: the number of (non-NaN) per-query values used.
    """

    value: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (for a difference: one side wins)."""
        return self.low > 0 or self.high < 0

    def scaled(self, factor: float, digits: int = 2) -> dict[str, float]:
        """``{"value", "low", "high"}`` multiplied by ``factor`` (e.g. 100 for percent) and rounded."""
        return {"value": round(self.value * factor, digits), "low": round(self.low * factor, digits),
                "high": round(self.high * factor, digits)}


def _values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"per-query values must be 1-D, got shape {arr.shape}")
    return arr


def _resample_means(arr: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, arr.shape[0], size=(rounds, arr.shape[0]))
    out: np.ndarray = arr[idx].mean(axis=1)
    return out


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, rounds: int = 2000, confidence: float = 0.95,
                   seed: int = 0, statistic: str = "mean") -> Interval:
    """Percentile bootstrap interval of the mean (or median) of per-query values; NaN values are dropped.

    Args:
        values: ``(Q,)`` per-query values (e.g. average precisions).
        rounds: bootstrap resamples.
        confidence: interval coverage.
        seed: RNG seed (the interval is reproducible).
        statistic: ``mean`` or ``median``.

    Raises:
        ConfigError: bad arguments.
    """
    if statistic not in ("mean", "median"):
        raise ConfigError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    arr = _values(values)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.shape[0], size=(rounds, arr.shape[0]))
    stats = np.median(arr[idx], axis=1) if statistic == "median" else arr[idx].mean(axis=1)
    point = float(np.median(arr) if statistic == "median" else arr.mean())
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(point, float(low), float(high), int(arr.size))


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, rounds: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap interval of ``mean(a) - mean(b)`` with queries resampled jointly (a paired test).

    Args:
        a, b: ``(Q,)`` per-query values of two methods on the same queries; a query that is NaN in either is
            dropped from both.

    Raises:
        ConfigError: different lengths.
    """
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise ConfigError(f"paired values differ in length: {x.shape[0]} and {y.shape[0]}")
    keep = ~(np.isnan(x) | np.isnan(y))
    diff = x[keep] - y[keep]
    if diff.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    means = _resample_means(diff, rounds, np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(diff.mean()), float(low), float(high), int(diff.size))
