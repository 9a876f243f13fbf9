"""Seeded synthetic frames and queries for tests and benchmarks.

A *scene* is a pool of unit local descriptors with 2-D positions and a global direction. A frame of a scene
shows a random window of it (with descriptor noise and clutter features); a query is a partial view: a
smaller window of one frame's content (25-50 % of its features), with noise. Frames of the same scene are
relevant to each other, which gives a ground truth for every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l2g_core.types import FrameFeatures, FrameKey, l2_normalize

__all__ = ["SyntheticVideo", "make_synthetic_video"]


@dataclass(frozen=True)
class SyntheticVideo:
    """Frames, their scene labels, and partial-view queries with the frame each was cut from.

    Attributes:
        keys, features: the database frames.
        scenes: ``(F,)`` int scene label of each frame.
        queries: query features; ``query_frames[i]`` is the index of the frame query i was cut from.
    """

    keys: list[FrameKey]
    features: list[FrameFeatures]
    scenes: np.ndarray
    queries: list[FrameFeatures]
    query_frames: np.ndarray


def make_synthetic_video(
    *,
    num_frames: int = 200,
    num_scenes: int = 20,
    num_cameras: int = 2,
    features_per_frame: int = 128,
    local_dim: int = 64,
    global_dim: int = 32,
    num_queries: int = 10,
    noise: float = 0.25,
    global_noise: float = 1.0,
    fps: float = 2.0,
    start_time: float = 1_700_000_000.0,
    seed: int = 0,
) -> SyntheticVideo:
    """Build a seeded synthetic video collection (see module docstring).

    ``global_noise`` makes global descriptors deliberately weak (partial views change them a lot), so that
    local features matter, as in real partial-view queries.
    """
    rng = np.random.default_rng(seed)
    pool = 4 * features_per_frame
    scene_desc = l2_normalize(rng.standard_normal((num_scenes, pool, local_dim)).astype(np.float32))
    scene_pos = rng.uniform(0, 1000, size=(num_scenes, pool, 2)).astype(np.float32)
    scene_glob = l2_normalize(rng.standard_normal((num_scenes, global_dim)).astype(np.float32))

    def view(scene: int, n: int, clutter: int) -> FrameFeatures:
        idx = rng.choice(pool, size=n, replace=False)
        desc = scene_desc[scene, idx] + noise * rng.standard_normal((n, local_dim)).astype(np.float32) / np.sqrt(
            local_dim
        )
        desc = np.concatenate([desc, rng.standard_normal((clutter, local_dim)).astype(np.float32)])
        kp = np.concatenate([scene_pos[scene, idx], rng.uniform(0, 1000, (clutter, 2)).astype(np.float32)])
        glob = scene_glob[scene] + global_noise * rng.standard_normal(global_dim).astype(np.float32) / np.sqrt(
            global_dim
        )
        scores = rng.uniform(0.1, 1.0, n + clutter).astype(np.float32)
        return FrameFeatures.create(desc, kp, scores, glob, (1000, 1000))

    keys, feats, scenes = [], [], []
    for i in range(num_frames):
        scene = int(rng.integers(num_scenes))
        cam = f"cam-{i % num_cameras}"
        keys.append(FrameKey(cam, start_time + i / fps, i))
        clutter = features_per_frame // 4
        feats.append(view(scene, features_per_frame - clutter, clutter))
        scenes.append(scene)
    query_frames = rng.choice(num_frames, size=min(num_queries, num_frames), replace=False)
    queries = []
    for f in query_frames:
        src = feats[int(f)]
        share = rng.uniform(0.25, 0.5)
        n = max(4, int(share * src.num_features))
        idx = rng.choice(src.num_features, size=n, replace=False)
        desc = src.descriptors[idx] + noise * rng.standard_normal((n, local_dim)).astype(np.float32) / np.sqrt(
            local_dim
        )
        glob = src.global_descriptor + global_noise * rng.standard_normal(global_dim).astype(np.float32) / np.sqrt(
            global_dim
        )
        queries.append(FrameFeatures.create(desc, src.keypoints[idx], src.scores[idx], glob, src.image_size))
    return SyntheticVideo(keys, feats, np.asarray(scenes), queries, np.asarray(query_frames))
