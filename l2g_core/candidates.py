"""Stage-1 output: a self-contained, mergeable list of candidate frames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from l2g_core.cosine import global_cosine
from l2g_core.plan import Stage
from l2g_core.types import FloatArray, FrameKey

__all__ = ["Candidates", "Coverage"]


@dataclass(frozen=True)
class Coverage:
    """How much of the index a search covered (the one coverage type: library results and wire messages alike).

    Attributes:
        frames_searched, frames_total: frames in the shards searched / in all shards matching the filters.
        shards_searched, shards_total: the same for shards.
        partitions_searched, partitions_total: indexes (video partitions of a deployment) whose candidates reached
            the answer / indexes there are.
        complete: False when the deadline stopped the search early, a stage was skipped or an index is missing.
        indexed_from, indexed_to: event-time span of the indexes searched (None when empty).
        notes: what was cut short, e.g. ``("deadline: 3 of 9 shards searched",)``.
    """

    frames_searched: int = 0
    frames_total: int = 0
    shards_searched: int = 0
    shards_total: int = 0
    partitions_searched: int = 0
    partitions_total: int = 0
    complete: bool = True
    indexed_from: float | None = None
    indexed_to: float | None = None
    notes: tuple[str, ...] = ()

    @staticmethod
    def combine(parts: Sequence[Coverage]) -> Coverage:
        """Sum of the coverages of disjoint parts (e.g. the indexes of several partitions)."""
        froms = [p.indexed_from for p in parts if p.indexed_from is not None]
        tos = [p.indexed_to for p in parts if p.indexed_to is not None]
        return Coverage(
            frames_searched=sum(p.frames_searched for p in parts),
            frames_total=sum(p.frames_total for p in parts),
            shards_searched=sum(p.shards_searched for p in parts),
            shards_total=sum(p.shards_total for p in parts),
            partitions_searched=sum(p.partitions_searched for p in parts),
            partitions_total=sum(p.partitions_total for p in parts),
            complete=all(p.complete for p in parts),
            indexed_from=min(froms) if froms else None,
            indexed_to=max(tos) if tos else None,
            notes=tuple(n for p in parts for n in p.notes),
        )

    def with_note(self, note: str) -> Coverage:
        """A copy marked incomplete with one more note."""
        return replace(self, complete=False, notes=(*self.notes, note))


@dataclass(frozen=True)
class Candidates:
    """Candidate frames of one query with everything re-ranking needs.

    The list is the stage-1 ranking (its first :attr:`ranked` entries) followed by an optional *joined tail* of
    ``joined`` entries: the best frames by global cosine (:func:`global_cosine`), which join the L2G re-ranked head
    whatever their local rank (``RetrievalConfig.global_shortlist``). A frame may stand in both parts.

    Attributes:
        keys: ``m`` frame keys: the ranked part in descending ``scores`` order, then the joined tail in descending
            global cosine (ties by key).
        scores: ``(m,)`` float32 first-stage scores (local Chamfer or global cosine, see ``stage``); a joined
            frame's is its local score (0 when no query feature found it).
        stage: ``"local"`` or ``"global"`` (what the ranked part's ``scores`` are).
        global_descriptors: ``(m, G)`` float32.
        descriptors: per candidate ``(n_i, D)`` float16, its strongest local descriptors.
        keypoints: per candidate ``(n_i, 2)`` float32 pixel coordinates of those descriptors.
        coverage: what the search covered.
        joined: length of the joined tail (0: none).
    """

    keys: list[FrameKey]
    scores: FloatArray
    stage: Stage
    global_descriptors: FloatArray
    descriptors: list[np.ndarray]
    keypoints: list[FloatArray]
    coverage: Coverage = field(default_factory=Coverage)
    joined: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.joined <= len(self.keys), (self.joined, len(self.keys))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def ranked(self) -> int:
        """Entries of the stage-1 ranking (the list without its joined tail)."""
        return len(self.keys) - self.joined

    def tail(self) -> Candidates:
        """The joined tail as a plain list (``joined`` 0)."""
        return self.take(np.arange(self.ranked, len(self)))

    def cut(self, n: int) -> Candidates:
        """The first ``n`` entries of the ranking, followed by the whole joined tail."""
        kept = np.concatenate([np.arange(min(n, self.ranked)), np.arange(self.ranked, len(self))])
        return replace(self.take(kept), joined=self.joined)

    def with_joined(self, tail: Candidates) -> Candidates:
        """This ranking followed by ``tail`` (a plain list, best global cosine first) as its joined tail."""
        assert self.joined == 0 and tail.joined == 0
        return Candidates(
            keys=[*self.keys, *tail.keys],
            scores=np.concatenate([self.scores, tail.scores]).astype(np.float32),
            stage=self.stage,
            global_descriptors=np.concatenate([self.global_descriptors, tail.global_descriptors]).astype(np.float32),
            descriptors=[*self.descriptors, *tail.descriptors],
            keypoints=[*self.keypoints, *tail.keypoints],
            coverage=self.coverage,
            joined=len(tail),
        )

    def take(self, idx: Sequence[int] | np.ndarray) -> Candidates:
        """The candidates at positions ``idx``, in that order (a plain list: no joined tail)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Candidates(
            keys=[self.keys[i] for i in idx],
            scores=self.scores[idx],
            stage=self.stage,
            global_descriptors=self.global_descriptors[idx],
            descriptors=[self.descriptors[i] for i in idx],
            keypoints=[self.keypoints[i] for i in idx],
            coverage=self.coverage,
        )

    @staticmethod
    def empty(stage: Stage, global_dim: int, coverage: Coverage | None = None) -> Candidates:
        """No candidates (``global_dim``: G of the empty ``(0, G)`` global descriptor array)."""
        return Candidates([], np.zeros(0, np.float32), stage, np.zeros((0, global_dim), np.float32), [], [],
                          coverage or Coverage())

    @staticmethod
    def merge(parts: Sequence[Candidates], limit: int, global_dim: int, stage: Stage = "local",
              joined: int = 0, query_global: FloatArray | None = None) -> Candidates:
        """Union of candidate lists from disjoint shards, best ``limit`` by score (ties by key), each frame once,
        followed by the best ``joined`` of the parts' joined tails by :func:`global_cosine` with ``query_global``
        (ties by key, each frame once; no tail without ``query_global``).

        ``stage`` is the stage of an empty result; otherwise the parts' own.
        """
        ranking = Candidates._merge_plain([p.take(np.arange(p.ranked)) if p.joined else p for p in parts], limit,
                                          global_dim, stage)
        if joined == 0 or query_global is None or not any(p.joined for p in parts):
            return ranking
        tails = Candidates._concat([p.tail() for p in parts if p.joined], global_dim, stage)
        cosine = global_cosine(tails.global_descriptors, query_global)
        return ranking.with_joined(tails.take(Candidates.best_positions(tails.keys, cosine, joined)))

    @staticmethod
    def _concat(parts: Sequence[Candidates], global_dim: int, stage: Stage) -> Candidates:
        """The parts one after the other (``stage``: of an empty result; otherwise the first part's)."""
        stage = parts[0].stage if parts else stage
        if not any(len(p) for p in parts):
            return Candidates.empty(stage, global_dim, Coverage.combine([p.coverage for p in parts]))
        return Candidates(
            keys=[k for p in parts for k in p.keys],
            scores=np.concatenate([p.scores for p in parts]).astype(np.float32),
            stage=stage,
            global_descriptors=np.concatenate([p.global_descriptors for p in parts]).astype(np.float32),
            descriptors=[d for p in parts for d in p.descriptors],
            keypoints=[k for p in parts for k in p.keypoints],
            coverage=Coverage.combine([p.coverage for p in parts]),
        )

    @staticmethod
    def best_positions(keys: Sequence[FrameKey], values: FloatArray, limit: int) -> list[int]:
        """Positions of the best ``limit`` ``values`` (ties by key), each frame once (a frame held by two parts,
        e.g. indexed twice during a rebalance, is kept at its best value)."""
        seen: set[tuple[str, int, int]] = set()
        order: list[int] = []
        for i in sorted(range(len(keys)), key=lambda i: (-float(values[i]), keys[i])):
            if keys[i].dedup_key not in seen:
                seen.add(keys[i].dedup_key)
                order.append(i)
                if len(order) == limit:
                    break
        return order

    @staticmethod
    def _merge_plain(parts: Sequence[Candidates], limit: int, global_dim: int, stage: Stage) -> Candidates:
        # deterministic order whatever the sharding: score descending, then frame key, each frame once
        merged = Candidates._concat(parts, global_dim, stage)
        return merged.take(Candidates.best_positions(merged.keys, merged.scores, limit))
