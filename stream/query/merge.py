"""The merge loop: one worker of the merge group collects each query's partials, runs stage 2, publishes."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from l2g_core import Candidates, Coverage, RetrievalConfig, merge_candidates, stage2
from l2g_core.geometry import Geometry, verify_hits
from l2g_core.segments import default_gap
from stream.deadletter import DeadLetterPublisher
from stream.envelope import decode_message, encode_message
from stream.errors import BrokerError, SchemaError
from stream.health import Health
from stream.messages import CandidatePartial, Match, QueryResult, Segment
from stream.metrics import StreamMetrics
from stream.ports import MessageSink, MessageSource, Partition, Record
from stream.query.answer import match_of, segments_of
from stream.query.loop import STAGE
from stream.query.pending import PendingQuery
from stream.query.wire import prepared_from_payload
from stream.settings import Settings

__all__ = ["MergeLoop"]

LOG = logging.getLogger(__name__)
MERGE_STAGE = "merge"
_STALE_AFTER_S = 30.0  # partials of a query whose deadline passed this long ago are a replay: skipped
_OUTCOMES = {"complete": "ok", "partial": "partial", "error": "error"}


class MergeLoop:
    """Member of the merge group on the candidates topic: merges each query it owns and publishes the result.

    Args:
        settings: all settings.
        source: a consumer that joins ``query.merge_group_id``.
        sink: producer for results and dead letters.
        retrieval: stage-2 parameters (the same as every worker's).
        dead_letters: publisher of bad queries' and bad partials' dead letters.
        metrics, health: metrics; heartbeat ``merge`` and readiness ``merge_assigned``.
        worker_id: identity in results.
        video_partitions: the video topic's partitions (default: asked of ``source``).
    """

    def __init__(self, settings: Settings, source: MessageSource, sink: MessageSink, retrieval: RetrievalConfig, *,
                 dead_letters: DeadLetterPublisher, metrics: StreamMetrics, health: Health | None = None,
                 worker_id: str = "", video_partitions: Callable[[], Collection[int]] | None = None) -> None:
        self.settings = settings
        self.source = source
        self.sink = sink
        self.retrieval = retrieval
        self.dlq = dead_letters
        self.metrics = metrics
        self.health = health
        self.worker_id = worker_id
        self._video_partitions = video_partitions
        self._parts_cache: tuple[float, frozenset[int]] = (0.0, frozenset())
        self.pending: OrderedDict[tuple[str, str], PendingQuery] = OrderedDict()  # by (query id, position)
        self.answered: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._next_offsets: dict[Partition, int] = {}
        self._last_commit = time.monotonic()
        self.results: list[QueryResult] = []  # the last few published (for tests and the demo)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Join the merge group."""
        if self.health is not None:
            self.health.set_condition("merge_assigned", False)
        self.source.subscribe([self.settings.topics.candidates], on_assign=self._on_assign,
                              on_revoke=self._on_revoke, on_reset=self._on_reset)

    def close(self) -> None:
        """Commit what is answered and leave the group."""
        try:
            self._commit(force=True)
        finally:
            self.source.close()
            if self.health is not None:
                self.health.forget("merge")

    def _on_assign(self, parts: Collection[Partition]) -> None:
        if self.health is not None:
            self.health.set_condition("merge_assigned", True)
        LOG.info("merging queries of %s", ", ".join(map(str, sorted(parts))) or "no candidates partition")

    def _on_revoke(self, parts: Collection[Partition]) -> None:
        revoked = set(parts)
        if self.health is not None:  # nothing is merged until the group assigns again (a rebalance, a restart)
            self.health.set_condition("merge_assigned", False)
        self._commit(force=True)
        for qid in [q for q, p in self.pending.items() if set(p.first_offsets) & revoked]:
            del self.pending[qid]  # the new owner re-reads its partials from the committed offset
        for p in revoked:
            self._next_offsets.pop(p, None)

    def _on_reset(self, parts: Collection[Partition]) -> None:
        for p in parts:  # the candidates topic was recreated: offsets kept for commits are stale
            self._next_offsets.pop(p, None)
            for pend in self.pending.values():
                pend.first_offsets.pop(p, None)

    def partitions_total(self) -> frozenset[int]:
        """Partition numbers of the video topic (cached for 2 s: a topic recreated with another count is followed)."""
        now = time.monotonic()
        if now - self._parts_cache[0] > 2.0 or not self._parts_cache[1]:
            if self._video_partitions is not None:
                parts = frozenset(self._video_partitions())
            else:
                parts = frozenset(p.partition for p in self.source.partitions_for(self.settings.topics.video))
            self._parts_cache = (now, parts)
        return self._parts_cache[1]

    # ------------------------------------------------------------------ the loop
    def run_once(self) -> int:
        """One poll: collect partials, answer the queries that are complete or due. Returns partials read."""
        if self.health is not None:
            self.health.beat("merge")
        timeout = self.settings.query.poll_timeout_s
        if self.pending:
            due = min(p.deadline for p in self.pending.values()) - self.settings.query.deadline_margin_s
            timeout = max(0.0, min(timeout, due - time.time()))
        records = self.source.poll(timeout, 64)
        for rec in records:
            self.add(rec)
        self.finish_due()
        self._commit()
        return len(records)

    def add(self, rec: Record) -> None:
        """Take one partial into the query it belongs to; a bad or inconsistent partial is dead-lettered."""
        self._next_offsets[rec.tp] = rec.offset + 1  # records of a partition come in offset order
        try:
            partial = decode_message(rec.value, rec.headers, CandidatePartial)
        except SchemaError as exc:
            self.dlq.reject(rec, stage=MERGE_STAGE, error=exc)
            return
        qid = (partial.query_id, partial.query_position)
        if qid in self.answered:
            return
        pend = self.pending.get(qid)
        fresh = pend is None
        if pend is None and time.time() > partial.deadline + _STALE_AFTER_S:
            # a replay (the deadline is the worker's own, so not a client's clock): answered long ago or lost with
            # a merger that died; answering now would flood the results topic after a merge-group reset
            LOG.warning("skipping a partial of %s read again %.0f s after its deadline", partial.query_id,
                        time.time() - partial.deadline)
            return
        try:
            if pend is None:
                pend = PendingQuery.first(partial, self.retrieval, max_budget_s=self.settings.query.max_timeout_s)
            pend.add(partial, rec.tp, rec.offset)
        except SchemaError as exc:
            self.dlq.reject(rec, stage=MERGE_STAGE, error=exc)
            return
        if fresh:
            self.pending[qid] = pend
            if len(self.pending) > self.settings.query.max_pending:
                oldest = next(iter(self.pending))
                self._finish(self.pending[oldest], note="too many queries in flight")

    def finish_due(self) -> int:
        """Answer every pending query that is complete, failed, or at its deadline; returns how many."""
        now = time.time()
        total = self.partitions_total()
        done = 0
        for pend in list(self.pending.values()):
            if pend.error is not None or pend.settled(total) or \
                    now >= pend.deadline - self.settings.query.deadline_margin_s:
                self._finish(pend)
                done += 1
        return done

    def _finish(self, pend: PendingQuery, note: str | None = None) -> QueryResult:
        self.pending.pop(pend.key, None)
        self.answered[pend.key] = time.time()
        while len(self.answered) > 10_000:
            self.answered.popitem(last=False)
        result = self._error_result(pend, pend.error) if pend.error is not None else self._merge(pend, note)
        out = encode_message(result, source=self.worker_id)
        try:
            self.sink.send(self.settings.topics.results, out.value, key=out.key, headers=out.headers)
            self.sink.flush()
        except BrokerError as exc:
            LOG.error("cannot publish the result of %s: %s", pend.query_id, exc)
        self.metrics.queries.labels(result.mode, _OUTCOMES[result.status]).inc()
        for stage in ("total", "stage2", "verify", "merge_wait"):
            if stage in result.latency_ms:
                self.metrics.query_latency.labels(stage).observe(result.latency_ms[stage] / 1e3)
        if pend.sent_at is not None:
            self.metrics.query_end_to_end.observe(max(0.0, result.answered_at - pend.sent_at))
        self.results.append(result)
        del self.results[:-100]
        LOG.info("answered %s: %s, %d matches, %.0f ms", result.query_id, result.status, len(result.matches),
                 result.latency_ms.get("total", 0.0))
        return result

    def _error_result(self, pend: PendingQuery, partial: CandidatePartial) -> QueryResult:
        if partial.dead_letter is not None:
            self.dlq.publish(partial.dead_letter.model_copy(update={"stage": STAGE}))

        return QueryResult(query_id=pend.query_id, worker_id=self.worker_id, status="error", mode=pend.mode,
                           error=f"{partial.error_reason}: {partial.error}",
                           coverage=Coverage(complete=False, notes=(f"rejected: {partial.error_reason}",)))

    def _merge(self, pend: PendingQuery, note: str | None) -> QueryResult:
        total = self.partitions_total()
        notes: list[str] = ([note] if note else []) + pend.notes
        latency = pend.worker_latency()
        first_received = pend.first_received()
        latency["merge_wait"] = max(0.0, (pend.last_partial - first_received) * 1e3)
        plan = pend.plan
        parts = [c for _, c in sorted(pend.complete.items())]
        matches: list[Match] = []
        segments: list[Segment] = []
        cut_short = note is not None
        if pend.features is None:
            notes.append("no partition was searched" if pend.skipped else "no partial arrived before the deadline")
        else:
            prepared = prepared_from_payload(pend.features, pend.local_dim, pend.global_dim)  # checked in add()
            merged = merge_candidates(parts, plan, prepared) if parts else Candidates.empty(plan.stage1,
                                                                                            pend.global_dim)
            stop_at = time.monotonic() + (pend.deadline - time.time())
            ranking = stage2(prepared, merged, plan, self.retrieval, stop_at)
            latency["stage2"] = ranking.timings_ms.get("stage2", 0.0)
            notes += list(ranking.coverage.notes)
            cut_short = cut_short or not ranking.coverage.complete
            proofs: list[Geometry | None] = [None] * len(ranking.hits)
            verify = min(self.settings.query.verify_top, len(ranking.hits))
            if verify and time.monotonic() > stop_at:
                notes.append("deadline: geometric proof of the matches skipped")
            elif verify:
                t_verify = time.perf_counter()
                size = (pend.features.image_height, pend.features.image_width)
                proofs = verify_hits(prepared, size, merged, ranking.hits, verify, config=self.retrieval,
                                     min_inliers=self.settings.query.verify_min_inliers)
                latency["verify"] = (time.perf_counter() - t_verify) * 1e3
            topic = self.settings.topics.video
            matches = [match_of(h, g, topic) for h, g in zip(ranking.hits, proofs, strict=True)]
            gap = self.settings.query.segment_gap_s
            segments = segments_of(ranking.hits, default_gap(self.settings.ingest.sample_fps) if gap is None else gap)
        if pend.unindexed:
            names = ", ".join(repr(c) for c in sorted(pend.unindexed))
            notes.append(f"camera {names} has never been indexed by any worker answering (a typo, or no video "
                         "published for it yet)" if len(pend.unindexed) == 1 else
                         f"cameras {names} have never been indexed by any worker answering (typos, or no video "
                         "published for them yet)")
        if pend.features is not None and not any(c.coverage.frames_total for c in pend.complete.values()):
            notes.append("no indexed frame matches the query's cameras and time range (a camera never indexed, or "
                         "outside retention): no match says nothing about the image")
        coverage = pend.coverage(total, self.settings.topics.video, notes, incomplete=cut_short)
        answered = time.time()
        latency["total"] = max(0.0, (answered - first_received) * 1e3)
        return QueryResult(query_id=pend.query_id, worker_id=self.worker_id,
                           status="complete" if coverage.complete else "partial", mode=pend.mode, matches=matches,
                           segments=segments, latency_ms=latency, coverage=coverage, answered_at=answered)

    def _commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < 1.0:
            return
        self._last_commit = now
        offsets = dict(self._next_offsets)
        for pend in self.pending.values():  # keep partials of unanswered queries re-readable
            for part, first in pend.first_offsets.items():
                if part in offsets:
                    offsets[part] = min(offsets[part], first)
        if offsets:
            try:
                self.source.commit(offsets)
            except BrokerError as exc:
                LOG.warning("merge commit failed: %s", exc)
