"""Query answering, scaled out over the partition-sharded index.

The index is sharded by video partition: each frame lives in the index of the worker that owns its partition (see
:mod:`stream.store`). A query is answered in two hops::

    queries topic ──► every worker's QueryLoop (assign_all, from the end, no group)
                        decode image, extract, stage 1 over ITS partitions
                        └─► CandidatePartial(s), keyed by query id ──► candidates topic
    candidates topic ──► MergeLoop (consumer GROUP: exactly one worker owns each query id's partition)
                        collect partials until every video partition is covered or the deadline nears,
                        Candidates.merge + l2g_core.rerank once ──► QueryResult ──► results topic

* **Exactness.** A partial carries, per video partition, the stage-1 candidates that stage 2 of the mode can use
  (``max(k, rerank_k)`` for ``l2g`` with the strongest ``graph_features`` descriptors of the first ``rerank_k``;
  the whole ``g2l_shortlist`` with every stored descriptor and keypoint for ``global_to_local``; the top ``k`` for
  ``global``/``local``), with float32/float16 values as raw bytes, plus the query features stage 2 needs. The merged
  answer is therefore identical to one worker searching every partition (``PartitionedIndex.search``).
* **Coverage.** The merger knows the video topic's partitions; it answers as soon as each has a complete partial
  (a partition covered by two workers during a rebalance is taken once), else at ``deadline -
  deadline_margin_s`` with what arrived, saying which partitions are missing (``status="partial"``).
* **Size.** Partials larger than ``kafka.max_message_bytes`` are split into several messages (slices of a
  partition's list carry ``start``/``total``; the merger reassembles them).
* **Bad queries.** Every worker finds the same problem (schema, image, reference); each sends an error partial and
  the merger alone dead-letters the query and answers with ``status="error"``, so the asker is never left waiting
  and the dead letter is written once.
* **Delivery.** The merge group commits, per candidates partition, the offset before the oldest query still being
  merged: a merger that dies is replaced and the replacement re-reads the partials of unanswered queries. Partials
  whose deadline passed long ago (a replay) are skipped.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l2g_core import Candidates, FrameKey, PreparedQuery, RetrievalConfig, rerank
from stream.deadletter import DeadLetterPublisher, dead_letter_for
from stream.decode import decode_image
from stream.errors import BadInputError, BrokerError, ImageDecodeError, MessageTooLargeError, SchemaError
from stream.health import Health
from stream.messages import (
    CandidatePartial,
    CandidateSection,
    Coverage,
    Match,
    Query,
    QueryFeatures,
    QueryResult,
    decode_message,
    encode_message,
)
from stream.metrics import StreamMetrics
from stream.ports import FeatureExtractor, MessageSink, MessageSource, Partition, Record
from stream.refs import resolve_ref
from stream.settings import Settings
from stream.store import PartitionedIndex

__all__ = [
    "MergeLoop",
    "QueryLoop",
    "candidates_from_sections",
    "pack_partials",
    "transport_plan",
]

LOG = logging.getLogger(__name__)
STAGE = "query"
_STALE_AFTER_S = 30.0  # partials of a query whose deadline passed this long ago are a replay: skipped


# ---------------------------------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class TransportPlan:
    """What of each partition's stage-1 list stage 2 of a mode can use.

    Attributes:
        candidates: candidates sent per partition.
        described: how many of them (the best) carry local descriptors.
        descriptors: descriptors per described candidate (None: all stored).
        keypoints: whether keypoints travel.
        query_features: query features stage 2 uses (None: all).
    """

    candidates: int
    described: int
    descriptors: int | None
    keypoints: bool
    query_features: int | None


def transport_plan(mode: str, k: int, cfg: RetrievalConfig) -> TransportPlan:
    """The smallest partial that keeps the merged answer identical to a single worker's (see module docstring)."""
    if mode == "l2g":
        n = min(max(k, cfg.rerank_k), max(k, cfg.shortlist))
        return TransportPlan(n, cfg.rerank_k, cfg.graph_features, False, cfg.graph_features)
    if mode == "global_to_local":
        n = max(k, cfg.g2l_shortlist)
        return TransportPlan(n, n, None, True, None)
    return TransportPlan(k, 0, 0, False, 0)


