"""What an answer says about each matched frame and how matches group in time (part of
:class:`~stream.messages.QueryResult`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stream.message_base import Schema

__all__ = ["FrameRef", "Match", "MatchGeometry", "Segment"]


class FrameRef(Schema):
    """Where a matched frame's pixels live, so a client can decode it again from Kafka (the worker keeps none).

    Read the record at ``topic``/``partition``/``offset`` (a :class:`VideoChunk`), decode its segment and take
    the decoded frame number ``frame_index`` (0-based, counting every decoded frame of the chunk, sampled or not;
    ``frame == chunk.first_frame + frame_index``).

    Attributes:
        topic: the video topic.
        partition: the record's partition.
        offset: the record's offset.
        frame_index: the frame's position among the chunk's decoded frames.
    """

    topic: str = Field(min_length=1, max_length=256)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    frame_index: int = Field(ge=0)


class MatchGeometry(Schema):
    """Geometric proof of a match: the query image's outline found in the matched frame.

    Mutual nearest-neighbour matches of the query's and the frame's stored local features, and one RANSAC
    homography (or a partial affine transform when a homography is degenerate) through them. Coordinates are
    pixels of the frame as indexed (``frame_size``; a client that decodes the frame at another size scales them).

    Attributes:
        status: ``verified``: a consistent transform with at least the minimum inliers; ``no_geometry``: none
            (``reason`` says why; the other fields are empty or zero).
        model: ``homography`` or ``affine``.
        inliers: correspondences consistent with the transform.
        correspondences: mutual nearest-neighbour matches tried.
        transform: 3x3 row-major matrix mapping query pixels ``(x, y, 1)`` to frame pixels.
        polygon: the query image's corners (top-left, top-right, bottom-right, bottom-left) in frame pixels
            ``[x, y]``.
        box: ``[x0, y0, x1, y1]``: the polygon's bounding box clipped to the frame.
        frame_size: ``[width, height]`` of the frame the coordinates refer to.
        reason: why there is no geometry (``no_geometry``), e.g. ``too few correspondences (3 < 4)``.
    """

    status: Literal["verified", "no_geometry"]
    model: Literal["homography", "affine"] | None = None
    inliers: int = Field(0, ge=0)
    correspondences: int = Field(0, ge=0)
    transform: list[list[float]] | None = Field(None, min_length=3, max_length=3)
    polygon: list[tuple[float, float]] | None = Field(None, min_length=4, max_length=4)
    box: tuple[float, float, float, float] | None = None
    frame_size: tuple[int, int] | None = None
    reason: str | None = Field(None, max_length=512)


class Match(Schema):
    """One frame that matches a query.

    Attributes:
        camera_id, frame, timestamp: the frame (frame number within the camera's stream; Unix time).
        score: final score of the mode (higher is better).
        stage_scores: score per stage (``local``, ``global``, ``l2g``, ``inliers``, ...).
        frame_ref: where the frame can be fetched back from Kafka; None when unknown (a frame indexed before the
            index kept chunk positions).
        geometry: the geometric proof (the first ``query.verify_top`` matches); None when not verified.
    """

    camera_id: str
    frame: int
    timestamp: float
    score: float
    stage_scores: dict[str, float] = Field(default_factory=dict)
    frame_ref: FrameRef | None = None
    geometry: MatchGeometry | None = None


class Segment(Schema):
    """A per-camera time range of an answer: matches of one camera whose times are close merged into one.

    Attributes:
        camera_id: the camera.
        start, end: Unix times of the segment's earliest and latest matched frame (inclusive).
        best_frame, best_timestamp: the segment's best-scoring match (frame number; Unix time).
        score: that match's score.
        frame_count: matches in the segment.
        match_indices: positions of the segment's matches in ``QueryResult.matches``, best first.
    """

    camera_id: str
    start: float
    end: float
    best_frame: int
    best_timestamp: float
    score: float
    frame_count: int = Field(ge=1)
    match_indices: list[int] = Field(default_factory=list)
