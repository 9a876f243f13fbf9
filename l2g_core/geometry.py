"""Geometric verification for the global-to-local baseline: mutual nearest neighbours + RANSAC homography."""

from __future__ import annotations

import cv2
import numpy as np

from l2g_core.types import FloatArray

__all__ = ["mutual_matches", "ransac_inliers"]


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