def _query_payload(prepared: PreparedQuery, plan: TransportPlan) -> QueryFeatures:
    n = prepared.descriptors.shape[0] if plan.query_features is None else min(plan.query_features,
                                                                              prepared.descriptors.shape[0])
    return QueryFeatures(
        count=n,
        descriptors=np.ascontiguousarray(prepared.descriptors[:n], dtype="<f4").tobytes(),
        keypoints=np.ascontiguousarray(prepared.keypoints[:n], dtype="<f4").tobytes(),
        global_descriptor=np.ascontiguousarray(prepared.global_descriptor, dtype="<f4").tobytes(),
    )


def prepared_from_payload(payload: QueryFeatures, local_dim: int, global_dim: int) -> PreparedQuery:
    """The :class:`~l2g_core.PreparedQuery` a partial carries.

    Raises:
        SchemaError: the arrays do not match the dimensions.
    """
    desc = np.frombuffer(payload.descriptors, dtype="<f4")
    glob = np.frombuffer(payload.global_descriptor, dtype="<f4")
    if desc.size != payload.count * local_dim or glob.size != global_dim:
        raise SchemaError("query features do not match the partial's dimensions")
    return PreparedQuery(
        descriptors=desc.reshape(payload.count, local_dim).astype(np.float32),
        keypoints=np.frombuffer(payload.keypoints, dtype="<f4").reshape(payload.count, 2).astype(np.float32),
        global_descriptor=glob.astype(np.float32),
    )


def _coverage_msg(c: Any, indexed: tuple[float | None, float | None] = (None, None)) -> Coverage:
    return Coverage(frames_searched=c.frames_searched, frames_total=c.frames_total,
                    shards_searched=c.shards_searched, shards_total=c.shards_total, complete=c.complete,
                    indexed_from=indexed[0], indexed_to=indexed[1], notes=list(c.notes))


def _section(part: int, cands: Candidates, start: int, end: int, plan: TransportPlan,
             coverage: Coverage) -> CandidateSection:
    idx = range(start, end)
    counts: list[int] = []
    descs: list[np.ndarray] = []
    kps: list[np.ndarray] = []
    for i in idx:
        if i < plan.described:
            d = cands.descriptors[i] if plan.descriptors is None else cands.descriptors[i][:plan.descriptors]
            counts.append(int(d.shape[0]))
            descs.append(np.ascontiguousarray(d, dtype="<f2"))
            if plan.keypoints:
                kps.append(np.ascontiguousarray(cands.keypoints[i][:d.shape[0]], dtype="<f4"))
        else:
            counts.append(0)
    return CandidateSection(
        partition=part, start=start, total=len(cands),
        cameras=[cands.keys[i].camera_id for i in idx],
        timestamps=[float(cands.keys[i].timestamp) for i in idx],
        sequences=[int(cands.keys[i].sequence) for i in idx],
        scores=np.ascontiguousarray(cands.scores[start:end], dtype="<f4").tobytes(),
        global_descriptors=np.ascontiguousarray(cands.global_descriptors[start:end], dtype="<f4").tobytes(),
        descriptor_counts=counts,
        descriptors=b"".join(d.tobytes() for d in descs),
        keypoints=b"".join(k.tobytes() for k in kps),
        coverage=coverage,
    )


