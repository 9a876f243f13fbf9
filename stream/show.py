"""``l2g-stream show``: an answer as a picture. The result (read from the results topic by query id, or a saved
``--json`` file), its top matched frames fetched back from Kafka (:mod:`stream.framefetch`), the query image (given,
or read from the queries topic by query id), drawn as a contact sheet (:mod:`stream.contact_sheet`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from stream.contact_sheet import ContactSheet, render_contact_sheet
from stream.decode import RGBImage, decode_image
from stream.envelope import decode_message
from stream.errors import BadInputError, BrokerError, SchemaError, StreamError
from stream.framefetch import fetch_frames
from stream.messages import Query, QueryResult
from stream.ports import MessageSource, Record
from stream.refs import resolve_ref
from stream.settings import Settings

__all__ = ["ShowReport", "find_query_image", "find_result", "load_result_file", "show_result"]

T = TypeVar("T")


@dataclass(frozen=True)
class ShowReport:
    """What ``show`` drew.

    Attributes:
        sheet: the contact sheet.
        frames_shown: matched frames drawn; ``frames_missing``: matches whose frame could not be fetched (why).
    """

    sheet: ContactSheet
    frames_shown: int
    frames_missing: list[str]


def load_result_file(path: Path) -> QueryResult:
    """A result saved with ``l2g-stream query --json``.

    Raises:
        SchemaError: not a query result.
    """
    try:
        return QueryResult.model_validate(json.loads(path.read_bytes()))
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise SchemaError(f"{path} is not a saved query result: {exc}") from exc


def _scan(source: MessageSource, topic: str, pick: Callable[[Record], T | None], timeout_s: float) -> T | None:
    """The last record of ``topic`` (read from its start to its end) for which ``pick`` is not None."""
    parts = source.assign_all(topic, from_end=False)
    if not parts:
        return None
    for part in parts:
        source.seek_to_beginning(part)
    found: T | None = None
    deadline = time.monotonic() + timeout_s
    idle = 0
    while time.monotonic() < deadline:
        records = source.poll(0.5, 500)
        for rec in records:
            got = pick(rec)
            if got is not None:
                found = got
        lag = source.lag()
        if not records and len(lag) == len(parts) and not any(lag.values()):
            idle += 1
            if idle >= 2:  # at the end of every partition
                return found
        else:
            idle = 0
    return found


def _decoded(kind: type[T], query_id: str) -> Callable[[Record], T | None]:
    def pick(rec: Record) -> T | None:
        try:
            msg = decode_message(rec.value, rec.headers, kind)  # type: ignore[type-var]
        except SchemaError:
            return None
        return msg if getattr(msg, "query_id", None) == query_id else None  # type: ignore[return-value]
    return pick


def find_result(settings: Settings, query_id: str, *, source: MessageSource, timeout_s: float = 30.0) -> QueryResult:
    """The last result of ``query_id`` on the results topic.

    Raises:
        BrokerError: none found.
    """
    found = _scan(source, settings.topics.results, _decoded(QueryResult, query_id), timeout_s)
    if found is None:
        raise BrokerError(f"no result of query {query_id!r} on {settings.topics.results} (expired, or another id?)")
    return found


def find_query_image(settings: Settings, query_id: str, *, source: MessageSource, timeout_s: float = 30.0
                     ) -> bytes | None:
    """The image of the last query ``query_id`` on the queries topic (inline or claim check), None if not found."""
    query = _scan(source, settings.topics.queries, _decoded(Query, query_id), timeout_s)
    if query is None:
        return None
    if query.image is not None:
        return query.image
    try:
        return resolve_ref(query.image_ref or "", settings.storage)
    except BadInputError:
        return None


def show_result(settings: Settings, result: QueryResult, *, source: MessageSource, query_image: bytes | None,
                top: int = 8, timeout_s: float = 10.0) -> ShowReport:
    """The contact sheet of ``result``: its first ``top`` matches' frames fetched back from Kafka.

    Args:
        settings: topics, storage roots, the indexed frame size.
        result: the answer.
        source: a consumer outside any group (its assignment is changed).
        query_image: the query's JPEG/PNG bytes, or None.
        top: matches drawn.
        timeout_s: how long to look for each chunk.

    Raises:
        ImageDecodeError: ``query_image`` does not decode.
    """
    shown = result.matches[:top]
    refs = [(i, m.frame_ref) for i, m in enumerate(shown) if m.frame_ref is not None]
    fetched = fetch_frames(settings, [r for _, r in refs], source=source, timeout_s=timeout_s)
    frames: list[RGBImage | None] = [None] * len(shown)
    why: list[str | None] = ["no frame reference (indexed before frames kept one)"] * len(shown)
    for (i, _), got in zip(refs, fetched, strict=True):
        if isinstance(got, StreamError):
            why[i] = str(got)
        else:
            frames[i], why[i] = got, None
    query = None if query_image is None else decode_image(query_image, max_side=settings.query.image_max_side,
                                                          max_pixels=settings.query.max_image_pixels)
    sheet = render_contact_sheet(result, frames, query, top=top, missing=why)
    missing = [f"#{i + 1} {m.camera_id} frame {m.frame}: {w}" for i, (m, w) in enumerate(zip(shown, why,
                                                                                             strict=True)) if w]
    return ShowReport(sheet, sum(f is not None for f in frames), missing)
