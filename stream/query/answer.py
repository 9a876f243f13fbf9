"""The answer's presentation: a ranking's hits as wire matches (with where each frame lives and its geometric
proof) and the matches merged into per-camera time segments."""

from __future__ import annotations

from collections.abc import Sequence

from l2g_core import Hit
from l2g_core.geometry import Geometry
from l2g_core.segments import segment_hits
from stream.messages import FrameRef, Match, MatchGeometry, Segment

__all__ = ["geometry_message", "match_of", "segments_of"]


def geometry_message(geometry: Geometry, frame_size: tuple[int, int] | None) -> MatchGeometry:
    """The wire form of a proof (``frame_size``: ``(width, height)`` of the frame as indexed, when known)."""
    if geometry.status != "verified" or geometry.transform is None or geometry.polygon is None:
        return MatchGeometry(status="no_geometry", inliers=geometry.inliers,
                             correspondences=geometry.correspondences, reason=geometry.reason)
    return MatchGeometry(
        status="verified", model=geometry.model, inliers=geometry.inliers, correspondences=geometry.correspondences,
        transform=[[float(v) for v in row] for row in geometry.transform],
        polygon=[(float(x), float(y)) for x, y in geometry.polygon],
        box=geometry.box, frame_size=frame_size,
    )


def match_of(hit: Hit, geometry: Geometry | None, video_topic: str) -> Match:
    """A hit as a wire match: the frame, its scores, where it lives (``video_topic``) and its proof (if any)."""
    src = hit.key.source
    ref = None if src is None else FrameRef(topic=video_topic, partition=src.partition, offset=src.offset,
                                            frame_index=src.index)
    size = None if src is None or not (src.width and src.height) else (src.width, src.height)
    return Match(camera_id=hit.key.camera_id, frame=int(hit.key.sequence), timestamp=float(hit.key.timestamp),
                 score=float(hit.score), stage_scores=dict(hit.stage_scores), frame_ref=ref,
                 geometry=None if geometry is None else geometry_message(geometry, size))


def segments_of(hits: Sequence[Hit], gap: float) -> list[Segment]:
    """The hits (best first) merged into per-camera time segments at most ``gap`` seconds apart (see
    :func:`l2g_core.segments.segment_hits`); ``match_indices`` are positions in ``hits``."""
    return [Segment(camera_id=s.camera_id, start=s.start, end=s.end, best_frame=s.best_frame,
                    best_timestamp=s.best_timestamp, score=s.best_score, frame_count=s.frame_count,
                    match_indices=list(s.members))
            for s in segment_hits(hits, gap)]
