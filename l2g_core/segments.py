"""Answers in time segments: a ranked list of hits merged into per-camera time ranges.

"When" to a user is a time range, not ten frames from the same second: hits of one camera whose event times are
at most ``gap`` seconds apart (chained: each to the previous one in time) form one segment. Segments are ordered
by their best hit: by score, as the ranking is. The input order is the ranking: where scores are not monotonic
(``l2g`` keeps the stage-1 score of candidates below its re-ranked head) a segment's best hit is its best-ranked
one and segments follow their best hit's rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from l2g_core.errors import ConfigError
from l2g_core.types import Hit

__all__ = ["DEFAULT_GAP_S", "TimeSegment", "default_gap", "segment_hits"]

DEFAULT_GAP_S = 2.0


@dataclass(frozen=True)
class TimeSegment:
    """Hits of one camera close in time.

    Attributes:
        camera_id: the camera.
        start, end: event times (Unix seconds, float) of the earliest and latest hit, inclusive.
        best_frame: frame number (``FrameKey.sequence``) of the best (best-ranked) hit.
        best_timestamp: its event time.
        best_score: its score.
        frame_count: hits in the segment (at least 1).
        members: positions of the segment's hits in the input list, ascending (best first: the input is ranked).
    """

    camera_id: str
    start: float
    end: float
    best_frame: int
    best_timestamp: float
    best_score: float
    frame_count: int
    members: tuple[int, ...]

    @property
    def duration(self) -> float:
        """``end - start`` seconds (0 for one hit)."""
        return self.end - self.start


def default_gap(sample_fps: float | None) -> float:
    """The merging gap for frames sampled at ``sample_fps`` (None or <= 0: every frame): the larger of
    :data:`DEFAULT_GAP_S` and three sampling intervals, so that one missed sample does not split a segment."""
    if sample_fps is None or sample_fps <= 0:
        return DEFAULT_GAP_S
    return max(DEFAULT_GAP_S, 3.0 / sample_fps)


def segment_hits(hits: Sequence[Hit], gap: float = DEFAULT_GAP_S) -> list[TimeSegment]:
    """Merge ranked hits into per-camera time segments.

    Args:
        hits: hits, best first (their order is the rank: a segment's best hit is its first member).
        gap: two hits of one camera at most this many seconds apart belong to one segment; merging chains, so a
            segment may span more than ``gap``. ``0`` merges only hits at the same time.

    Returns:
        The segments in the order of their best hit's rank (by ``best_score`` for a list ranked by score). Every
        hit is in exactly one segment.

    Raises:
        ConfigError: ``gap`` is negative or not finite.
    """
    if not (isinstance(gap, (int, float)) and math.isfinite(gap) and gap >= 0):
        raise ConfigError(f"gap must be a finite number of seconds >= 0, got {gap!r}")
    by_camera: dict[str, list[int]] = {}
    for i, hit in enumerate(hits):
        by_camera.setdefault(hit.key.camera_id, []).append(i)
    groups: list[list[int]] = []
    for members in by_camera.values():
        ordered = sorted(members, key=lambda i: (hits[i].key.timestamp, i))
        current = [ordered[0]]
        for prev, i in pairwise(ordered):
            if hits[i].key.timestamp - hits[prev].key.timestamp <= gap:
                current.append(i)
            else:
                groups.append(current)
                current = [i]
        groups.append(current)
    out = []
    for group in groups:
        ranked = sorted(group)
        best = hits[ranked[0]]
        times = [hits[i].key.timestamp for i in group]
        out.append(TimeSegment(
            camera_id=best.key.camera_id, start=float(min(times)), end=float(max(times)),
            best_frame=int(best.key.sequence), best_timestamp=float(best.key.timestamp),
            best_score=float(best.score), frame_count=len(group), members=tuple(ranked),
        ))
    out.sort(key=lambda s: s.members[0])
    return out
