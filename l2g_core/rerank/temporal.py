"""Temporal and camera evidence: a frame's score supported by the frames of its camera, around it in time and at all.

What a camera shows for a moment stays visible for a few sampled frames. A candidate whose neighbours in time also
scored well is stronger evidence than a lone frame (a lone high score is more often a chance match), and a user
asking "when" wants the whole moment ranked together. A scene is seen by one camera: the candidates of the camera
that the best evidence points to belong together in the ranking, before a chance match of another camera.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from l2g_core.errors import ConfigError
from l2g_core.types import FloatArray, FrameKey

__all__ = ["temporal_support"]


def temporal_support(keys: Sequence[FrameKey], scores: FloatArray, *, window_s: float, weight: float,
                     camera_weight: float = 0.0) -> FloatArray:
    """Scores with temporal (and camera) evidence added.

    ``out_i = n_i + weight * max{n_j : j != i, camera_j == camera_i, |t_j - t_i| <= window_s}
    + camera_weight * max{n_j : j != i, camera_j == camera_i}`` (a max over no ``j`` is 0), with
    ``n = (s - min s) / (max s - min s)`` (all 0 when the scores are equal).

    Args:
        keys: ``m`` frame keys (camera and event time).
        scores: ``(m,)`` scores, higher is better.
        window_s: neighbourhood half-width in seconds (>= 0).
        weight: weight of the best neighbour in time (>= 0).
        camera_weight: weight of the best other candidate of the camera (>= 0; with ``weight``, 0 returns ``n``).

    Returns:
        ``(m,)`` float32 scores (only their order is meant to be used).

    Raises:
        ConfigError: lengths differ or a parameter is negative.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(keys),):
        raise ConfigError(f"{len(keys)} keys but scores of shape {s.shape}")
    if window_s < 0 or weight < 0 or camera_weight < 0:
        raise ConfigError(f"window_s, weight and camera_weight must be >= 0, got {window_s}, {weight} and "
                          f"{camera_weight}")
    if s.size == 0:
        return s.astype(np.float32)
    span = s.max() - s.min()
    norm = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    out = norm.copy()
    if weight == 0 and camera_weight == 0:
        return out.astype(np.float32)
    cameras: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        cameras.setdefault(key.camera_id, []).append(i)
    for members in cameras.values():
        if len(members) < 2:
            continue
        idx = np.asarray(members)
        times = np.asarray([keys[i].timestamp for i in members])
        near = np.abs(times[:, None] - times[None, :]) <= window_s  # (n, n)
        np.fill_diagonal(near, False)
        out[idx] += weight * np.where(near, norm[idx][None, :], 0.0).max(axis=1)
        if camera_weight > 0:
            others = ~np.eye(len(members), dtype=bool)
            out[idx] += camera_weight * np.where(others, norm[idx][None, :], 0.0).max(axis=1)
    return out.astype(np.float32)
