"""The stage-1 query loop: every worker reads every query and publishes its partitions' candidates."""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from dataclasses import dataclass, field

from l2g_core import L2GError, PreparedQuery, RetrievalConfig, SearchPlan, prepare_query, stage1
from plugins.errors import ExtractorInputError
from stream.deadletter import dead_letter_for
from stream.decode import decode_image
from stream.envelope import decode_message, encode_message
from stream.errors import (
    BadInputError,
    ExtractorCrashError,
    ImageDecodeError,
    MessageTooLargeError,
    SchemaError,
)
from stream.failures import extractor_crash
from stream.health import Health
from stream.messages import CandidatePartial, Query
from stream.metrics import StreamMetrics
from stream.ports import FeatureExtractor, MessageSink, MessageSource, Partition, Record
from stream.query.wire import PackedPartial, PartitionList, pack_partials, query_payload
from stream.refs import resolve_ref
from stream.settings import Settings
from stream.store import PartitionedIndex

__all__ = ["STAGE", "QueryLoop"]

LOG = logging.getLogger(__name__)
STAGE = "query"
_WORKER_STAGES = ("queue", "decode_image", "extract", "stage1")
_POLL_RECORDS = 64


@dataclass(order=True)
class _Admitted:
    """A query read and checked, waiting for its search (ordered by deadline, then arrival)."""

    deadline: float
    seq: int
    rec: Record = field(compare=False)
    query: Query = field(compare=False)
    plan: SearchPlan = field(compare=False)
    received: float = field(compare=False)
    notes: list[str] = field(compare=False)


def _position_of(rec: Record) -> str:
    return f"{rec.topic}/{rec.partition}/{rec.offset}"


def _query_id_of(rec: Record) -> str:
    if rec.key:
        text = rec.key.decode("utf-8", "replace").strip()
        if 0 < len(text) <= 256:
            return text
    return f"{rec.topic}-{rec.partition}-{rec.offset}"


