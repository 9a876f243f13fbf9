"""Temporal evidence: a frame's score supported by the frames of its camera around it in time.

What a camera shows for a moment stays visible for a few sampled frames. A candidate whose neighbours in time also
scored well is stronger evidence than a lone frame (a lone high score is more often a chance match), and a user
asking "when" wants the whole moment ranked together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from l2g_core.errors import ConfigError
from l2g_core.types import FloatArray, FrameKey

__all__ = ["temporal_support"]


def temporal_support(keys: Sequence[FrameKey], scores: FloatArray, *, window_s: float, weight: float) -> FloatArray:
    """Scores with temporal evidence added.

    ``out_i = n_i + weight * max{n_j : j != i, camera_j == camera_i, |t_j - t_i| <= window_s}`` (0 when there is no
    such ``j``), with ``n = (s - min s) / (max s - min s)`` (all 0 when the scores are equal).

    Args:
        keys: ``m`` frame keys (camera and event time).
        scores: ``(m,)`` scores, higher is better.
        window_s: neighbourhood half-width in seconds (>= 0).
        weight: weight of the best neighbour (>= 0; 0 returns ``n``).

    Returns:
        ``(m,)`` float32 scores (only their order is meant to be used).

    Raises:
        ConfigError: lengths differ or a parameter is negative.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(keys),):
        raise ConfigError(f"{len(keys)} keys but scores of shape {s.shape}")
    if window_s < 0 or weight < 0:
        raise ConfigError(f"window_s and weight must be >= 0, got {window_s} and {weight}")
    if s.size == 0:
        return s.astype(np.float32)
    span = s.max() - s.min()
    norm = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    out = norm.copy()
    if weight == 0:
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
        support = np.where(near, norm[idx][None, :], 0.0).max(axis=1)
        out[idx] += weight * support
    return out.astype(np.float32)
