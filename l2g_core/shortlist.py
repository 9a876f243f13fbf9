"""Stage 1 over one rolling index: local (kernel Chamfer over FAISS neighbours) or global (cosine), as planned.

The search units are the index's segments (a compressed index: one IVF-PQ index per camera and
``segment_seconds``) and its flat shards; each unit is searched once for the shards selected in it."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import replace

import numpy as np

from l2g_core.candidates import Candidates, Coverage
from l2g_core.chamfer import aggregate_neighbors
from l2g_core.config import RetrievalConfig
from l2g_core.cosine import global_cosines, top_global_cosines, top_positions, widen
from l2g_core.index.rolling import RollingIndex
from l2g_core.index.segment import BUCKET_SHIFT, CoarseAssignment, Segment
from l2g_core.index.shard import Shard
from l2g_core.plan import SearchPlan, Stage
from l2g_core.prepared import PreparedQuery
from l2g_core.types import FloatArray

__all__ = ["global_candidates", "local_candidates", "stage1"]

UnitScorer = Callable[[Segment | None, list[Shard]], FloatArray]
"""Scores the frames of the selected ``shards`` of one search unit (their segment, or None for one flat shard):
one ``(sum(len(shard)),)`` float32 array, the shards' frames one after another in the order given. (Global cosines
are not scored unit by unit: :func:`_collect` ranks them over every unit at once.)"""


def _units(index: RollingIndex, shards: list[Shard]) -> list[tuple[Segment | None, list[Shard]]]:
    """``shards`` (newest first) grouped by search unit: per segment its selected shards (oldest bucket first),
    every flat shard alone; in the order of each unit's newest shard."""
    units: list[tuple[Segment | None, list[Shard]]] = []
    where: dict[int, int] = {}
    for shard in shards:
        segment = index.segment(shard)
        if segment is None:
            units.append((None, [shard]))
        elif id(segment) in where:
            units[where[id(segment)]][1].append(shard)
        else:
            where[id(segment)] = len(units)
            units.append((segment, [shard]))
    return [(g, sorted(members, key=lambda s: s.id.bucket)) for g, members in units]


def _in_time(shards: list[Shard], time_range: tuple[float, float] | None) -> np.ndarray | None:
    """``(sum(len(shard)),)`` bool: the frames of ``shards`` inside ``time_range``; None when every frame is."""
    if time_range is None:
        return None
    ts = np.concatenate([shard.timestamps for shard in shards])
    return (ts >= time_range[0]) & (ts <= time_range[1])


def _globals_in_time(shards: list[Shard], inside: np.ndarray | None) -> list[np.ndarray]:
    """The ``(n_i, G)`` global descriptors (``IndexConfig.global_dtype``) of the frames of ``shards`` inside the time
    range (``inside``; None: all), shard by shard (a whole shard in place, without a copy)."""
    if inside is None:
        return [shard.globals for shard in shards]
    blocks, start = [], 0
    for shard in shards:
        rows = np.flatnonzero(inside[start:start + len(shard)])
        start += len(shard)
        if rows.size:
            blocks.append(shard.globals if rows.size == len(shard) else shard.globals[rows])
    return blocks


