"""Bootstrap intervals and the paired difference; segment AP and time error of the video benchmark."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2g_core.errors import ConfigError
from l2g_core.evaluation import segment_average_precision, time_error
from l2g_core.statistics import bootstrap_mean, paired_difference


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap_mean(rng.uniform(size=30))
    large = bootstrap_mean(rng.uniform(size=3000))
    assert small.low <= small.value <= small.high
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert large.low < 0.5 < large.high and large.n == 3000


def test_bootstrap_drops_nan_and_is_reproducible() -> None:
    values = [1.0, float("nan"), 0.0, 1.0]
    a, b = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert a == b and a.n == 3 and math.isclose(a.value, 2 / 3)
    assert bootstrap_mean([float("nan")]).n == 0


def test_median_statistic() -> None:
    assert bootstrap_mean([0.0, 1.0, 10.0], statistic="median").value == 1.0
    with pytest.raises(ConfigError):
        bootstrap_mean([1.0], statistic="mode")


def test_paired_difference_detects_a_consistent_small_gain_that_unpaired_intervals_miss() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(size=200)
    better = np.clip(base + 0.02, 0, None)  # every query 0.02 better: a paired test is sure, the marginals overlap
    diff = paired_difference(better, base)
    assert diff.significant and diff.low > 0 and math.isclose(diff.value, 0.02, abs_tol=1e-9)
    a, b = bootstrap_mean(better), bootstrap_mean(base)
    assert a.low < b.high  # the marginal intervals overlap
    same = paired_difference(base, base)
    assert not same.significant and same.value == 0.0


def test_paired_difference_needs_equal_lengths() -> None:
    with pytest.raises(ConfigError):
        paired_difference([1.0, 2.0], [1.0])


def test_segment_average_precision_is_the_reciprocal_rank_of_the_first_overlapping_segment() -> None:
    segments = [("a", 0.0, 5.0), ("b", 9.0, 12.0), ("b", 20.0, 20.0)]
    assert segment_average_precision(segments, "b", (11.0, 15.0)) == 0.5
    assert segment_average_precision(segments, "b", (18.0, 22.0)) == pytest.approx(1 / 3)
    assert segment_average_precision(segments, "a", (6.0, 8.0)) == 0.0
    assert segment_average_precision([], "a", (0.0, 1.0)) == 0.0


def test_time_error() -> None:
    assert time_error("a", 12.0, "a", 10.5) == 1.5
    assert time_error("b", 10.5, "a", 10.5) == math.inf