class QueryLoop:
    """Reads every query (all partitions of the query topic, from the end, no group) and publishes this worker's
    stage-1 partials to the candidates topic (see :mod:`stream.query`).

    Args:
        settings: all settings.
        source: a consumer without a group.
        sink: producer for the candidates topic.
        index: the partition indexes this worker owns (shared with the ingest loop).
        extractor: the query extractor (set up already; the ingest loop has its own instance).
        retrieval: retrieval parameters (the same on every worker).
        metrics, health: metrics; heartbeat ``query`` and readiness ``query_assigned``.
        worker_id: identity in partials.
    """

    def __init__(self, settings: Settings, source: MessageSource, sink: MessageSink, index: PartitionedIndex,
                 extractor: FeatureExtractor, retrieval: RetrievalConfig, *, metrics: StreamMetrics,
                 health: Health | None = None, worker_id: str = "") -> None:
        self.settings = settings
        self.cfg = settings.query
        self.source = source
        self.sink = sink
        self.index = index
        self.extractor = extractor
        self.retrieval = retrieval
        self.metrics = metrics
        self.health = health
        self.worker_id = worker_id
        self.assigned: list[Partition] = []
        self._next_assign = 0.0
        self.handled = 0
        self._backlog: list[_Admitted] = []  # a heap: earliest deadline first
        self._seq = 0
        self._cost_s = 0.0  # moving average of one query's search time on this worker

    def start(self) -> None:
        """Read every partition of the query topic from its end."""
        if self.health is not None:
            self.health.set_condition("query_assigned", False)
        self._try_assign()

    def _try_assign(self) -> None:
        """Read every partition of the query topic (checked every second): from its end at first; partitions that
        appear later (the topic was recreated with another partition count) from their beginning, the others keep
        their positions. Readiness ``query_assigned`` is true while every partition of the topic is read."""
        self._next_assign = time.monotonic() + 1.0
        topic = self.settings.topics.queries
        if not self.assigned:
            current = self.assigned = self.source.assign_all(topic, from_end=True)
            if not self.assigned:
                LOG.info("query topic %s not found yet; retrying", topic)
        else:
            current = self.source.partitions_for(topic)
            if current and set(current) != set(self.assigned):
                LOG.warning("query topic %s has %d partitions now (%d read): reading the new ones from their "
                            "beginning", topic, len(current), len(self.assigned))
                self.assigned = self.source.assign_all(topic, from_end=False)
        if self.health is not None:
            self.health.set_condition("query_assigned", bool(current) and set(current) <= set(self.assigned))

    def close(self) -> None:
        """Release the consumer."""
        self.source.close()
        if self.health is not None:
            self.health.forget("query")

    def run_once(self) -> int:
        """One poll (without waiting while queries are queued), then the most urgent query; returns records read."""
        if self.health is not None:
            self.health.beat("query")
        if time.monotonic() >= self._next_assign:
            self._try_assign()
        if not self.assigned:
            time.sleep(self.cfg.poll_timeout_s)
            return 0
        records = self.source.poll(0.0 if self._backlog else self.cfg.poll_timeout_s, _POLL_RECORDS)
        for rec in records:
            self.admit(rec)
        self.serve_next()
        return len(records)

    def handle(self, rec: Record) -> list[CandidatePartial]:
        """Admit one query record and serve the queue; returns the partials sent (tests and tools)."""
        self.admit(rec)
        sent: list[CandidatePartial] = []
        while self._backlog:
            sent += self.serve_next()
        return sent

    def admit(self, rec: Record) -> None:
        """Read one query record into the queue (earliest deadline first); a bad one is answered with an error."""
        received = time.time()
        self.handled += 1
        query: Query | None = None
        try:
            if rec.size > self.settings.kafka.max_message_bytes:
                raise MessageTooLargeError(f"query message of {rec.size} bytes exceeds kafka.max_message_bytes")
            query = decode_message(rec.value, rec.headers, Query)
            try:
                plan = SearchPlan.build(query.mode or self.cfg.mode, query.k, self.retrieval,
                                        verify=self.cfg.verify_top)
            except L2GError as exc:
                raise SchemaError(str(exc)) from exc
        except BadInputError as exc:
            self._send_error(rec, query, exc, received)
            return
        deadline, notes = self._deadline(query, received)
        self._seq += 1
        heapq.heappush(self._backlog, _Admitted(deadline, self._seq, rec, query, plan, received, notes))

    def serve_next(self) -> list[CandidatePartial]:
        """Shed every queued query whose deadline can no longer be met, then search the most urgent one."""
        margin = self.cfg.deadline_margin_s
        sent: list[CandidatePartial] = []
        while self._backlog:
            item = heapq.heappop(self._backlog)
            if time.time() + self._cost_s > item.deadline - margin:
                sent += self._shed(item)
                continue
            sent += self._answer(item)
            break
        return sent

    def _shed(self, item: _Admitted) -> list[CandidatePartial]:
        late = time.time() + self._cost_s - item.deadline
        note = (f"shed by {self.worker_id or 'a worker'}: {len(self._backlog)} queries queued, a search takes "
                f"~{self._cost_s * 1e3:.0f} ms, the deadline would be missed by {late * 1e3:.0f} ms")
        own = sorted(part.partition for part, _ in self.index.items() if part.topic == self.settings.topics.video)
        partial = self._base(item, [*item.notes, note]).model_copy(update={"skipped_partitions": own})
        self.metrics.queries_shed.inc()
        LOG.info("query %s %s", item.query.query_id, note)
        self._send([PackedPartial(partial, encode_message(partial, source=self.worker_id))])
        return [partial]

    def _base(self, item: _Admitted, notes: list[str]) -> CandidatePartial:
        dims = self.index.config
        return CandidatePartial(
            query_id=item.query.query_id, worker_id=self.worker_id, answer_id=uuid.uuid4().hex, mode=item.plan.mode,
            k=item.plan.k, stage=item.plan.stage1, local_dim=dims.local_dim, global_dim=dims.global_dim,
            video_topic=self.settings.topics.video, deadline=item.deadline, sent_at=item.query.sent_at,
            received_at=item.received, notes=notes, query_position=_position_of(item.rec),
            unindexed_cameras=self._unindexed(item.query.cameras),
        )

    def _unindexed(self, cameras: list[str] | None) -> list[str]:
        """The cameras of ``cameras`` of which no video partition this worker owns holds a frame."""
        if not cameras:
            return []
        video = self.settings.topics.video
        held = {shard.id.camera_id for part, index in self.index.items() if part.topic == video
                for shard in index.select(cameras=cameras)}
        return sorted(set(cameras) - held)

    def _prepare(self, query: Query) -> tuple[PreparedQuery, dict[str, float], tuple[int, int]]:
        """The prepared query, its ``decode_image`` and ``extract`` times, and the ``(height, width)`` of the image
        its keypoints refer to (after resizing to ``query.image_max_side``)."""
        t0 = time.perf_counter()
        data = query.image if query.image is not None else resolve_ref(query.image_ref or "", self.settings.storage)
        image = decode_image(data, max_side=self.cfg.image_max_side, max_pixels=self.cfg.max_image_pixels)
        t1 = time.perf_counter()
        try:
            features = self.extractor.extract(image[None])[0]
        except ExtractorInputError as exc:  # e.g. an image too small for the extractor
            raise ImageDecodeError(f"the extractor rejects the image: {exc}", reason="bad_image") from exc
        except Exception as exc:  # a bug, not bad input: reported and counted; this query fails, the worker goes on
            raise extractor_crash(exc, extractor=self.extractor.name, frames=1, metrics=self.metrics) from exc
        t2 = time.perf_counter()
        dims = self.index.config
        prepared = prepare_query(features, self.retrieval, dims.local_dim, dims.global_dim)
        size = (int(image.shape[0]), int(image.shape[1]))
        return prepared, {"decode_image": (t1 - t0) * 1e3, "extract": (t2 - t1) * 1e3}, size

    def _deadline(self, query: Query, received: float) -> tuple[float, list[str]]:
        """The query's effective deadline (Unix time) and the notes that explain a change to it."""
        cfg = self.cfg
        if query.deadline is None:
            return received + cfg.default_timeout_s, []
        if query.deadline <= received:
            return received + cfg.default_timeout_s, [
                f"deadline {received - query.deadline:.1f} s in the past when read (client clock behind?): answered "
                f"within query.default_timeout_s={cfg.default_timeout_s:g}"]
        if query.deadline > received + cfg.max_timeout_s:
            return received + cfg.max_timeout_s, [f"deadline brought forward to query.max_timeout_s="
                                                  f"{cfg.max_timeout_s:g} after reading"]
        return query.deadline, []

    def _answer(self, item: _Admitted) -> list[CandidatePartial]:
        """Stage 1 of one admitted query over this worker's partitions; sends the partials."""
        started = time.perf_counter()
        query, plan = item.query, item.plan
        latency: dict[str, float] = {}
        if query.sent_at is not None:
            latency["queue"] = max(0.0, (time.time() - query.sent_at) * 1e3)
        try:
            prepared, times, image_size = self._prepare(query)
        except (BadInputError, ExtractorCrashError) as exc:  # every worker finds the same: the merger answers once
            return self._send_error(item.rec, query, exc, item.received)
        latency.update(times)
        stop_at = time.monotonic() + (item.deadline - self.cfg.deadline_margin_s - time.time())
        t3 = time.perf_counter()
        lists = [
            PartitionList(part.partition, cands.cut(plan.transport.candidates))
            for part, index in self.index.items() if part.topic == self.settings.topics.video
            for cands in [stage1(index, prepared, plan, self.retrieval, cameras=query.cameras,
                                 time_range=query.time_range, deadline=stop_at)]
        ]
        latency["stage1"] = (time.perf_counter() - t3) * 1e3
        for stage in _WORKER_STAGES:
            if stage in latency:
                self.metrics.query_latency.labels(stage).observe(latency[stage] / 1e3)
        base = self._base(item, item.notes).model_copy(update={
            "latency_ms": latency, "query_features": query_payload(prepared, plan.transport, image_size)})
        try:
            packed = pack_partials(base, lists, plan.transport, self.settings.kafka.max_message_bytes,
                                   source=self.worker_id, max_version=self.cfg.partial_version)
        except MessageTooLargeError as exc:  # only when max_message_bytes is absurdly small
            return self._send_error(item.rec, query, exc, item.received)
        self._send(packed)
        cost = time.perf_counter() - started
        self._cost_s = cost if not self._cost_s else 0.7 * self._cost_s + 0.3 * cost
        return [p.partial for p in packed]

    def _send_error(self, rec: Record, query: Query | None, exc: BadInputError | ExtractorCrashError,
                    received: float) -> list[CandidatePartial]:
        """An error partial: the merger answers ``status="error"`` and publishes the dead letter (with the query,
        so a crash can be reproduced: reason ``extractor_crash``, not a bad-input reason)."""
        reason = exc.reason if isinstance(exc, BadInputError) else "extractor_crash"
        qid = query.query_id if query is not None else _query_id_of(rec)
        letter = dead_letter_for(rec, stage=STAGE, error=exc, worker_id=self.worker_id, reason=reason,
                                 value_limit=min(65_536, self.settings.kafka.max_message_bytes // 4))
        partial = CandidatePartial(
            query_id=qid, worker_id=self.worker_id, answer_id=uuid.uuid4().hex,
            mode=(query.mode if query is not None and query.mode else self.cfg.mode),
            k=query.k if query is not None else self.cfg.k, video_topic=self.settings.topics.video,
            deadline=received + self.cfg.default_timeout_s, sent_at=query.sent_at if query is not None else None,
            received_at=received, error=str(exc), error_reason=reason, dead_letter=letter,
            query_position=_position_of(rec),
        )
        try:
            out = encode_message(partial, source=self.worker_id, max_bytes=self.settings.kafka.max_message_bytes)
        except MessageTooLargeError:
            partial = partial.model_copy(update={"dead_letter": letter.model_copy(update={"original_value": None})})
            out = encode_message(partial, source=self.worker_id)
        LOG.info("query %s rejected (%s): %s", qid, reason, exc)
        self._send([PackedPartial(partial, out)])
        return [partial]

    def _send(self, packed: list[PackedPartial]) -> None:
        for p in packed:
            self.sink.send(self.settings.topics.candidates, p.message.value, key=p.message.key,
                           headers=p.message.headers)
        self.sink.flush()