def _collect(
    index: RollingIndex,
    scorer: UnitScorer | None,
    stage: Stage,
    limit: int,
    cameras: Collection[str] | None,
    time_range: tuple[float, float] | None,
    deadline: float | None,
    query_global: FloatArray | None = None,
    joined: int = 0,
) -> Candidates:
    """Score the frames of every selected shard (unit by unit, newest first) and keep the best ``limit`` over all
    of them.

    ``stage`` ``local``: ``scorer`` scores each unit, and with ``joined`` > 0 the best ``joined`` frames by
    :func:`~l2g_core.cosine.global_cosine` with ``query_global`` follow as the joined tail (each with its local
    score). ``stage`` ``global`` (``scorer`` None): the best ``limit`` by global cosine with ``query_global``.

    Every frame searched is numbered in one sequence (the searched shards' frames one after another), so the cuts
    are one array operation over the whole index rather than a few per shard (272 shards at 100k frames)."""
    cosines_wanted = stage == "global" or joined > 0
    assert (scorer is None) == (stage == "global") and (query_global is not None or not cosines_wanted)
    with index.locked():
        shards = index.select(cameras, time_range)
        total_frames = sum(len(s) for s in shards)
        notes: list[str] = []
        order: list[Shard] = []  # searched shards, in the order their frames are numbered
        scored: list[FloatArray] = []  # per unit: (n_u,) float32 scores of its frames
        in_time: list[np.ndarray] = []  # per unit: (n_u,) bool, inside the time range
        blocks: list[np.ndarray] = []  # (n_i, G) globals of the frames in time, in frame order
        for segment, members in _units(index, shards):
            if deadline is not None and time.monotonic() > deadline and order:
                notes.append(f"deadline: {len(order)} of {len(shards)} shards searched")
                break
            inside = _in_time(members, time_range)
            frames = sum(len(m) for m in members)
            if scorer is not None:
                scored.append(scorer(segment, members))
            in_time.append(np.ones(frames, bool) if inside is None else inside)
            if cosines_wanted:
                blocks += _globals_in_time(members, inside)
            order.extend(members)
        sizes = np.array([len(s) for s in order], np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)]) if order else np.zeros(1, np.int64)

        def picks_at(positions: np.ndarray) -> list[tuple[Shard, int]]:
            owner = np.searchsorted(starts, positions, side="right") - 1
            frame = positions - starts[owner]
            return [(order[o], f) for o, f in zip(owner.tolist(), frame.tolist(), strict=True)]

        stamps = [span for span in (s.span for s in index.shards()) if span is not None]
        coverage = Coverage(
            frames_searched=int(sizes.sum()), frames_total=total_frames, shards_searched=len(order),
            shards_total=len(shards), partitions_searched=1, partitions_total=1, complete=not notes,
            indexed_from=min(a for a, _ in stamps) if stamps else None,
            indexed_to=max(b for _, b in stamps) if stamps else None, notes=tuple(notes),
        )
        inside_all = np.concatenate(in_time) if in_time else np.zeros(0, bool)
        positions = np.flatnonzero(inside_all)  # cosine row i is frame positions[i]
        tail_part: Candidates | None = None
        if stage == "global":
            assert query_global is not None
            rows, cosines = top_global_cosines(blocks, query_global, limit)
            part = _gather(picks_at(positions[rows]), cosines, stage, index.config.global_dim)
        else:
            all_scores = np.concatenate(scored) if scored else np.zeros(0, np.float32)
            eligible = np.flatnonzero(inside_all & (all_scores > 0))
            best = eligible[top_positions(all_scores[eligible], limit)]
            part = _gather(picks_at(best), all_scores[best], stage, index.config.global_dim)
            if joined > 0:
                assert query_global is not None
                tail_part = _tail(picks_at, positions, blocks, query_global, all_scores, joined,
                                  index.config.global_dim, stage)
    merged = Candidates.merge([part], limit, index.config.global_dim, stage)
    if tail_part is not None:
        merged = merged.with_joined(tail_part)
    return replace(merged, coverage=coverage)


def _gather(picked: list[tuple[Shard, int]], scores: FloatArray, stage: Stage, global_dim: int) -> Candidates:
    """Candidates of the ``picked`` (shard, frame number) pairs, in that order, with ``scores`` ``(len(picked),)``
    float32 and each frame's stored global descriptor, re-rank descriptors and keypoints."""
    return Candidates(
        keys=[shard.keys[f] for shard, f in picked],
        scores=np.asarray(scores, np.float32),
        stage=stage,
        global_descriptors=widen(np.stack([shard.globals[f] for shard, f in picked])) if picked
        else np.zeros((0, global_dim), np.float32),
        descriptors=[shard.rerank_descriptors[f] for shard, f in picked],
        keypoints=[shard.rerank_keypoints[f] for shard, f in picked],
    )


def _tail(picks_at: Callable[[np.ndarray], list[tuple[Shard, int]]], positions: np.ndarray,
          blocks: list[np.ndarray], query_global: FloatArray, scores: FloatArray, limit: int, global_dim: int,
          stage: Stage) -> Candidates:
    """The best ``limit`` frames by global cosine, with their stage-1 scores.

    Args:
        picks_at: frame numbers -> their (shard, frame within the shard) pairs.
        positions: ``(n,)`` int64 numbers of the frames that may join (those inside the time range).
        blocks: their ``(n_i, G)`` global descriptors, in the same order (``sum n_i = n``).
        query_global: ``(G,)`` float32.
        scores: stage-1 scores of every frame, by number.
        limit: frames kept.

    Only the best ``limit`` cosines (and their ties, :func:`~l2g_core.cosine.top_global_cosines`) are ordered by
    key, unless repeated frames leave fewer than ``limit`` distinct ones among them: then every cosine is computed
    and ordered. Either way the same frames as ordering all of them, without a Python key per frame."""
    pool, cosine = top_global_cosines(blocks, query_global, limit)
    picks = picks_at(positions[pool])
    if pool.size < positions.size and len({shard.keys[f].dedup_key for shard, f in picks}) < limit:
        pool, cosine = np.arange(positions.size), global_cosines(blocks, query_global)
        picks = picks_at(positions)
    best = Candidates.best_positions([shard.keys[f] for shard, f in picks], cosine, limit)
    return _gather([picks[i] for i in best], scores[positions[pool[best]]], stage, global_dim)


