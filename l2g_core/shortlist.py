"""Stage 1 over one rolling index: local (kernel Chamfer over FAISS neighbours) or global (cosine), as planned."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import replace

import numpy as np

from l2g_core.candidates import Candidates, Coverage
from l2g_core.chamfer import aggregate_neighbors
from l2g_core.config import RetrievalConfig
from l2g_core.index.rolling import RollingIndex
from l2g_core.index.shard import Shard
from l2g_core.plan import SearchPlan, Stage
from l2g_core.prepared import PreparedQuery
from l2g_core.types import FloatArray

__all__ = ["global_candidates", "local_candidates", "stage1"]

ShardScorer = Callable[[Shard], FloatArray]


def _in_time(shard: Shard, time_range: tuple[float, float] | None) -> np.ndarray:
    if time_range is None:
        return np.ones(len(shard), dtype=bool)
    ts = shard.timestamps
    return (ts >= time_range[0]) & (ts <= time_range[1])


def _collect(
    index: RollingIndex,
    scorer: ShardScorer,
    stage: Stage,
    limit: int,
    cameras: Collection[str] | None,
    time_range: tuple[float, float] | None,
    deadline: float | None,
) -> Candidates:
    """Score the frames of every selected shard (newest first) and keep the best ``limit``."""
    with index.locked():
        shards = index.select(cameras, time_range)
        total_frames = sum(len(s) for s in shards)
        parts: list[tuple[Shard, np.ndarray, FloatArray]] = []
        searched = 0
        frames_searched = 0
        notes: list[str] = []
        for shard in shards:
            if deadline is not None and time.monotonic() > deadline and searched:
                notes.append(f"deadline: {searched} of {len(shards)} shards searched")
                break
            scores = scorer(shard)
            mask = _in_time(shard, time_range)
            idx = np.flatnonzero(mask & (scores > 0)) if stage == "local" else np.flatnonzero(mask)
            if idx.size > limit:
                idx = idx[np.argpartition(-scores[idx], limit - 1)[:limit]]
            parts.append((shard, idx, scores[idx].astype(np.float32)))
            searched += 1
            frames_searched += len(shard)
        stamps = [(float(s.timestamps.min()), float(s.timestamps.max())) for s in index.shards() if len(s)]
        coverage = Coverage(
            frames_searched=frames_searched, frames_total=total_frames, shards_searched=searched,
            shards_total=len(shards), partitions_searched=1, partitions_total=1, complete=not notes,
            indexed_from=min(a for a, _ in stamps) if stamps else None,
            indexed_to=max(b for _, b in stamps) if stamps else None, notes=tuple(notes),
        )
        per_shard = [
            Candidates(
                keys=[shard.keys[i] for i in idx],
                scores=sc,
                stage=stage,
                global_descriptors=shard.globals[idx],
                descriptors=[shard.rerank_descriptors[i] for i in idx],
                keypoints=[shard.rerank_keypoints[i] for i in idx],
            )
            for shard, idx, sc in parts
        ]
    merged = Candidates.merge(per_shard, limit, index.config.global_dim, stage)
    return replace(merged, coverage=coverage)


def local_candidates(
    index: RollingIndex,
    query: FloatArray,
    config: RetrievalConfig,
    *,
    limit: int,
    cameras: Collection[str] | None = None,
    time_range: tuple[float, float] | None = None,
    deadline: float | None = None,
) -> Candidates:
    """Stage 1: frames ranked by kernel Chamfer similarity to the query's local descriptors.

    Args:
        index: the rolling index.
        query: ``(Q, D)`` float32 unit query descriptors.
        config: neighbours per feature and kernel.
        limit: candidates returned.
        cameras, time_range: filters (None = all).
        deadline: ``time.monotonic()`` value after which no further shard is searched.

    Returns:
        Candidates with ``stage="local"`` and scores in ``[0, 1]``.
    """
    nq = max(query.shape[0], 1)

    def score(shard: Shard) -> FloatArray:
        sims, frames = shard.search(query, config.neighbors)
        sums = aggregate_neighbors(sims, frames, len(shard), tau=config.kernel_tau, alpha=config.kernel_alpha)
        out: FloatArray = (sums / nq).astype(np.float32)
        return out

    return _collect(index, score, "local", limit, cameras, time_range, deadline)


def global_candidates(
    index: RollingIndex,
    query_global: FloatArray,
    *,
    limit: int,
    cameras: Collection[str] | None = None,
    time_range: tuple[float, float] | None = None,
    deadline: float | None = None,
) -> Candidates:
    """Frames ranked by cosine similarity of global descriptors (``query_global``: ``(G,)`` float32 unit)."""

    def score(shard: Shard) -> FloatArray:
        return (shard.globals @ query_global).astype(np.float32)

    return _collect(index, score, "global", limit, cameras, time_range, deadline)


def stage1(
    index: RollingIndex,
    query: PreparedQuery,
    plan: SearchPlan,
    config: RetrievalConfig,
    *,
    cameras: Collection[str] | None = None,
    time_range: tuple[float, float] | None = None,
    deadline: float | None = None,
) -> Candidates:
    """Stage 1 of ``plan`` over one index: its best ``plan.shortlist`` frames, best first.

    Args:
        index: the rolling index.
        query: the prepared query.
        plan: what to score and how many to keep.
        config: stage-1 parameters (neighbours, kernel).
        cameras, time_range: filters (None = all).
        deadline: ``time.monotonic()`` value after which no further shard is searched.

    Returns:
        Candidates with ``stage=plan.stage1`` and the index's coverage (one partition).
    """
    if plan.stage1 == "global":
        return global_candidates(index, query.global_descriptor, limit=plan.shortlist, cameras=cameras,
                                 time_range=time_range, deadline=deadline)
    return local_candidates(index, query.descriptors, config, limit=plan.shortlist, cameras=cameras,
                            time_range=time_range, deadline=deadline)
