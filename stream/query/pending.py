"""One query being merged: the partials collected so far, and the answer built from them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from l2g_core import Candidates, Coverage, L2GError, Mode, RetrievalConfig, SearchPlan, Stage
from stream.errors import SchemaError
from stream.messages import CandidatePartial, CandidateSection, QueryFeatures
from stream.ports import Partition
from stream.query.wire import candidates_from_sections, prepared_from_payload

__all__ = ["PendingQuery"]

_WORKER_STAGES = ("queue", "decode_image", "extract", "stage1")


@dataclass
class PendingQuery:
    """The partials of one query collected by its merger.

    Attributes:
        query_id, query_position, stage, local_dim, global_dim, sent_at: from the first partial; every later
            partial must agree (:meth:`add` refuses one that does not).
        plan: the search plan of the first partial's mode and k (its stage 1 must be ``stage``).
        deadline: the first partial's, at most ``max_budget_s`` after the merger saw it.
        first_seen: ``time.monotonic()`` of the first partial.
        first_offsets: per candidates partition, the offset of this query's first partial (not committed past).
        features: the query features stage 2 needs (from the first partial that carries them).
        complete: per video partition, its whole candidate list.
        skipped: video partitions a worker declared it will not search (it shed the query).
        error: the first error partial (the query itself is bad).
        unindexed: cameras of the query that no worker answering holds a frame of (the intersection of their
            ``unindexed_cameras``; None before the first answer).
    """

    query_id: str
    query_position: str
    plan: SearchPlan
    stage: Stage
    local_dim: int
    global_dim: int
    deadline: float
    sent_at: float | None
    first_seen: float
    first_offsets: dict[Partition, int] = field(default_factory=dict)
    features: QueryFeatures | None = None
    pieces: dict[int, dict[str, dict[int, CandidateSection]]] = field(default_factory=dict)
    complete: dict[int, Candidates] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)
    latencies: dict[str, dict[str, float]] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last_partial: float = 0.0
    error: CandidatePartial | None = None
    unindexed: set[str] | None = None

    @classmethod
    def first(cls, partial: CandidatePartial, retrieval: RetrievalConfig, *, max_budget_s: float) -> PendingQuery:
        """A pending query started by its first partial (a forged far deadline cannot hold it, or the commits, open).

        Raises:
            SchemaError: the partial's mode and k make no plan (k too large).
        """
        try:
            plan = SearchPlan.build(partial.mode, partial.k, retrieval)
        except L2GError as exc:
            raise SchemaError(f"partial of {partial.query_id}: {exc}", reason="inconsistent_partial") from exc
        deadline = min(partial.deadline, time.time() + max_budget_s)
        return cls(partial.query_id, partial.query_position, plan, partial.stage, partial.local_dim,
                   partial.global_dim, deadline, partial.sent_at, time.monotonic())

    @property
    def mode(self) -> Mode:
        """The query's mode."""
        return self.plan.mode

    @property
    def k(self) -> int:
        """Matches wanted."""
        return self.plan.k

    @property
    def key(self) -> tuple[str, str]:
        """``(query_id, query_position)``: one query (a reused id read at another position is another query)."""
        return (self.query_id, self.query_position)

    def _check(self, partial: CandidatePartial) -> None:
        """Raises SchemaError when ``partial`` disagrees with this query or with its own dimensions."""
        if partial.error is not None:
            return
        mine = (self.mode, self.k, self.plan.stage1, self.local_dim, self.global_dim)
        theirs = (partial.mode, partial.k, partial.stage, partial.local_dim, partial.global_dim)
        if theirs != mine:
            raise SchemaError(f"partial of {self.query_id} from {partial.worker_id} says (mode, k, stage, local_dim, "
                              f"global_dim) = {theirs}, the query's first partial {mine}",
                              reason="inconsistent_partial")
        if partial.query_features is not None:
            prepared_from_payload(partial.query_features, partial.local_dim, partial.global_dim)

    def add(self, partial: CandidatePartial, part: Partition, offset: int) -> None:
        """Take one partial of this query (read at ``offset`` of candidates partition ``part``).

        Raises:
            SchemaError: the partial contradicts the query or itself; nothing of it is kept.
        """
        self._check(partial)
        assembled: dict[int, Candidates] = {}
        for sec in partial.sections:
            if sec.partition in self.complete:
                continue  # already covered (e.g. by the previous owner during a rebalance)
            slices = dict(self.pieces.get(sec.partition, {}).get(partial.answer_id, {}))
            slices[sec.start] = sec
            if sum(len(s.cameras) for s in slices.values()) >= sec.total:
                assembled[sec.partition] = candidates_from_sections(list(slices.values()), self.stage,
                                                                    self.local_dim, self.global_dim)
        # the partial is sound: keep it
        self.first_offsets.setdefault(part, offset)
        self.last_partial = time.time()
        if partial.error is not None:
            self.error = self.error or partial
            return
        if partial.query_features is not None and self.features is None:
            self.features = partial.query_features
        self.notes += [n for n in partial.notes if n not in self.notes]
        self.skipped.update(p for p in partial.skipped_partitions if p not in self.complete)
        if partial.answer_id not in self.latencies:  # once per worker's answer (its slices repeat the list)
            theirs = set(partial.unindexed_cameras)
            self.unindexed = theirs if self.unindexed is None else self.unindexed & theirs
        self.latencies.setdefault(partial.answer_id, dict(partial.latency_ms))
        self.received.setdefault(partial.answer_id, partial.received_at)
        for sec in partial.sections:
            if sec.partition in self.complete:
                continue
            if sec.partition in assembled:
                self.complete[sec.partition] = assembled[sec.partition]
                self.pieces.pop(sec.partition, None)
            else:
                self.pieces.setdefault(sec.partition, {}).setdefault(partial.answer_id, {})[sec.start] = sec

    def settled(self, partitions: frozenset[int]) -> bool:
        """Nothing more will come: every partition has its whole list or was skipped, and the query features arrived
        (or no partition was searched at all)."""
        if not partitions or not partitions <= set(self.complete) | self.skipped:
            return False
        return self.features is not None or not self.complete

    def worker_latency(self) -> dict[str, float]:
        """Per stage: ``queue`` of the fastest worker, the others of the slowest (the answer waits for it)."""
        latency: dict[str, float] = {}
        for stage in _WORKER_STAGES:
            values = [lat[stage] for lat in self.latencies.values() if stage in lat]
            if values:
                latency[stage] = min(values) if stage == "queue" else max(values)
        return latency

    def first_received(self) -> float:
        """Unix time the first worker read the query."""
        return min(self.received.values(), default=time.time())

    def coverage(self, partitions: frozenset[int], video_topic: str, notes: list[str], *,
                 incomplete: bool) -> Coverage:
        """What the answer covers: the partitions' own coverages combined, over ``partitions`` of the topic.

        Args:
            partitions: the video topic's partitions.
            video_topic: its name (for the note on missing partitions).
            notes: notes of the merge and of stage 2, first.
            incomplete: the merge or stage 2 was cut short (shed, or stage 2 skipped at the deadline).
        """
        parts = Coverage.combine([c.coverage for _, c in sorted(self.complete.items())])
        missing = sorted(partitions - set(self.complete) - self.skipped)
        shed = sorted(self.skipped & partitions - set(self.complete))
        all_notes = [*notes, *parts.notes]
        if missing:
            all_notes.append(f"deadline: partitions {missing} of {video_topic} not searched")
        if shed:
            all_notes.append(f"partitions {shed} of {video_topic} not searched: the query was shed")
        complete = not missing and not shed and self.features is not None and parts.complete and not incomplete
        return replace(parts, partitions_searched=len(self.complete), partitions_total=len(partitions),
                       complete=complete, notes=tuple(dict.fromkeys(all_notes)))