def local_candidates(
    index: RollingIndex,
    query: FloatArray,
    config: RetrievalConfig,
    *,
    limit: int,
    cameras: Collection[str] | None = None,
    time_range: tuple[float, float] | None = None,
    deadline: float | None = None,
    joined: int = 0,
    query_global: FloatArray | None = None,
) -> Candidates:
    """Stage 1: frames ranked by kernel Chamfer similarity to the query's local descriptors.

    Each search unit is searched once: a flat shard on its own, a segment for its selected shards (an id range of
    buckets when the filters leave some of its shards out), ``config.neighbors`` neighbours per query descriptor
    and unit. Segments share the template's coarse quantizer: the query descriptors are assigned to their lists
    once, and each segment scans its own lists (:meth:`Segment.search`).

    Args:
        index: the rolling index.
        query: ``(Q, D)`` float32 unit query descriptors.
        config: neighbours per feature and kernel.
        limit: candidates returned.
        cameras, time_range: filters (None = all).
        deadline: ``time.monotonic()`` value after which no further unit is searched.
        joined, query_global: with ``joined`` > 0, the best ``joined`` frames by :func:`global_cosine` with
            ``query_global`` ``(G,)`` float32 follow the ranking as its joined tail, each with its local score.

    Returns:
        Candidates with ``stage="local"`` and scores in ``[0, 1]``.
    """
    nq = max(query.shape[0], 1)
    query = np.ascontiguousarray(query, dtype=np.float32)
    assignments: dict[str, CoarseAssignment] = {}

    def aggregate(sims: FloatArray, frames: np.ndarray, num_frames: int) -> FloatArray:
        sums = aggregate_neighbors(sims, frames, num_frames, tau=config.kernel_tau, alpha=config.kernel_alpha)
        out: FloatArray = (sums / nq).astype(np.float32)
        return out

    def score(segment: Segment | None, shards: list[Shard]) -> FloatArray:
        if segment is None:
            (shard,) = shards
            return aggregate(*shard.search(query, config.neighbors), len(shard))
        key = segment.coarse_key
        if key is not None and key not in assignments:
            assignments[key] = segment.assign(query)
        first, last = shards[0].id.bucket, shards[-1].id.bucket
        whole = len(shards) == len(segment.buckets)
        sims, ids = segment.search(query, config.neighbors, None if key is None else assignments[key],
                                   None if whole else (first, last))
        # feature id -> position among the selected shards' frames (oldest bucket first); -1: not selected
        base = np.full(last - first + 1, -1, np.int64)
        sizes = np.cumsum([0] + [len(s) for s in shards])
        base[[s.id.bucket - first for s in shards]] = sizes[:-1]
        offset = (ids >> BUCKET_SHIFT) - (first - segment.first_bucket)
        inside = (ids >= 0) & (offset >= 0) & (offset < base.size)
        start = np.where(inside, base[np.where(inside, offset, 0)], -1)
        frames = np.where(start >= 0, start + (ids & ((1 << BUCKET_SHIFT) - 1)), -1)
        return aggregate(sims, frames, int(sizes[-1]))

    if query_global is None:
        joined = 0
    return _collect(index, score, "local", limit, cameras, time_range, deadline,
                    None if query_global is None else np.asarray(query_global, np.float32), joined)


def global_candidates(
    index: RollingIndex,
    query_global: FloatArray,
    *,
    limit: int,
    cameras: Collection[str] | None = None,
    time_range: tuple[float, float] | None = None,
    deadline: float | None = None,
) -> Candidates:
    """Frames ranked by :func:`~l2g_core.cosine.global_cosine` of their global descriptors with ``query_global``
    (``(G,)`` float32 unit)."""
    return _collect(index, None, "global", limit, cameras, time_range, deadline,
                    np.asarray(query_global, np.float32))


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
        Candidates with ``stage=plan.stage1`` and the index's coverage (one partition); with ``plan.joined``, the
        index's best ``plan.joined`` frames by global cosine follow as the joined tail (with their local scores).
    """
    if plan.stage1 == "global":
        return global_candidates(index, query.global_descriptor, limit=plan.shortlist, cameras=cameras,
                                 time_range=time_range, deadline=deadline)
    return local_candidates(index, query.for_ranking(config).descriptors, config, limit=plan.shortlist,
                            cameras=cameras, time_range=time_range, deadline=deadline, joined=plan.joined,
                            query_global=query.global_descriptor)
