"""Hits merged into per-camera time segments (l2g_core.segments)."""

from __future__ import annotations

import pytest

from l2g_core.errors import ConfigError
from l2g_core.segments import DEFAULT_GAP_S, default_gap, segment_hits
from l2g_core.types import FrameKey, Hit


def hit(camera: str, t: float, seq: int, score: float) -> Hit:
    return Hit(FrameKey(camera, t, seq), score)


def test_close_hits_of_one_camera_merge_and_segments_follow_the_best_hit() -> None:
    hits = [
        hit("a", 100.0, 10, 0.9),
        hit("b", 100.5, 5, 0.8),
        hit("a", 101.5, 11, 0.7),
        hit("a", 103.0, 12, 0.6),  # 1.5 s after 101.5: chained into a's first segment
        hit("a", 110.0, 20, 0.5),  # 7 s later: a second segment of a
        hit("b", 99.0, 4, 0.4),
    ]
    segs = segment_hits(hits, gap=2.0)
    assert [(s.camera_id, s.start, s.end, s.frame_count) for s in segs] == [
        ("a", 100.0, 103.0, 3), ("b", 99.0, 100.5, 2), ("a", 110.0, 110.0, 1)]
    first = segs[0]
    assert (first.best_frame, first.best_timestamp, first.best_score) == (10, 100.0, 0.9)
    assert first.members == (0, 2, 3) and segs[1].members == (1, 5) and segs[2].members == (4,)
    assert first.duration == 3.0
    assert sorted(i for s in segs for i in s.members) == list(range(len(hits)))


def test_gap_zero_keeps_every_time_apart_and_a_large_gap_merges_a_camera() -> None:
    hits = [hit("a", 1.0, 1, 0.9), hit("a", 1.0, 2, 0.8), hit("a", 1.5, 3, 0.7)]
    assert [s.frame_count for s in segment_hits(hits, gap=0.0)] == [2, 1]
    assert [s.frame_count for s in segment_hits(hits, gap=60.0)] == [3]


def test_rank_wins_over_a_non_monotonic_score() -> None:
    """l2g's tail keeps stage-1 scores that may exceed the re-ranked head's: the best hit is the best-ranked."""
    hits = [hit("a", 1.0, 1, 0.3), hit("b", 50.0, 2, 0.2), hit("a", 1.5, 3, 0.9)]
    segs = segment_hits(hits)
    assert [s.camera_id for s in segs] == ["a", "b"]
    assert (segs[0].best_frame, segs[0].best_score) == (1, 0.3)


def test_empty_and_bad_gap() -> None:
    assert segment_hits([]) == []
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            segment_hits([hit("a", 1.0, 1, 1.0)], gap=bad)


def test_default_gap_covers_missed_samples() -> None:
    assert default_gap(None) == default_gap(0) == DEFAULT_GAP_S
    assert default_gap(5.0) == DEFAULT_GAP_S
    assert default_gap(0.5) == 6.0
