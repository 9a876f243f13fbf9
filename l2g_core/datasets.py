"""Seeded synthetic frames and queries for tests and benchmarks.

A *scene* is a pool of unit local descriptors with 2-D positions and a global direction. A frame of a scene
shows a random subset of it (with descriptor noise and clutter features); a query is a partial view: 25-50 %
of one frame's features, with more noise. Frames of the same scene are relevant to each other, which gives a
ground truth for every mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from l2g_core.types import FrameFeatures, FrameKey, l2_normalize

__all__ = ["SceneModel", "SyntheticVideo", "make_synthetic_video"]


class SceneModel:
    """Random scenes that frames and queries are drawn from (see module docstring).

    Args:
        num_scenes: scene count.
        features_per_frame: local features per frame (a quarter of them clutter).
        local_dim, global_dim: descriptor dimensions.
        noise: local descriptor noise (relative to unit norm).
        global_noise: global descriptor noise; large values make global search weak, as for partial views.
        seed: RNG seed.
    """

    def __init__(self, *, num_scenes: int, features_per_frame: int, local_dim: int, global_dim: int,
                 noise: float, global_noise: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.features_per_frame = features_per_frame
        self.noise = noise
        self.global_noise = global_noise
        pool = 4 * features_per_frame
        self.desc = l2_normalize(self.rng.standard_normal((num_scenes, pool, local_dim)).astype(np.float32))
        self.pos = self.rng.uniform(0, 1000, size=(num_scenes, pool, 2)).astype(np.float32)
        self.glob = l2_normalize(self.rng.standard_normal((num_scenes, global_dim)).astype(np.float32))

    def _jitter(self, x: np.ndarray, scale: float) -> np.ndarray:
        out: np.ndarray = x + scale * self.rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(x.shape[-1])
        return out

    def frame(self, scene: int) -> FrameFeatures:
        """One frame of ``scene``."""
        clutter = self.features_per_frame // 4
        n = self.features_per_frame - clutter
        idx = self.rng.choice(self.desc.shape[1], size=n, replace=False)
        dim = self.desc.shape[2]
        desc = np.concatenate([self._jitter(self.desc[scene, idx], self.noise),
                               self.rng.standard_normal((clutter, dim)).astype(np.float32)])
        kp = np.concatenate([self.pos[scene, idx], self.rng.uniform(0, 1000, (clutter, 2)).astype(np.float32)])
        scores = self.rng.uniform(0.1, 1.0, n + clutter).astype(np.float32)
        return FrameFeatures.create(desc, kp, scores, self._jitter(self.glob[scene], self.global_noise), (1000, 1000))

    def partial_view(self, src: FrameFeatures) -> FrameFeatures:
        """A query showing 25-50 % of ``src``'s features."""
        n = max(4, int(self.rng.uniform(0.25, 0.5) * src.num_features))
        idx = self.rng.choice(src.num_features, size=n, replace=False)
        return FrameFeatures.create(self._jitter(src.descriptors[idx], self.noise), src.keypoints[idx],
                                    src.scores[idx], self._jitter(src.global_descriptor, self.global_noise),
                                    src.image_size)

    def stream(self, num_frames: int, *, batch: int, num_cameras: int, fps: float, start_time: float
               ) -> Iterator[tuple[list[FrameKey], list[FrameFeatures], np.ndarray]]:
        """Batches of ``(keys, features, scene labels)`` covering ``num_frames`` frames (bounded memory)."""
        for first in range(0, num_frames, batch):
            count = min(batch, num_frames - first)
            scenes = self.rng.integers(self.desc.shape[0], size=count)
            keys = [FrameKey(f"cam-{i % num_cameras}", start_time + i / fps, i) for i in range(first, first + count)]
            yield keys, [self.frame(int(s)) for s in scenes], scenes


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
    """A small seeded collection held in memory (see :class:`SceneModel` for the parameters)."""
    model = SceneModel(num_scenes=num_scenes, features_per_frame=features_per_frame, local_dim=local_dim,
                       global_dim=global_dim, noise=noise, global_noise=global_noise, seed=seed)
    keys: list[FrameKey] = []
    feats: list[FrameFeatures] = []
    scenes: list[np.ndarray] = []
    for k, f, s in model.stream(num_frames, batch=num_frames, num_cameras=num_cameras, fps=fps,
                                start_time=start_time):
        keys += k
        feats += f
        scenes.append(s)
    query_frames = model.rng.choice(num_frames, size=min(num_queries, num_frames), replace=False)
    queries = [model.partial_view(feats[int(f)]) for f in query_frames]
    return SyntheticVideo(keys, feats, np.concatenate(scenes), queries, np.asarray(query_frames))
