"""Geometric verification: mutual nearest neighbours + RANSAC, for the global-to-local baseline (inlier counts)
and as the proof of a match (:func:`find_geometry`: the query's outline projected into the matched frame)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from l2g_core.candidates import Candidates
from l2g_core.config import RetrievalConfig
from l2g_core.errors import ShapeError
from l2g_core.prepared import PreparedQuery
from l2g_core.types import FloatArray, Hit

__all__ = [
    "DEFAULT_MIN_INLIERS",
    "Geometry",
    "find_geometry",
    "mutual_matches",
    "outline",
    "ransac_inliers",
    "verify_hits",
]


def mutual_matches(a: np.ndarray, b: np.ndarray, min_similarity: float) -> np.ndarray:
    """Mutual nearest-neighbour matches between descriptor sets.

    Args:
        a: ``(Na, D)`` unit descriptors (float16 or float32).
        b: ``(Nb, D)`` unit descriptors.
        min_similarity: minimum cosine of a kept match.

    Returns:
        ``(M, 2)`` int64 index pairs ``(i in a, j in b)``.
    """
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((0, 2), np.int64)
    sims = a.astype(np.float32) @ b.astype(np.float32).T
    ab = sims.argmax(1)
    ba = sims.argmax(0)
    i = np.arange(a.shape[0])
    keep = (ba[ab] == i) & (sims[i, ab] >= min_similarity)
    return np.stack([i[keep], ab[keep]], axis=1).astype(np.int64)


def ransac_inliers(
    desc_a: np.ndarray, kp_a: FloatArray, desc_b: np.ndarray, kp_b: FloatArray, *,
    min_similarity: float, threshold: float,
) -> int:
    """Number of mutual-NN matches consistent with one RANSAC homography (0 with fewer than 4 matches)."""
    matches = mutual_matches(desc_a, desc_b, min_similarity)
    if matches.shape[0] < 4:
        return 0
    src = kp_a[matches[:, 0]].astype(np.float32)
    dst = kp_b[matches[:, 1]].astype(np.float32)
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=2000, confidence=0.999)
    return 0 if mask is None else int(mask.sum())


GeometryStatus = Literal["verified", "no_geometry"]
GeometryModel = Literal["homography", "affine"]
DEFAULT_MIN_INLIERS = 8  # fewer consistent matches prove nothing on real video crops (4-6 fit noise)
_MAX_SCALE = 10.0  # a query outline scaled by more than this (or less than 1/this) is not a plausible view


@dataclass(frozen=True)
class Geometry:
    """Geometric proof of one match: where the query image lies in the matched frame.

    Attributes:
        status: ``verified`` (a plausible transform with at least ``min_inliers`` inliers) or ``no_geometry``.
        model: ``homography`` or ``affine`` (a 4-DOF partial affine, tried when the homography is implausible);
            None without geometry.
        inliers: correspondences consistent with the transform (of the best model tried).
        correspondences: mutual nearest-neighbour matches tried.
        transform: ``(3, 3)`` float64 matrix mapping query pixels ``(x, y, 1)`` to frame pixels; None without
            geometry.
        polygon: ``(4, 2)`` float32 query outline (corners top-left, top-right, bottom-right, bottom-left of the
            query image) in frame pixels; None without geometry.
        box: ``(x0, y0, x1, y1)`` bounding box of ``polygon``, clipped to the frame when its size is known.
        reason: why there is no geometry (None when verified).
    """

    status: GeometryStatus
    model: GeometryModel | None = None
    inliers: int = 0
    correspondences: int = 0
    transform: np.ndarray | None = None
    polygon: FloatArray | None = None
    box: tuple[float, float, float, float] | None = None
    reason: str | None = None

    @staticmethod
    def none(reason: str, *, inliers: int = 0, correspondences: int = 0) -> Geometry:
        """No consistent geometry, and why."""
        return Geometry("no_geometry", inliers=inliers, correspondences=correspondences, reason=reason)


def outline(size: tuple[int, int]) -> FloatArray:
    """``(4, 2)`` float32 corners (top-left, top-right, bottom-right, bottom-left) of an image of ``size`` =
    ``(height, width)`` pixels, in pixel coordinates (``(0, 0)`` to ``(width, height)``)."""
    h, w = float(size[0]), float(size[1])
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], dtype=np.float32)


def _plausible(polygon: FloatArray, query_area: float) -> str | None:
    """Why ``polygon`` ``(4, 2)`` is not a plausible view of a query of ``query_area`` px^2 (None: it is)."""
    if not np.all(np.isfinite(polygon)):
        return "the transform sends the outline to infinity"
    edges = np.roll(polygon, -1, axis=0) - polygon
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not (np.all(cross > 0) or np.all(cross < 0)):
        return "the projected outline is not convex (folded or twisted)"
    x, y = polygon[:, 0].astype(np.float64), polygon[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if query_area <= 0 or not 1.0 / _MAX_SCALE**2 <= area / query_area <= _MAX_SCALE**2:
        return f"the projected outline is scaled implausibly (area ratio {area / max(query_area, 1e-9):.3g})"
    return None


def _project(transform: np.ndarray, corners: FloatArray) -> FloatArray:
    out: FloatArray = cv2.perspectiveTransform(corners[None].astype(np.float64), transform)[0].astype(np.float32)
    return out


def find_geometry(
    query_descriptors: np.ndarray, query_keypoints: FloatArray, query_size: tuple[int, int],
    frame_descriptors: np.ndarray, frame_keypoints: FloatArray, frame_size: tuple[int, int] | None = None, *,
    min_similarity: float, threshold: float, min_inliers: int = DEFAULT_MIN_INLIERS,
) -> Geometry:
    """The query image's outline in a frame, from mutual nearest-neighbour matches and RANSAC.

    A homography first; when it is missing, implausible (outline folded, or scaled by more than 10x) or has too
    few inliers, a 4-DOF partial affine transform (rotation, uniform scale, translation).

    Args:
        query_descriptors: ``(Nq, D)`` float32 (or float16) unit descriptors of the query.
        query_keypoints: ``(Nq, 2)`` float32 ``(x, y)`` pixels in the query image.
        query_size: ``(height, width)`` of the query image; ``(0, 0)`` when unknown: the keypoints' bounding box
            is the outline then.
        frame_descriptors: ``(Nf, D)`` float16 (or float32) unit descriptors of the frame.
        frame_keypoints: ``(Nf, 2)`` float32 ``(x, y)`` pixels in the frame.
        frame_size: ``(height, width)`` of the frame, to clip the box (None or ``(0, 0)``: not clipped).
        min_similarity: minimum cosine of a mutual match.
        threshold: RANSAC reprojection threshold in frame pixels.
        min_inliers: fewer inliers are "no geometry".

    Returns:
        The proof, or a ``no_geometry`` result saying why.
    """
    if query_descriptors.shape[0] != query_keypoints.shape[0] or frame_descriptors.shape[0] != frame_keypoints.shape[0]:
        raise ShapeError("descriptors and keypoints must have the same number of rows")
    matches = mutual_matches(query_descriptors, frame_descriptors, min_similarity)
    n = int(matches.shape[0])
    if n < max(4, min_inliers):
        return Geometry.none(f"too few correspondences ({n} < {max(4, min_inliers)})", correspondences=n)
    src = np.ascontiguousarray(query_keypoints[matches[:, 0]], dtype=np.float32)
    dst = np.ascontiguousarray(frame_keypoints[matches[:, 1]], dtype=np.float32)
    if query_size[0] > 0 and query_size[1] > 0:
        corners = outline(query_size)
    else:
        lo, hi = query_keypoints.min(axis=0), query_keypoints.max(axis=0)
        corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]], dtype=np.float32)
    query_area = float((corners[2, 0] - corners[0, 0]) * (corners[2, 1] - corners[0, 1]))
    best_inliers, why = 0, "no transform found"
    homography, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=2000, confidence=0.999)
    candidates: list[tuple[GeometryModel, np.ndarray | None, np.ndarray | None]] = [("homography", homography, mask)]
    for model, transform, inlier_mask in candidates:
        inliers = 0 if inlier_mask is None else int(inlier_mask.sum())
        best_inliers = max(best_inliers, inliers)
        if transform is not None and inliers >= min_inliers:
            polygon = _project(transform, corners)
            problem = _plausible(polygon, query_area)
            if problem is None:
                return _verified(model, inliers, n, transform, polygon, frame_size)
            why = f"{model}: {problem}"
        elif transform is not None:
            why = f"{model}: {inliers} inliers < {min_inliers}"
        if model == "homography":
            affine, amask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                                        maxIters=2000, confidence=0.999)
            full = None if affine is None else np.vstack([affine, [0.0, 0.0, 1.0]])
            candidates.append(("affine", full, amask))
    return Geometry.none(f"no consistent geometry ({why})", inliers=best_inliers, correspondences=n)


def _verified(model: GeometryModel, inliers: int, correspondences: int, transform: np.ndarray, polygon: FloatArray,
              frame_size: tuple[int, int] | None) -> Geometry:
    x0, y0 = (float(v) for v in polygon.min(axis=0))
    x1, y1 = (float(v) for v in polygon.max(axis=0))
    if frame_size is not None and frame_size[0] > 0 and frame_size[1] > 0:
        h, w = frame_size
        x0, x1 = min(max(x0, 0.0), float(w)), min(max(x1, 0.0), float(w))
        y0, y1 = min(max(y0, 0.0), float(h)), min(max(y1, 0.0), float(h))
    return Geometry("verified", model, inliers, correspondences, np.asarray(transform, dtype=np.float64), polygon,
                    (x0, y0, x1, y1))


def verify_hits(
    query: PreparedQuery, query_size: tuple[int, int], candidates: Candidates, hits: Sequence[Hit], top: int, *,
    config: RetrievalConfig, min_inliers: int = DEFAULT_MIN_INLIERS,
) -> list[Geometry | None]:
    """The geometric proof of the first ``top`` hits, from the features their candidates carry.

    Added information only: the hits and their order are not touched.

    Args:
        query: the prepared query (all the features it has are used, strongest first).
        query_size: ``(height, width)`` of the query image (``(0, 0)``: unknown).
        candidates: the candidates the hits were ranked from (descriptors and keypoints per candidate).
        hits: the ranking, best first.
        top: hits to verify.
        config: ``match_threshold`` (mutual-match cosine) and ``ransac_threshold`` (pixels).
        min_inliers: fewer inliers are "no geometry".

    Returns:
        One entry per hit: its proof for the first ``top`` hits, None for the rest. A hit whose candidate carries
        no features (or no keypoints) gets ``no_geometry`` saying so.
    """
    where: dict[tuple[str, int, int], int] = {}  # a frame listed twice (ranking and joined tail): its fuller entry
    for pos, key in enumerate(candidates.keys):
        j = where.get(key.dedup_key)
        if j is None or candidates.descriptors[pos].shape[0] > candidates.descriptors[j].shape[0]:
            where[key.dedup_key] = pos
    out: list[Geometry | None] = []
    for rank, hit in enumerate(hits):
        if rank >= top:
            out.append(None)
            continue
        i = where.get(hit.key.dedup_key)
        if i is None or candidates.descriptors[i].shape[0] == 0:
            out.append(Geometry.none("the frame's local features did not reach stage 2"))
            continue
        kps = candidates.keypoints[i]
        if kps.shape[0] != candidates.descriptors[i].shape[0] or not np.any(kps):
            out.append(Geometry.none("the frame's keypoints did not reach stage 2"))
            continue
        src = candidates.keys[i].source
        size = (src.height, src.width) if src is not None else None
        out.append(find_geometry(query.descriptors, query.keypoints, query_size, candidates.descriptors[i], kps,
                                 size, min_similarity=config.match_threshold, threshold=config.ransac_threshold,
                                 min_inliers=min_inliers))
    return out
