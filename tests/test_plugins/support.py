"""Synthetic images and matching helpers for the extractor tests (seeded, no files needed)."""

from __future__ import annotations

import cv2
import numpy as np

from l2g_core import FrameFeatures


def textured_image(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 RGB image full of corners and blobs: random rectangles, ellipses, lines and
    smoothed noise, drawn with a seeded generator."""
    rng = np.random.default_rng(seed)
    noise = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    img = (cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) * 120 + 60).clip(0, 255).astype(np.uint8)
    for _ in range(40):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 60)), y + int(rng.integers(8, 60))), color, -1)
        elif kind == 1:
            axes = (int(rng.integers(5, 35)), int(rng.integers(5, 35)))
            cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), color, int(rng.integers(1, 4)))
    return np.ascontiguousarray(img)


def warp_similarity(img: np.ndarray, angle: float = 8.0, scale: float = 0.95,
                    shift: tuple[float, float] = (12.0, -7.0)) -> tuple[np.ndarray, np.ndarray]:
    """``img`` rotated/scaled about its centre and shifted; returns the warped image and the 3x3 transform
    mapping pixels of ``img`` to pixels of the result."""
    h, w = img.shape[:2]
    a = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    a[:, 2] += np.asarray(shift)
    out = cv2.warpAffine(img, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(out), np.vstack([a, [0.0, 0.0, 1.0]])


def mutual_nn(a: FrameFeatures, b: FrameFeatures, min_sim: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` of mutual nearest-neighbour matches between two frames' descriptors."""
    if a.num_features == 0 or b.num_features == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sim = a.descriptors @ b.descriptors.T
    ab, ba = sim.argmax(axis=1), sim.argmax(axis=0)
    i = np.flatnonzero((ba[ab] == np.arange(len(ab))) & (sim.max(axis=1) >= min_sim))
    return i, ab[i]


def project(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to ``(N, 2)`` points."""
    p = np.hstack([xy, np.ones((len(xy), 1))]) @ h.T
    out: np.ndarray = p[:, :2] / p[:, 2:3]
    return out


def consistent_share(a: FrameFeatures, b: FrameFeatures, h: np.ndarray, tol: float = 5.0) -> tuple[float, int]:
    """Share (and count) of mutual-NN matches whose keypoints agree with ``h`` (a -> b) within ``tol`` pixels."""
    i, j = mutual_nn(a, b)
    if len(i) == 0:
        return 0.0, 0
    err = np.linalg.norm(project(h, a.keypoints[i]) - b.keypoints[j], axis=1)
    good = int((err <= tol).sum())
    return good / len(i), good


def ransac_inliers(a: FrameFeatures, b: FrameFeatures, threshold: float = 5.0) -> int:
    """Inliers of a RANSAC homography fitted to the mutual-NN matches (0 when fewer than 4 matches)."""
    i, j = mutual_nn(a, b)
    if len(i) < 4:
        return 0
    _, mask = cv2.findHomography(a.keypoints[i], b.keypoints[j], cv2.RANSAC, threshold, maxIters=2000,
                                 confidence=0.999)
    return 0 if mask is None else int(mask.sum())


def check_features(f: FrameFeatures, local_dim: int, global_dim: int, image_size: tuple[int, int]) -> None:
    """Shapes, dtypes, unit norms and keypoints inside the frame."""
    n = f.num_features
    assert f.descriptors.shape == (n, local_dim) and f.descriptors.dtype == np.float32
    assert f.keypoints.shape == (n, 2) and f.keypoints.dtype == np.float32
    assert f.scores.shape == (n,) and f.scores.dtype == np.float32
    assert f.global_descriptor.shape == (global_dim,) and f.global_descriptor.dtype == np.float32
    assert f.image_size == image_size
    assert abs(float(np.linalg.norm(f.global_descriptor)) - 1.0) < 1e-4
    if n:
        np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-4)
        h, w = image_size
        assert f.keypoints[:, 0].min() >= 0 and f.keypoints[:, 0].max() <= w - 1
        assert f.keypoints[:, 1].min() >= 0 and f.keypoints[:, 1].max() <= h - 1
        assert np.all(np.isfinite(f.scores))
