"""Versioned wire schemas and their Kafka encoding.

Every message is a JSON document (the Kafka value) plus CloudEvents-style headers (Kafka protocol binding,
binary mode)::

    ce_specversion  1.0
    ce_type         l2g.video_chunk | l2g.query | l2g.candidate_partial | l2g.query_result | l2g.dead_letter
    ce_id           unique id (uuid4 hex)
    ce_source       who produced it (worker id, "l2g-stream publish-video", ...)
    ce_time         RFC 3339 time of production
    ce_dataschema   urn:l2g:<kind>:<version>
    content-type    application/json

The JSON value also carries ``kind`` and ``version``, so a message stays self-describing when its headers are
lost. Binary payloads (video segments, query images) are base64 inside the JSON; a payload too large for one
message travels as a reference (``ref``: a ``file://`` URI or path under an allowed root, the claim-check
pattern) instead.

A reader accepts any version up to :data:`SCHEMA_VERSION` of a kind and rejects newer ones with a
:class:`~stream.errors.SchemaError`, which the worker sends to the dead-letter topic.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlparse

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from stream.errors import MessageTooLargeError, SchemaError

__all__ = [
    "SCHEMA_VERSION",
    "CandidatePartial",
    "CandidateSection",
    "Coverage",
    "DeadLetter",
    "Headers",
    "Match",
    "Message",
    "OutboundMessage",
    "Query",
    "QueryFeatures",
    "QueryResult",
    "VideoChunk",
    "decode_message",
    "encode_message",
    "header",
]

SCHEMA_VERSION = 1
CONTENT_TYPE = "application/json"
Headers = Sequence[tuple[str, bytes]]


def _b64decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not valid base64: {exc}") from exc
    return value


Base64Payload = Annotated[
    bytes,
    BeforeValidator(_b64decode),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
]


def _check_ref(value: str) -> str:
    """A claim-check reference must parse: no NUL byte (raw or percent-encoded), a well-formed URL host part.

    ``stream.refs.resolve_ref`` would otherwise fail with a bare ValueError (``os.path.realpath``: embedded null
    byte; ``urlparse``: invalid IPv6 URL) instead of dead-lettering the message.
    """
    if "\x00" in value or "\x00" in unquote(value):
        raise ValueError("reference contains a NUL byte")
    try:
        urlparse(value)
    except ValueError as exc:
        raise ValueError(f"malformed reference: {exc}") from exc
    return value


Reference = Annotated[str, AfterValidator(_check_ref)]


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    version: int = Field(SCHEMA_VERSION, ge=1)

    @model_validator(mode="after")
    def _known_version(self) -> _Schema:
        if self.version > SCHEMA_VERSION:
            raise ValueError(f"schema version {self.version} is newer than this reader ({SCHEMA_VERSION})")
        return self


def _one_payload(data: bytes | None, ref: str | None, what: str) -> None:
    if (data is None) == (ref is None):
        raise ValueError(f"exactly one of {what} and ref must be set")


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
    mode: Literal["global", "global_to_local", "local", "l2g"] | None = None
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


class Match(_Schema):
    """One frame that matches a query.

    Attributes:
        camera_id, frame, timestamp: the frame (frame number within the camera's stream; Unix time).
        score: final score of the mode (higher is better).
        stage_scores: score per stage (``local``, ``global``, ``l2g``, ``inliers``, ...).
    """

    camera_id: str
    frame: int
    timestamp: float
    score: float
    stage_scores: dict[str, float] = Field(default_factory=dict)


class Coverage(_Schema):
    """What one worker searched for a query.

    Attributes:
        frames_searched, frames_total: frames searched / frames matching the filters in the index searched.
        shards_searched, shards_total: the same for index shards.
        partitions_searched, partitions_total: video partitions (index shards of the deployment) whose
            candidates reached the answer / partitions of the video topic.
        complete: False when the deadline cut the search short or a partition is missing.
        indexed_from, indexed_to: event-time span of the index searched (None when empty).
        notes: what was cut short.
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
    notes: list[str] = Field(default_factory=list)


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
        global_descriptors: ``(n, G)`` float32.
        descriptor_counts: local descriptors sent per candidate (0 in modes that do not re-rank locally).
        descriptors: ``(sum(counts), D)`` float16, each candidate's strongest first.
        keypoints: ``(sum(counts), 2)`` float32, or empty when the mode does not use them.
        coverage: what the search of the partition covered (repeated in every slice).
    """

    partition: int = Field(ge=0)
    start: int = Field(0, ge=0)
    total: int = Field(ge=0)
    cameras: list[str] = Field(default_factory=list)
    timestamps: list[float] = Field(default_factory=list)
    sequences: list[int] = Field(default_factory=list)
    scores: Base64Payload = b""
    global_descriptors: Base64Payload = b""
    descriptor_counts: list[int] = Field(default_factory=list)
    descriptors: Base64Payload = b""
    keypoints: Base64Payload = b""
    coverage: Coverage = Field(default_factory=Coverage)

    @model_validator(mode="after")
    def _consistent(self) -> CandidateSection:
        n = len(self.cameras)
        if len(self.timestamps) != n or len(self.sequences) != n or len(self.descriptor_counts) != n:
            raise ValueError("cameras, timestamps, sequences and descriptor_counts must have the same length")
        if self.start + n > self.total:
            raise ValueError("slice extends past the partition's total")
        if len(self.scores) != 4 * n:
            raise ValueError("scores must hold one float32 per candidate")
        if any(c < 0 for c in self.descriptor_counts):
            raise ValueError("descriptor_counts must be non-negative")
        if self.keypoints and len(self.keypoints) != 8 * sum(self.descriptor_counts):
            raise ValueError("keypoints must hold two float32 per descriptor (or be empty)")
        return self


class QueryFeatures(_Schema):
    """The prepared query features stage 2 needs, so that any worker can merge (float32, exact).

    Attributes:
        count: local features sent (the strongest first).
        descriptors: ``(count, D)`` float32 unit descriptors.
        keypoints: ``(count, 2)`` float32.
        global_descriptor: ``(G,)`` float32 unit descriptor.
    """

    count: int = Field(ge=0)
    descriptors: Base64Payload = b""
    keypoints: Base64Payload = b""
    global_descriptor: Base64Payload

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

    Every worker reads every query, searches its own partitions, and publishes partials keyed by query id to the
    candidates topic; one worker (the owner of that key in the merge group) merges them, runs stage 2 once and
    publishes the :class:`QueryResult`. A partial with ``error`` set tells the merger that the query itself is bad
    (every worker finds the same), so it answers with the error and dead-letters the query once.

    Attributes:
        kind: always ``candidate_partial``.
        query_id: the query.
        worker_id: who searched.
        answer_id: identity of this worker's answer (its slices share it).
        mode, k: the query's effective mode and k.
        stage: ``local`` or ``global`` (what the scores are).
        local_dim, global_dim: descriptor dimensions.
        video_topic: the topic whose partitions are the index shards.
        partitions: video partitions whose candidates (or a slice of them) this message carries.
        sections: the candidates, per partition (slices of one partition may span messages).
        deadline: Unix time by which the answer is due.
        sent_at: the query's ``sent_at``.
        received_at: Unix time this worker read the query.
        latency_ms: this worker's ``queue``, ``decode_image``, ``extract`` and ``stage1`` times.
        query_features: what stage 2 needs of the query (in the first message of each worker's answer).
        notes: approximations this worker made (e.g. query features cut to fit the message size).
        error, error_reason: the query cannot be answered (and why, machine-readable).
        dead_letter: the dead letter the merger publishes for a bad query.
    """

    kind: Literal["candidate_partial"] = "candidate_partial"
    query_id: str = Field(min_length=1, max_length=256)
    worker_id: str
    answer_id: str
    mode: str
    k: int = Field(ge=1)
    stage: str = "local"
    local_dim: int = Field(0, ge=0)
    global_dim: int = Field(0, ge=0)
    video_topic: str = ""
    partitions: list[int] = Field(default_factory=list)
    sections: list[CandidateSection] = Field(default_factory=list)
    deadline: float = Field(allow_inf_nan=False)
    sent_at: float | None = None
    received_at: float = Field(default_factory=time.time)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    query_features: QueryFeatures | None = None
    notes: list[str] = Field(default_factory=list)
    error: str | None = None
    error_reason: str | None = None
    dead_letter: DeadLetter | None = None


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
        latency_ms: per stage: ``queue`` (``sent_at`` to the merger reading the query, when known),
            ``decode_image``, ``extract``, ``stage1`` (slowest partial), ``merge_wait`` (reading the query to the
            last partial needed), ``stage2``, ``total`` (reading the query to publishing the result).
        coverage: what was searched.
        error: why the query failed (status ``error``).
        answered_at: Unix time the result was produced.
    """

    kind: Literal["query_result"] = "query_result"
    query_id: str
    worker_id: str
    status: Literal["complete", "partial", "error"]
    mode: str
    matches: list[Match] = Field(default_factory=list)
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
_BY_KIND: dict[str, type[_Schema]] = {
    "video_chunk": VideoChunk,
    "query": Query,
    "candidate_partial": CandidatePartial,
    "query_result": QueryResult,
    "dead_letter": DeadLetter,
}


@dataclass(frozen=True)
class OutboundMessage:
    """An encoded message ready to produce.

    Attributes:
        key: Kafka key (camera id for chunks, query id for queries and results).
        value: JSON bytes.
        headers: CloudEvents headers.
    """

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes on the wire, approximately (key + value + headers)."""
        return len(self.key or b"") + len(self.value) + sum(len(k) + len(v) for k, v in self.headers)


def header(headers: Headers | None, name: str) -> str | None:
    """The first header called ``name`` decoded as UTF-8, or None."""
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None


def _key_of(message: _Schema) -> bytes | None:
    if isinstance(message, VideoChunk):
        return message.camera_id.encode()
    if isinstance(message, (Query, QueryResult, CandidatePartial)):
        return message.query_id.encode()
    if isinstance(message, DeadLetter):
        return message.original_key
    return None


def encode_message(message: Message, *, source: str, max_bytes: int | None = None) -> OutboundMessage:
    """Serialise ``message`` to JSON with CloudEvents headers.

    Args:
        message: any schema of this module.
        source: the ``ce_source`` header (producer identity).
        max_bytes: raise when the encoded message is larger (None = no check).

    Returns:
        The key, value and headers to produce.

    Raises:
        MessageTooLargeError: the message exceeds ``max_bytes``; send the payload as a reference instead.
    """
    kind = message.kind
    value = message.model_dump_json(exclude_none=True).encode()
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_type", f"l2g.{kind}".encode()),
        ("ce_id", uuid.uuid4().hex.encode()),
        ("ce_source", source.encode()),
        ("ce_time", datetime.now(UTC).isoformat().encode()),
        ("ce_dataschema", f"urn:l2g:{kind}:{message.version}".encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    out = OutboundMessage(_key_of(message), value, headers)
    if max_bytes is not None and out.size > max_bytes:
        raise MessageTooLargeError(
            f"{kind} message is {out.size} bytes, over the {max_bytes}-byte limit; send the payload as a reference"
        )
    return out


def _clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: error messages echo attacker-sized input into logs and dead letters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def decode_message(value: bytes | None, headers: Headers | None, expected: type[M]) -> M:
    """Parse a message value of the ``expected`` schema.

    The kind comes from the ``ce_type`` header when present, else from the JSON ``kind`` field; either way it
    must be ``expected``'s.

    Args:
        value: the Kafka value (JSON bytes).
        headers: the Kafka headers.
        expected: the schema class the topic carries.

    Returns:
        The validated message.

    Raises:
        SchemaError: not JSON, wrong kind, unknown or newer version, or a field violates the schema.
    """
    want = expected.model_fields["kind"].default
    if not value:
        raise SchemaError(f"empty {want} message", reason="empty_message")
    ce_type = header(headers, "ce_type")
    if ce_type is not None and ce_type != f"l2g.{want}":
        raise SchemaError(f"expected a l2g.{want} message, got ce_type={_clip(repr(ce_type))}", reason="wrong_type")
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError also covers integers over sys.get_int_max_str_digits(); RecursionError deep nesting
        raise SchemaError(f"{want} message is not valid JSON: {_clip(str(exc))}", reason="invalid_json") from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"{want} message must be a JSON object", reason="schema_violation")
    kind = raw.get("kind", want)
    if kind != want:
        raise SchemaError(f"expected kind {want!r}, got {_clip(repr(kind))}", reason="wrong_type")
    try:
        return expected.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _clip(".".join(str(p) for p in first.get("loc", ())) or "message")
        raise SchemaError(f"{want} message invalid at {where}: {_clip(str(first.get('msg')))}",
                          reason="schema_violation") from exc