def pack_partials(base: CandidatePartial, lists: list[tuple[int, Candidates, Coverage]], plan: TransportPlan,
                  max_bytes: int, *, source: str) -> list[CandidatePartial]:
    """Split one worker's answer into partials that each encode under ``max_bytes``.

    Args:
        base: the partial's header fields (query, worker, deadline, query features, ...); its sections are ignored.
        lists: ``(video partition, candidates already cut to plan.candidates, coverage)`` per partition.
        plan: what travels.
        max_bytes: the message size limit.
        source: the ``ce_source`` used to measure the encoding.

    Returns:
        The partials; only the first carries ``query_features``.

    Raises:
        MessageTooLargeError: one candidate alone does not fit.
    """
    d, g = base.local_dim, base.global_dim

    def est(cands: Candidates, i: int) -> int:
        n = 0
        if i < plan.described:
            n = cands.descriptors[i].shape[0] if plan.descriptors is None else min(plan.descriptors,
                                                                                    cands.descriptors[i].shape[0])
        raw = 4 + 4 * g + n * (2 * d + 8)
        return math.ceil(raw * 4 / 3) + len(cands.keys[i].camera_id) + 48

    header = len(encode_message(base.model_copy(update={"sections": [], "partitions": []}), source=source).value)
    feats = base.query_features
    while feats is not None and header > max_bytes // 2 and feats.count > 1:
        # the query's own features take half the message: keep the strongest half (stage 2 becomes approximate)
        n = feats.count // 2
        feats = feats.model_copy(update={"count": n, "descriptors": feats.descriptors[:n * d * 4],
                                         "keypoints": feats.keypoints[:n * 8]})
        note = f"query features cut to the strongest {n} to fit kafka.max_message_bytes={max_bytes}"
        kept = [x for x in base.notes if not x.startswith("query features cut")]
        base = base.model_copy(update={"query_features": feats, "notes": [*kept, note]})
        header = len(encode_message(base.model_copy(update={"sections": [], "partitions": []}),
                                    source=source).value)
    rest = len(encode_message(base.model_copy(update={"sections": [], "partitions": [], "query_features": None}),
                              source=source).value)
    budgets = (int(max_bytes * 0.9) - header - 512, int(max_bytes * 0.9) - rest - 512)  # first message, others
    if budgets[0] <= 0 or budgets[1] <= 0:
        raise MessageTooLargeError(f"the query features alone exceed kafka.max_message_bytes={max_bytes}")
    messages: list[list[tuple[int, int, int]]] = [[]]  # per message: (list index, start, end)
    used = 0

    def full(size: int) -> bool:
        return used + size > budgets[0 if len(messages) == 1 else 1]

    for li, (_, cands, _) in enumerate(lists):
        start = 0
        n = len(cands)
        i = 0
        while i < n or (n == 0 and i == 0):
            size = (est(cands, i) if n else 0) + (300 if i == start else 0)
            if full(size) and (messages[-1] or i > start or len(messages) == 1):
                if i > start:
                    messages[-1].append((li, start, i))
                if not messages[-1] and len(messages) > 1:
                    raise MessageTooLargeError(f"one candidate needs ~{size} bytes, over kafka.max_message_bytes="
                                               f"{max_bytes}")
                messages.append([])  # (the first message may carry the query features alone)
                used, start = 0, i
                continue
            used += size
            i += 1
        messages[-1].append((li, start, n))
    out: list[CandidatePartial] = []
    for m, slices in enumerate(messages):
        if not slices and m > 0:
            continue  # (an empty first message still carries the query features)
        sections = [_section(lists[li][0], lists[li][1], s, e, plan, lists[li][2]) for li, s, e in slices]
        partial = base.model_copy(update={
            "sections": sections,
            "partitions": sorted({sec.partition for sec in sections}),
            "query_features": base.query_features if m == 0 else None,
        })
        encode_message(partial, source=source, max_bytes=max_bytes)  # raises if the estimate was wrong
        out.append(partial)
    return out


def candidates_from_sections(sections: list[CandidateSection], stage: str, local_dim: int,
                             global_dim: int) -> Candidates:
    """Reassemble one partition's candidate list from its slices (ordered by ``start``).

    Raises:
        SchemaError: the arrays do not match the declared counts or dimensions.
    """
    keys: list[FrameKey] = []
    scores: list[np.ndarray] = []
    globs: list[np.ndarray] = []
    descs: list[np.ndarray] = []
    kps: list[np.ndarray] = []
    try:
        for sec in sorted(sections, key=lambda s: s.start):
            n = len(sec.cameras)
            keys += [FrameKey(c, t, q) for c, t, q in zip(sec.cameras, sec.timestamps, sec.sequences, strict=True)]
            scores.append(np.frombuffer(sec.scores, dtype="<f4"))
            globs.append(np.frombuffer(sec.global_descriptors, dtype="<f4").reshape(n, global_dim))
            counts = np.asarray(sec.descriptor_counts, dtype=np.int64)
            d = np.frombuffer(sec.descriptors, dtype="<f2").reshape(int(counts.sum()), local_dim)
            kp = np.frombuffer(sec.keypoints, dtype="<f4").reshape(int(counts.sum()), 2) if sec.keypoints else \
                np.zeros((int(counts.sum()), 2), np.float32)
            bounds = np.cumsum(counts)[:-1]
            descs += [x.astype(np.float16) for x in np.split(d, bounds)] if n else []
            kps += [x.astype(np.float32) for x in np.split(kp, bounds)] if n else []
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"candidate section does not match its dimensions: {exc}") from exc
    return Candidates(
        keys=keys,
        scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32),
        stage=stage,
        global_descriptors=np.concatenate(globs).astype(np.float32) if globs else np.zeros((0, global_dim),
                                                                                             np.float32),
        descriptors=descs,
        keypoints=kps,
    )


