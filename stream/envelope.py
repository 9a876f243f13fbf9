"""The Kafka envelope of every message: JSON value, CloudEvents headers (binary mode), key, size checks.

See :mod:`stream.messages` for the schemas and the header list.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from stream.errors import MessageTooLargeError, SchemaError
from stream.messages import CandidatePartial, DeadLetter, M, Message, Query, QueryResult, VideoChunk

__all__ = ["CONTENT_TYPE", "Headers", "OutboundMessage", "decode_message", "encode_message", "header"]

CONTENT_TYPE = "application/json"
Headers = Sequence[tuple[str, bytes]]


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


def _key_of(message: Message) -> bytes | None:
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
        text = value.decode("utf-8")  # JSON on the wire is UTF-8 (RFC 8259); json.loads would guess UTF-16/32
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{want} message is not JSON: byte 0x{value[exc.start]:02x} at offset {exc.start} is not "
                          "UTF-8 text", reason="invalid_json") from exc
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
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
