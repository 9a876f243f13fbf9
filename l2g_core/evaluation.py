"""Retrieval metrics: mAP under the Revisited Oxford/Paris protocol, precision and recall at k.

``average_precision`` follows revisitop's ``compute_ap``: junk items are removed from the ranking (neither
positive nor negative) and precision is integrated with the trapezoid rule. Positives missing from a
truncated ranking never count, so a top-k list gives a lower bound.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "GroundTruth",
    "average_precision",
    "group_ground_truth",
    "load_groups",
    "mean_average_precision",
    "precision_at_k",
    "recall_at_k",
    "segment_average_precision",
    "time_error",
]


@dataclass(frozen=True)
class GroundTruth:
    """Relevance of database items for one query.

    Attributes:
        ok: items that count as correct.
        junk: items ignored by the metrics (e.g. the query itself, or "hard" items in the Easy setup).
    """

    ok: frozenset[Hashable]
    junk: frozenset[Hashable] = field(default_factory=frozenset)


def _positions(ranking: Sequence[Hashable], gt: GroundTruth) -> np.ndarray:
    """0-based ranks of the ok items after junk items are removed from the ranking."""
    pos = []
    junk_before = 0
    for rank, item in enumerate(ranking):
        if item in gt.junk:
            junk_before += 1
        elif item in gt.ok:
            pos.append(rank - junk_before)
    return np.asarray(pos, dtype=np.int64)


def average_precision(ranking: Sequence[Hashable], gt: GroundTruth) -> float:
    """Trapezoid-rule AP of one ranking (revisitop). NaN when the query has no positive."""
    n_ok = len(gt.ok)
    if n_ok == 0:
        return float("nan")
    ap = 0.0
    for j, r in enumerate(_positions(ranking, gt)):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / 2.0 / n_ok
    return ap


def mean_average_precision(rankings: Sequence[Sequence[Hashable]], gts: Sequence[GroundTruth]) -> float:
    """mAP over queries; queries without positives are excluded (revisitop)."""
    aps = [average_precision(r, g) for r, g in zip(rankings, gts, strict=True)]
    valid = [a for a in aps if not np.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def precision_at_k(ranking: Sequence[Hashable], gt: GroundTruth, k: int) -> float:
    """Share of ok items among the first ``k`` non-junk results."""
    kept = [item for item in ranking if item not in gt.junk][:k]
    return sum(item in gt.ok for item in kept) / k


def recall_at_k(ranking: Sequence[Hashable], gt: GroundTruth, k: int) -> float:
    """Share of ok items found among the first ``k`` non-junk results (NaN without positives)."""
    if not gt.ok:
        return float("nan")
    kept = [item for item in ranking if item not in gt.junk][:k]
    return sum(item in gt.ok for item in kept) / len(gt.ok)


def load_groups(path: str | Path) -> dict[str, list[str]]:
    """Read a groups file (``{"groups": {name: [relative paths]}}``, e.g. ``gt/landmark_groups.json``)."""
    data = json.loads(Path(path).read_text())
    return {str(name): [str(p) for p in items] for name, items in data["groups"].items()}


def group_ground_truth(
    queries: Iterable[Hashable], groups: Mapping[str, Sequence[Hashable]]
) -> list[GroundTruth]:
    """Ground truth when any two members of a group are positives: ok = the other members, junk = itself."""
    group_of = {item: name for name, items in groups.items() for item in items}
    out = []
    for q in queries:
        members = frozenset(groups[group_of[q]]) if q in group_of else frozenset()
        out.append(GroundTruth(ok=members - {q}, junk=frozenset({q})))
    return out


def segment_average_precision(segments: Sequence[tuple[str, float, float]], camera_id: str,
                              window: tuple[float, float]) -> float:
    """AP of a ranked list of time segments when one camera's time window is the single positive.

    A segment ``(camera_id, start, end)`` is a hit when it is on ``camera_id`` and overlaps ``window``
    (``start <= window[1]`` and ``end >= window[0]``); with one positive the AP is the reciprocal rank of the first
    hit (0 when none).
    """
    for rank, (camera, start, end) in enumerate(segments, start=1):
        if camera == camera_id and start <= window[1] and end >= window[0]:
            return 1.0 / rank
    return 0.0


def time_error(camera_id: str, timestamp: float, source_camera: str, source_time: float) -> float:
    """Seconds between a top match and the query's source frame; ``inf`` on another camera."""
    return abs(timestamp - source_time) if camera_id == source_camera else float("inf")