def _query_id_of(rec: Record) -> str:
    if rec.key:
        text = rec.key.decode("utf-8", "replace").strip()
        if 0 < len(text) <= 256:
            return text
    return f"{rec.topic}-{rec.partition}-{rec.offset}"


# ---------------------------------------------------------------------------------------------------- query loop
class QueryLoop:
    """Reads every query (all partitions of the query topic, from the end, no group) and publishes this worker's
    stage-1 partials to the candidates topic (see the module docstring).

    Args:
        settings: all settings.
        source: a consumer without a group.
        sink: producer for the candidates topic.
        index: the partition indexes this worker owns (shared with the ingest loop).
        extractor: the query extractor (set up already; the ingest loop has its own instance).
        metrics, health: metrics; heartbeat ``query`` and readiness ``query_assigned``.
        worker_id: identity in partials.
    """

    def __init__(self, settings: Settings, source: MessageSource, sink: MessageSink, index: PartitionedIndex,
                 extractor: FeatureExtractor, *, metrics: StreamMetrics, health: Health | None = None,
                 worker_id: str = "") -> None:
        self.settings = settings
        self.cfg = settings.query
        self.source = source
        self.sink = sink
        self.index = index
        self.extractor = extractor
        self.metrics = metrics
        self.health = health
        self.worker_id = worker_id
        self.assigned: list[Partition] = []
        self._next_assign = 0.0
        self.handled = 0

    def start(self) -> None:
        """Read every partition of the query topic from its end."""
        if self.health is not None:
            self.health.set_condition("query_assigned", False)
        self._try_assign()

    def _try_assign(self) -> None:
        self._next_assign = time.monotonic() + 1.0
        self.assigned = self.source.assign_all(self.settings.topics.queries, from_end=True)
        if self.assigned and self.health is not None:
            self.health.set_condition("query_assigned", True)
        if not self.assigned:
            LOG.info("query topic %s not found yet; retrying", self.settings.topics.queries)

    def close(self) -> None:
        """Release the consumer."""
        self.source.close()
        if self.health is not None:
            self.health.forget("query")

    def run_once(self) -> int:
        """One poll; returns queries handled."""
        if self.health is not None:
            self.health.beat("query")
        if not self.assigned:
            if time.monotonic() >= self._next_assign:
                self._try_assign()
            if not self.assigned:
                time.sleep(self.cfg.poll_timeout_s)
                return 0
        records = self.source.poll(self.cfg.poll_timeout_s, 16)
        for rec in records:
            self.handle(rec)
        return len(records)

    def handle(self, rec: Record) -> list[CandidatePartial]:
        """Answer one query record with this worker's partials (error partials for a bad query); sends them."""
        received = time.time()
        mono = time.monotonic()
        self.handled += 1
        cfg = self.cfg
        query: Query | None = None
        try:
            if rec.size > self.settings.kafka.max_message_bytes:
                raise MessageTooLargeError(f"query message of {rec.size} bytes exceeds kafka.max_message_bytes")
            query = decode_message(rec.value, rec.headers, Query)
            mode = query.mode or cfg.mode
            PartitionedIndex.check_query(mode, query.k)
            deadline = query.deadline if query.deadline is not None else received + cfg.default_timeout_s
            latency: dict[str, float] = {}
            if query.sent_at is not None:
                latency["queue"] = max(0.0, (received - query.sent_at) * 1e3)
            t0 = time.perf_counter()
            data = query.image if query.image is not None else resolve_ref(query.image_ref or "",
                                                                            self.settings.storage)
            image = decode_image(data, max_side=cfg.image_max_side, max_pixels=cfg.max_image_pixels)
            t1 = time.perf_counter()
            try:
                features = self.extractor.extract(image[None])[0]
            except ValueError as exc:  # ExtractorInputError: e.g. an image too small for the extractor
                raise ImageDecodeError(f"the extractor rejects the image: {exc}", reason="bad_image") from exc
            t2 = time.perf_counter()
            prepared = self.index.prepare(features)
        except BadInputError as exc:
            return self._send_error(rec, query, exc, received)
        latency["decode_image"] = (t1 - t0) * 1e3
        latency["extract"] = (t2 - t1) * 1e3
        plan = transport_plan(mode, query.k, self.index.retrieval)
        stop_at = mono + (deadline - cfg.deadline_margin_s - received)
        t3 = time.perf_counter()
        lists: list[tuple[int, Candidates, Coverage]] = []
        for part, cands in self.index.partition_candidates(prepared, mode, k=query.k, cameras=query.cameras,
                                                           time_range=query.time_range, deadline=stop_at):
            if part.topic != self.settings.topics.video:
                continue
            stats = self.index.get(part).stats() if part in self.index.partitions() else None
            indexed = (stats.oldest_timestamp, stats.newest_timestamp) if stats is not None else (None, None)
            lists.append((part.partition, cands.take(np.arange(min(plan.candidates, len(cands)))),
                          _coverage_msg(cands.coverage, indexed)))
        latency["stage1"] = (time.perf_counter() - t3) * 1e3
        for stage in ("queue", "decode_image", "extract", "stage1"):
            if stage in latency:
                self.metrics.query_latency.labels(stage).observe(latency[stage] / 1e3)
        base = CandidatePartial(
            query_id=query.query_id, worker_id=self.worker_id, answer_id=uuid.uuid4().hex, mode=mode, k=query.k,
            stage="global" if mode in ("global", "global_to_local") else "local",
            local_dim=self.index.config.local_dim, global_dim=self.index.config.global_dim,
            video_topic=self.settings.topics.video, deadline=deadline, sent_at=query.sent_at, received_at=received,
            latency_ms=latency, query_features=_query_payload(prepared, plan),
        )
        try:
            partials = pack_partials(base, lists, plan, self.settings.kafka.max_message_bytes, source=self.worker_id)
        except MessageTooLargeError as exc:  # only when max_message_bytes is absurdly small
            return self._send_error(rec, query, exc, received)
        self._send(partials)
        return partials

    def _send_error(self, rec: Record, query: Query | None, exc: BadInputError, received: float) -> list[
            CandidatePartial]:
        qid = query.query_id if query is not None else _query_id_of(rec)
        letter = dead_letter_for(rec, stage=STAGE, error=exc, worker_id=self.worker_id,
                                 value_limit=min(65_536, self.settings.kafka.max_message_bytes // 4))
        partial = CandidatePartial(
            query_id=qid, worker_id=self.worker_id, answer_id=uuid.uuid4().hex,
            mode=(query.mode if query is not None and query.mode else self.cfg.mode),
            k=query.k if query is not None else self.cfg.k, video_topic=self.settings.topics.video,
            deadline=received + self.cfg.default_timeout_s, sent_at=query.sent_at if query is not None else None,
            received_at=received, error=str(exc), error_reason=exc.reason, dead_letter=letter,
        )
        try:
            encode_message(partial, source=self.worker_id, max_bytes=self.settings.kafka.max_message_bytes)
        except MessageTooLargeError:
            partial = partial.model_copy(update={"dead_letter": letter.model_copy(update={"original_value": None})})
        LOG.info("query %s rejected (%s): %s", qid, exc.reason, exc)
        self._send([partial])
        return [partial]

    def _send(self, partials: list[CandidatePartial]) -> None:
        for p in partials:
            out = encode_message(p, source=self.worker_id)
            self.sink.send(self.settings.topics.candidates, out.value, key=out.key, headers=out.headers)
        self.sink.flush()


# ---------------------------------------------------------------------------------------------------- merge loop
@dataclass
class _Pending:
    query_id: str
    mode: str
    k: int
    stage: str
    local_dim: int
    global_dim: int
    deadline: float
    sent_at: float | None
    first_seen: float
    first_offsets: dict[Partition, int] = field(default_factory=dict)
    features: QueryFeatures | None = None
    pieces: dict[int, dict[str, dict[int, CandidateSection]]] = field(default_factory=dict)
    complete: dict[int, tuple[Candidates, Coverage]] = field(default_factory=dict)
    latencies: dict[str, dict[str, float]] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last_partial: float = 0.0
    error: CandidatePartial | None = None


class MergeLoop:
    """Member of the merge group on the candidates topic: merges each query it owns and publishes the result.

    Args:
        settings: all settings.
        source: a consumer that joins ``query.merge_group_id``.
        sink: producer for results and dead letters.
        retrieval: stage-2 parameters (the same as every worker's).
        dead_letters: publisher of bad queries' dead letters.
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
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.answered: OrderedDict[str, float] = OrderedDict()
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

    def _on_assign(self, parts: Any) -> None:
        if self.health is not None:
            self.health.set_condition("merge_assigned", True)
        LOG.info("merging queries of %s", ", ".join(map(str, sorted(parts))) or "no candidates partition")

    def _on_revoke(self, parts: Any) -> None:
        revoked = set(parts)
        self._commit(force=True)
        for qid in [q for q, p in self.pending.items() if set(p.first_offsets) & revoked]:
            del self.pending[qid]  # the new owner re-reads its partials from the committed offset
        for p in revoked:
            self._next_offsets.pop(p, None)

    def _on_reset(self, parts: Any) -> None:
        for p in parts:  # the candidates topic was recreated: offsets kept for commits are stale
            self._next_offsets.pop(p, None)
            for pend in self.pending.values():
                pend.first_offsets.pop(p, None)

    def partitions_total(self) -> frozenset[int]:
        """Partition numbers of the video topic (cached for 10 s)."""
        now = time.monotonic()
        if now - self._parts_cache[0] > 10.0 or not self._parts_cache[1]:
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
        """Take one partial into the query it belongs to."""
        part = rec.tp
        self._next_offsets[part] = rec.offset + 1  # records of a partition come in offset order
        try:
            partial = decode_message(rec.value, rec.headers, CandidatePartial)
        except SchemaError as exc:
            self.dlq.reject(rec, stage="merge", error=exc)
            return
        qid = partial.query_id
        now = time.time()
        if qid in self.answered:
            return
        pend = self.pending.get(qid)
        if pend is None:
            if now > partial.deadline + _STALE_AFTER_S:
                LOG.debug("skipping a stale partial of %s", qid)
                return
            pend = _Pending(qid, partial.mode, partial.k, partial.stage, partial.local_dim, partial.global_dim,
                            partial.deadline, partial.sent_at, time.monotonic())
            self.pending[qid] = pend
            if len(self.pending) > self.settings.query.max_pending:
                oldest = next(iter(self.pending))
                self._finish(self.pending[oldest], note="too many queries in flight")
        pend.first_offsets.setdefault(part, rec.offset)
        pend.last_partial = now
        if partial.error is not None:
            pend.error = pend.error or partial
            return
        if partial.query_features is not None and pend.features is None:
            pend.features = partial.query_features
        pend.notes += [n for n in partial.notes if n not in pend.notes]
        pend.latencies.setdefault(partial.answer_id, dict(partial.latency_ms))
        pend.received.setdefault(partial.answer_id, partial.received_at)
        for sec in partial.sections:
            if sec.partition in pend.complete:
                continue  # already covered (e.g. by the previous owner during a rebalance)
            slices = pend.pieces.setdefault(sec.partition, {}).setdefault(partial.answer_id, {})
            slices[sec.start] = sec
            if sum(len(s.cameras) for s in slices.values()) >= sec.total:
                try:
                    cands = candidates_from_sections(list(slices.values()), pend.stage, pend.local_dim,
                                                     pend.global_dim)
                except SchemaError as exc:
                    LOG.warning("dropping a malformed partial of %s from %s: %s", qid, partial.worker_id, exc)
                    del pend.pieces[sec.partition][partial.answer_id]
                    continue
                pend.complete[sec.partition] = (cands, sec.coverage)
                del pend.pieces[sec.partition]

    def finish_due(self) -> int:
        """Answer every pending query that is complete, failed, or at its deadline; returns how many."""
        now = time.time()
        total = self.partitions_total()
        done = 0
        for pend in list(self.pending.values()):
            complete = bool(total) and total <= set(pend.complete) and pend.features is not None
            if pend.error is not None or complete or now >= pend.deadline - self.settings.query.deadline_margin_s:
                self._finish(pend)
                done += 1
        return done

    def _finish(self, pend: _Pending, note: str | None = None) -> QueryResult:
        self.pending.pop(pend.query_id, None)
        self.answered[pend.query_id] = time.time()
        while len(self.answered) > 10_000:
            self.answered.popitem(last=False)
        result = self._error_result(pend, pend.error) if pend.error is not None else self._merge(pend, note)
        out = encode_message(result, source=self.worker_id)
        try:
            self.sink.send(self.settings.topics.results, out.value, key=out.key, headers=out.headers)
            self.sink.flush()
        except BrokerError as exc:
            LOG.error("cannot publish the result of %s: %s", pend.query_id, exc)
        outcome = {"complete": "ok", "partial": "partial", "error": "error"}[result.status]
        self.metrics.queries.labels(result.mode, outcome).inc()
        if "total" in result.latency_ms:
            self.metrics.query_latency.labels("total").observe(result.latency_ms["total"] / 1e3)
        if "stage2" in result.latency_ms:
            self.metrics.query_latency.labels("stage2").observe(result.latency_ms["stage2"] / 1e3)
        if pend.sent_at is not None:
            self.metrics.query_end_to_end.observe(max(0.0, result.answered_at - pend.sent_at))
        self.results.append(result)
        del self.results[:-100]
        LOG.info("answered %s: %s, %d matches, %.0f ms", result.query_id, result.status, len(result.matches),
                 result.latency_ms.get("total", 0.0))
        return result

    def _error_result(self, pend: _Pending, partial: CandidatePartial) -> QueryResult:
        if partial.dead_letter is not None:
            self.dlq.publish(partial.dead_letter.model_copy(update={"stage": STAGE}))
        return QueryResult(query_id=pend.query_id, worker_id=self.worker_id, status="error", mode=pend.mode,
                           error=f"{partial.error_reason}: {partial.error}",
                           coverage=Coverage(complete=False, notes=[f"rejected: {partial.error_reason}"]))

    def _merge(self, pend: _Pending, note: str | None) -> QueryResult:
        total = self.partitions_total()
        notes: list[str] = ([note] if note else []) + pend.notes
        latency: dict[str, float] = {}
        for stage in ("queue", "decode_image", "extract", "stage1"):
            values = [lat[stage] for lat in pend.latencies.values() if stage in lat]
            if values:  # workers run in parallel: the answer waits for the slowest
                latency[stage] = min(values) if stage == "queue" else max(values)
        first_received = min(pend.received.values(), default=time.time())
        latency["merge_wait"] = max(0.0, (pend.last_partial - first_received) * 1e3)
        parts = [c for _, (c, _) in sorted(pend.complete.items())]
        limit = PartitionedIndex.merge_limit_for(pend.mode, pend.k, self.retrieval)
        merged = Candidates.merge(parts, limit, pend.global_dim) if parts else Candidates(
            [], np.zeros(0, np.float32), pend.stage, np.zeros((0, pend.global_dim), np.float32), [], [])
        missing = sorted(total - set(pend.complete))
        matches: list[Match] = []
        if pend.features is None:
            notes.append("no partial arrived before the deadline")
        else:
            prepared = prepared_from_payload(pend.features, pend.local_dim, pend.global_dim)
            stop_at = time.monotonic() + (pend.deadline - time.time())
            hits, timings, cov = rerank(prepared, merged, pend.mode, pend.k, self.retrieval, stop_at)
            latency["stage2"] = timings.get("stage2", 0.0)
            notes += list(cov.notes)
            matches = [Match(camera_id=h.key.camera_id, frame=int(h.key.sequence), timestamp=float(h.key.timestamp),
                             score=float(h.score), stage_scores=dict(h.stage_scores)) for h in hits]
        covs = [c for _, (_, c) in sorted(pend.complete.items())]
        for c in covs:
            notes += c.notes
        if missing:
            notes.append(f"deadline: partitions {missing} of {self.settings.topics.video} not searched")
        froms = [c.indexed_from for c in covs if c.indexed_from is not None]
        tos = [c.indexed_to for c in covs if c.indexed_to is not None]
        complete = not missing and pend.features is not None and all(c.complete for c in covs) and not note and \
            not any(n.startswith("deadline") for n in notes)
        coverage = Coverage(
            frames_searched=sum(c.frames_searched for c in covs), frames_total=sum(c.frames_total for c in covs),
            shards_searched=sum(c.shards_searched for c in covs), shards_total=sum(c.shards_total for c in covs),
            partitions_searched=len(pend.complete), partitions_total=len(total), complete=complete,
            indexed_from=min(froms) if froms else None, indexed_to=max(tos) if tos else None,
            notes=list(dict.fromkeys(notes)),
        )
        answered = time.time()
        latency["total"] = max(0.0, (answered - first_received) * 1e3)
        return QueryResult(query_id=pend.query_id, worker_id=self.worker_id,
                           status="complete" if complete else "partial", mode=pend.mode, matches=matches,
                           latency_ms=latency, coverage=coverage, answered_at=answered)

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
