"""Versioned wire schemas (their Kafka encoding is :mod:`stream.envelope`).

Every message is a JSON document (the Kafka value) plus CloudEvents-style headers (Kafka protocol binding,
binary mode)::

    ce_specversion  1.0
    ce_type         l2g.video_chunk | l2g.query | l2g.candidate_partial | l2g.query_result | l2g.dead_letter
    ce_id           unique id (uuid4 hex)
    ce_source       who produced it (worker id, "l2g-stream publish-video", ...)
    ce_time         RFC 3339 time of production
    ce_dataschema   urn:l2g:<kind>:<version>
    content-type    application/json

(see :mod:`stream.envelope`). The JSON value also carries ``kind`` and ``version``, so a message stays
self-describing when its headers are lost. Binary payloads (video segments, query images) are base64 inside the
JSON; a payload too large for one message travels as a reference (``ref``: a ``file://`` URI or path under an
allowed root, the claim-check pattern) instead.

A reader accepts any version of a kind up to the kind's ``KIND_VERSION`` (:data:`SCHEMA_VERSION`, 1, unless the
kind has changed since) and rejects newer ones with a :class:`~stream.errors.SchemaError`, which the worker sends
to the dead-letter topic. Versions: ``candidate_partial`` 2 adds float16 global descriptors
(``CandidateSection.global_dtype``), 3 int8 re-rank descriptors (``CandidateSection.descriptor_dtype``); every
other kind is at 1.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal, TypeVar

from pydantic import Field, model_validator

from l2g_core import Coverage, Mode, Stage
from stream.match_messages import FrameRef, Match, MatchGeometry, Segment
from stream.message_base import SCHEMA_VERSION, Base64Payload, Reference
from stream.message_base import Schema as _Schema
from stream.message_base import one_payload as _one_payload

__all__ = [  # (FrameRef, Match, MatchGeometry, Segment: stream.match_messages; re-exported)
    "SCHEMAS",
    "SCHEMA_VERSION",
    "CandidatePartial",
    "CandidateSection",
    "DeadLetter",
    "FrameRef",
    "M",
    "Match",
    "MatchGeometry",
    "Message",
    "Query",
    "QueryFeatures",
    "QueryResult",
    "Segment",
    "VideoChunk",
]

class VideoChunk(_Schema):
    """One self-contained encoded video segment of one camera (MPEG-TS or MP4), keyed by camera id.

    Attributes:
        kind: always ``video_chunk``.
        camera_id: the camera; also the Kafka key, so a camera's chunks stay ordered on one partition.
        sequence: chunk number within the camera's stream (0, 1, 2, ...).
        first_frame: frame number of the segment's first frame within the camera's stream; decoded frame
            ``i`` of the segment gets frame number ``first_frame + i`` (the dedup key with ``camera_id``).
        start_time: time base of the segment: Unix time (seconds) of its first frame; frame ``i`` is at
            ``start_time + (pts_i - pts_0) * stream.time_base``.
        fps: nominal frame rate (used for sampling the first frame of a segment).
        container: ``mpegts`` or ``mp4``.
        codec: the video codec (informative; decoding probes the data).
        frame_count: frames encoded in the segment when known; fewer decoded frames mean truncation.
        data: the encoded segment (base64 in JSON); exclusive with ``ref``.
        ref: claim-check reference to the segment (``file://`` URI or path); exclusive with ``data``.
    """

    kind: Literal["video_chunk"] = "video_chunk"
    camera_id: str = Field(min_length=1, max_length=256)
    sequence: int = Field(ge=0)
    first_frame: int = Field(ge=0)
    start_time: float = Field(allow_inf_nan=False)
    fps: float = Field(gt=0.0, le=1000.0)
    container: Literal["mpegts", "mp4"] = "mpegts"
    codec: str | None = Field(None, max_length=32)
    frame_count: int | None = Field(None, ge=0)
    data: Base64Payload | None = None
    ref: Reference | None = Field(None, max_length=4096)

    @model_validator(mode="after")
    def _payload(self) -> VideoChunk:
        _one_payload(self.data, self.ref, "data")
        return self


class Query(_Schema):
    """Where and when does this image appear?

    Attributes:
        kind: always ``query``.
        query_id: caller-chosen id; results are keyed by it.
        image: JPEG or PNG bytes (base64 in JSON); exclusive with ``image_ref``.
        image_ref: claim-check reference to the image; exclusive with ``image``.
        k: matches wanted.
        mode: retrieval mode (``global``, ``global_to_local``, ``local``, ``l2g``); None = worker default.
        cameras: only these cameras; None = all.
        time_from, time_to: only frames in this Unix-time range (inclusive); None = unbounded.
        deadline: Unix time by which the answer is wanted; the worker answers with what it searched by then.
            None = the worker's default budget from receipt.
        sent_at: Unix time the query was sent (for end-to-end latency).
    """

    kind: Literal["query"] = "query"
    query_id: str = Field(min_length=1, max_length=256)
    image: Base64Payload | None = None
    image_ref: Reference | None = Field(None, max_length=4096)
    k: int = Field(10, ge=1, le=1_000)
    mode: Mode | None = None
    cameras: list[str] | None = Field(None, max_length=10_000)
    time_from: float | None = Field(None, allow_inf_nan=False)
    time_to: float | None = Field(None, allow_inf_nan=False)
    deadline: float | None = Field(None, allow_inf_nan=False)
    sent_at: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _payload(self) -> Query:
        _one_payload(self.image, self.image_ref, "image")
        if self.time_from is not None and self.time_to is not None and self.time_from > self.time_to:
            raise ValueError("time_from is after time_to")
        return self

    @property
    def time_range(self) -> tuple[float, float] | None:
        """``(time_from, time_to)`` with open ends as ±inf, or None when both are open."""
        if self.time_from is None and self.time_to is None:
            return None
        return (
            self.time_from if self.time_from is not None else float("-inf"),
            self.time_to if self.time_to is not None else float("inf"),
        )


class CandidateSection(_Schema):
    """Stage-1 candidates of one video partition (or a slice of them, when split over several messages).

    Arrays travel as little-endian raw bytes (base64 in JSON), so a merge reproduces a single worker's floats
    exactly.

    Attributes:
        partition: the video partition.
        start: position of this slice's first candidate in the partition's list.
        total: candidates of the partition over every slice.
        cameras, timestamps, sequences: frame keys of the slice, best first.
        scores: ``(n,)`` float32 stage-1 scores.
        global_descriptors: ``(n, G)`` float32, or float16 with ``global_dtype`` ``float16`` (partial version 2;
            sent only when every value is exact in float16, as an index of float16 globals holds them).
        global_dtype: ``float16``, or None for float32.
        descriptor_counts: local descriptors sent per candidate (0 in modes that do not re-rank locally).
        descriptors: ``(sum(counts), D)`` float16, each candidate's strongest first; or int8 codes with
            ``descriptor_dtype`` ``int8`` (partial version 3; sent only when they give back the float16 values
            exactly, as an index of int8 re-rank features stores them).
        descriptor_dtype: ``int8``, or None for float16.
        descriptor_scales: ``(sum(counts),)`` float16 scale of each int8 row (``row = codes * scale / 127``, then
            float16); empty for float16 descriptors.
        keypoints: ``(sum(counts), 2)`` float32, or empty when the mode does not use them.
        chunk_offsets, chunk_frames, frame_sizes: per candidate, the offset of the video chunk record that carried
            the frame (in ``partition`` of the partial's ``video_topic``), the frame's position among the chunk's
            decoded frames and its ``[width, height]`` as indexed; ``-1`` (``[0, 0]``) where unknown; all three
            empty when none is known.
        coverage: what the search of the partition covered (repeated in every slice).
        joined: how many of the partition's ``total`` candidates (the last) are its joined tail: its best frames by
            global cosine, each with its local stage-1 ``score`` (``l2g``; repeated in every slice).
    """

    partition: int = Field(ge=0)
    start: int = Field(0, ge=0)
    total: int = Field(ge=0)
    joined: int = Field(0, ge=0)
    cameras: list[str] = Field(default_factory=list)
    timestamps: list[float] = Field(default_factory=list)
    sequences: list[int] = Field(default_factory=list)
    scores: Base64Payload = b""
    global_descriptors: Base64Payload = b""
    global_dtype: Literal["float16"] | None = None
    descriptor_counts: list[int] = Field(default_factory=list)
    descriptors: Base64Payload = b""
    descriptor_dtype: Literal["int8"] | None = None
    descriptor_scales: Base64Payload = b""
    keypoints: Base64Payload = b""
    chunk_offsets: list[int] = Field(default_factory=list)
    chunk_frames: list[int] = Field(default_factory=list)
    frame_sizes: list[tuple[int, int]] = Field(default_factory=list)
    coverage: Coverage = Field(default_factory=Coverage)

    @model_validator(mode="after")
    def _consistent(self) -> CandidateSection:
        n = len(self.cameras)
        if len(self.timestamps) != n or len(self.sequences) != n or len(self.descriptor_counts) != n:
            raise ValueError("cameras, timestamps, sequences and descriptor_counts must have the same length")
        sources = (len(self.chunk_offsets), len(self.chunk_frames), len(self.frame_sizes))
        if sources not in ((0, 0, 0), (n, n, n)):
            raise ValueError("chunk_offsets, chunk_frames and frame_sizes must all be empty or hold one value per "
                             "candidate")
        if self.start + n > self.total:
            raise ValueError("slice extends past the partition's total")
        if self.joined > self.total:
            raise ValueError("the joined tail is longer than the partition's total")
        if len(self.scores) != 4 * n:
            raise ValueError("scores must hold one float32 per candidate")
        if any(c < 0 for c in self.descriptor_counts):
            raise ValueError("descriptor_counts must be non-negative")
        if self.keypoints and len(self.keypoints) != 8 * sum(self.descriptor_counts):
            raise ValueError("keypoints must hold two float32 per descriptor (or be empty)")
        scales = 2 * sum(self.descriptor_counts) if self.descriptor_dtype == "int8" else 0
        if len(self.descriptor_scales) != scales:
            raise ValueError("descriptor_scales must hold one float16 per int8 descriptor (and none otherwise)")
        return self


class QueryFeatures(_Schema):
    """The prepared query features stage 2 needs, so that any worker can merge (float32, exact).

    Attributes:
        count: local features sent (the strongest first).
        descriptors: ``(count, D)`` float32 unit descriptors.
        keypoints: ``(count, 2)`` float32.
        global_descriptor: ``(G,)`` float32 unit descriptor.
        image_width, image_height: size of the query image the keypoints refer to (0: unknown); the geometric
            proof projects this rectangle into the matched frames.
    """

    count: int = Field(ge=0)
    descriptors: Base64Payload = b""
    keypoints: Base64Payload = b""
    global_descriptor: Base64Payload
    image_width: int = Field(0, ge=0)
    image_height: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> QueryFeatures:
        if len(self.keypoints) != 8 * self.count:
            raise ValueError("keypoints must hold two float32 per feature")
        if self.count and len(self.descriptors) % (4 * self.count):
            raise ValueError("descriptors must hold count float32 rows")
        if not self.global_descriptor or len(self.global_descriptor) % 4:
            raise ValueError("global_descriptor must hold float32 values")
        return self


class CandidatePartial(_Schema):
    """One worker's stage-1 answer to a query over the video partitions it owns (the scale-out unit).

    Versions (this release reads 1 to 3): 2, a section may carry float16 global descriptors; 3, int8 re-rank
    descriptors. A partial is written at the oldest version that carries it, at most ``query.partial_version``
    (lowered during a rolling upgrade from a release that reads older versions only).

    Every worker reads every query, searches its own partitions, and publishes partials keyed by query id to the
    candidates topic; one worker (the owner of that key in the merge group) merges them, runs stage 2 once and
    publishes the :class:`QueryResult`. A partial with ``error`` set tells the merger that the query itself is bad
    (every worker finds the same), so it answers with the error and dead-letters the query once.

    Attributes:
        kind: always ``candidate_partial``.
        query_id: the query.
        worker_id: who searched.
        answer_id: identity of this worker's answer (its slices share it).
        query_position: where the query record was read (``topic/partition/offset``, the same for every worker):
            two queries that reuse a ``query_id`` are told apart by it, and each is answered.
        mode, k: the query's effective mode and k.
        stage: ``local`` or ``global`` (what the scores are).
        local_dim, global_dim: descriptor dimensions.
        video_topic: the topic whose partitions are the index shards.
        partitions: video partitions whose candidates (or a slice of them) this message carries.
        sections: the candidates, per partition (slices of one partition may span messages).
        skipped_partitions: video partitions this worker owns but did not search (the query was shed: its deadline
            could not be met); the merger answers without waiting for them.
        deadline: Unix time by which the answer is due.
        sent_at: the query's ``sent_at``.
        received_at: Unix time this worker read the query.
        latency_ms: this worker's ``queue``, ``decode_image``, ``extract`` and ``stage1`` times.
        query_features: what stage 2 needs of the query (in the first message of each worker's answer).
        notes: approximations this worker made (e.g. query features cut to fit the message size).
        unindexed_cameras: cameras named by the query of which no partition this worker owns holds a frame (the
            merger names those that no worker answering holds: a camera never indexed, or a typo).
        error, error_reason: the query cannot be answered (and why, machine-readable).
        dead_letter: the dead letter the merger publishes for a bad query.
    """

    KIND_VERSION: ClassVar[int] = 3

    kind: Literal["candidate_partial"] = "candidate_partial"
    query_id: str = Field(min_length=1, max_length=256)
    worker_id: str
    answer_id: str
    query_position: str = Field("", max_length=512)
    mode: Mode
    k: int = Field(ge=1)
    stage: Stage = "local"
    local_dim: int = Field(0, ge=0)
    global_dim: int = Field(0, ge=0)
    video_topic: str = ""
    partitions: list[int] = Field(default_factory=list)
    sections: list[CandidateSection] = Field(default_factory=list)
    skipped_partitions: list[int] = Field(default_factory=list, max_length=100_000)
    deadline: float = Field(allow_inf_nan=False)
    sent_at: float | None = None
    received_at: float = Field(default_factory=time.time)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    query_features: QueryFeatures | None = None
    notes: list[str] = Field(default_factory=list)
    unindexed_cameras: list[str] = Field(default_factory=list, max_length=10_000)
    error: str | None = None
    error_reason: str | None = None
    dead_letter: DeadLetter | None = None

    @model_validator(mode="after")
    def _version_carries_sections(self) -> CandidatePartial:
        if self.version < 2 and any(sec.global_dtype is not None for sec in self.sections):
            raise ValueError("float16 global descriptors need candidate_partial version 2")
        if self.version < 3 and any(sec.descriptor_dtype is not None for sec in self.sections):
            raise ValueError("int8 descriptors need candidate_partial version 3")
        return self


class QueryResult(_Schema):
    """The answer to a query, merged over every video partition by one worker.

    Attributes:
        kind: always ``query_result``.
        query_id: the query answered.
        worker_id: the answering worker.
        status: ``complete``; ``partial`` (deadline hit or a partition missing: coverage says what was searched);
            ``error``.
        mode: the retrieval mode used.
        matches: best first.
        segments: the matches merged into per-camera time segments (matches of one camera at most
            ``query.segment_gap_s`` apart), best segment first.
        latency_ms: per stage: ``queue`` (``sent_at`` to the merger reading the query, when known),
            ``decode_image``, ``extract``, ``stage1`` (slowest partial), ``merge_wait`` (reading the query to the
            last partial needed: it *includes* the slowest worker's ``decode_image``, ``extract`` and ``stage1``,
            so the stages do not add up), ``stage2``, ``verify`` (geometric proof of the top matches, after stage 2),
            ``total`` (reading the query to publishing the result). Each
            is also a ``stage`` of the ``l2g_query_latency_seconds`` histogram.
        coverage: what was searched.
        error: why the query failed (status ``error``).
        answered_at: Unix time the result was produced.
    """

    kind: Literal["query_result"] = "query_result"
    query_id: str
    worker_id: str
    status: Literal["complete", "partial", "error"]
    mode: Mode
    matches: list[Match] = Field(default_factory=list)
    segments: list[Segment] = Field(default_factory=list)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    coverage: Coverage = Field(default_factory=Coverage)
    error: str | None = None
    answered_at: float = Field(default_factory=time.time)


class DeadLetter(_Schema):
    """A message that could not be processed, with where and why (KIP-1034 style).

    Attributes:
        kind: always ``dead_letter``.
        stage: where it failed: ``ingest`` or ``query`` (the worker loop that read it).
        reason: short machine-readable reason (``corrupt_video``, ``schema_violation``, ``oversized``, ...).
        error_class, error_message: the exception.
        original_topic, original_partition, original_offset: where the message was read.
        original_key: its key (base64).
        original_headers: its headers (values decoded as UTF-8 with replacement).
        original_value: its value (base64) when at most ``value_limit`` bytes, else None.
        original_size: size of the value in bytes.
        worker_id: who failed.
        failed_at: Unix time.
    """

    kind: Literal["dead_letter"] = "dead_letter"
    stage: str
    reason: str
    error_class: str
    error_message: str
    original_topic: str
    original_partition: int
    original_offset: int
    original_key: Base64Payload | None = None
    original_headers: dict[str, str] = Field(default_factory=dict)
    original_value: Base64Payload | None = None
    original_size: int = 0
    worker_id: str = ""
    failed_at: float = Field(default_factory=time.time)


CandidatePartial.model_rebuild()

Message = VideoChunk | Query | CandidatePartial | QueryResult | DeadLetter
M = TypeVar("M", VideoChunk, Query, CandidatePartial, QueryResult, DeadLetter)
SCHEMAS: dict[str, type[_Schema]] = {  # by kind
    "video_chunk": VideoChunk,
    "query": Query,
    "candidate_partial": CandidatePartial,
    "query_result": QueryResult,
    "dead_letter": DeadLetter,
}

