"""Temporal evidence: a frame supported by its camera's frames around it outranks a lone frame."""

from __future__ import annotations

import numpy as np
import pytest

from l2g_core.errors import ConfigError
from l2g_core.rerank.temporal import temporal_support
from l2g_core.types import FrameKey


def _keys(spec: list[tuple[str, float]]) -> list[FrameKey]:
    return [FrameKey(cam, t, i) for i, (cam, t) in enumerate(spec)]


def test_a_supported_frame_overtakes_a_slightly_better_lone_frame() -> None:
    keys = _keys([("a", 100.0), ("b", 10.0), ("b", 11.0), ("b", 50.0)])
    scores = np.array([0.9, 0.85, 0.8, 0.1], np.float32)
    out = temporal_support(keys, scores, window_s=2.0, weight=0.5)
    assert np.argmax(out) == 1  # b@10 is backed by b@11; a@100 is alone
    n = (scores - 0.1) / 0.8
    np.testing.assert_allclose(out, [n[0], n[1] + 0.5 * n[2], n[2] + 0.5 * n[1], n[3]], rtol=1e-6)


def test_other_cameras_and_far_frames_give_no_support() -> None:
    keys = _keys([("a", 0.0), ("b", 0.5), ("a", 5.0)])
    scores = np.array([1.0, 0.5, 0.0], np.float32)
    out = temporal_support(keys, scores, window_s=2.0, weight=1.0)
    np.testing.assert_allclose(out, [1.0, 0.5, 0.0])


def test_weight_zero_keeps_the_order_and_edge_cases() -> None:
    keys = _keys([("a", 0.0), ("a", 1.0)])
    scores = np.array([0.3, 0.7], np.float32)
    assert list(np.argsort(-temporal_support(keys, scores, window_s=5, weight=0.0))) == [1, 0]
    np.testing.assert_array_equal(temporal_support(keys, np.array([2.0, 2.0], np.float32), window_s=1, weight=1),
                                  [0.0, 0.0])
    assert temporal_support([], np.zeros(0, np.float32), window_s=1, weight=1).shape == (0,)
    with pytest.raises(ConfigError):
        temporal_support(keys, np.zeros(3, np.float32), window_s=1, weight=1)
    with pytest.raises(ConfigError):
        temporal_support(keys, scores, window_s=-1, weight=1)


def test_camera_evidence_ranks_the_best_cameras_frames_before_a_chance_match_elsewhere() -> None:
    """a@0 is the best match; a@60 (a minute later, outside the window) gains from it and overtakes b@5, a lone frame
    of another camera that scored a little higher."""
    keys = _keys([("a", 0.0), ("b", 5.0), ("a", 60.0), ("c", 9.0)])
    scores = np.array([1.0, 0.6, 0.5, 0.0], np.float32)
    plain = temporal_support(keys, scores, window_s=2.0, weight=0.5)
    out = temporal_support(keys, scores, window_s=2.0, weight=0.5, camera_weight=0.25)
    assert list(np.argsort(-plain)) == [0, 1, 2, 3]
    assert list(np.argsort(-out)) == [0, 2, 1, 3]
    np.testing.assert_allclose(out, [1.0 + 0.25 * 0.5, 0.6, 0.5 + 0.25 * 1.0, 0.0], rtol=1e-6)
    with pytest.raises(ConfigError):
        temporal_support(keys, scores, window_s=1, weight=1, camera_weight=-0.1)
