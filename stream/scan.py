"""Read a topic once, from given offsets up to its end as it was when the scan began (operator tools: the
``dead-letters`` and ``replay`` commands). Outside any consumer group: nothing is committed, no worker is disturbed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from stream.errors import BrokerError
from stream.ports import Partition, Record

if TYPE_CHECKING:
    from stream.kafka import KafkaSource
    from stream.settings import Settings

__all__ = ["open_reader", "scan"]


def open_reader(settings: Settings, purpose: str) -> KafkaSource:
    """A group-less consumer for a scan (client id ``<kafka.client_id>-<purpose>-<random>``)."""
    from stream.kafka import KafkaSource

    return KafkaSource(settings.kafka, client_id=f"{settings.kafka.client_id}-{purpose}-{uuid.uuid4().hex[:6]}",
                       group_id=None, fetch_max_wait_ms=100)


def scan(source: KafkaSource, topic: str, start: Mapping[Partition, int | None] | None = None, *,
         idle_timeout_s: float = 30.0) -> Iterator[Record]:
    """Every record of ``topic`` from ``start`` (per partition; missing: the first retained record; None: nothing,
    the partition is skipped) up to its end when the scan begins, in offset order per partition.

    The end of a partition is the high watermark of its first fetch (ListOffsets "latest" alone falls short on
    tansu, see :meth:`stream.kafka.KafkaSource.end_offsets`); a partition empty then is not read.

    Raises:
        BrokerError: the topic does not exist, or no record arrives for ``idle_timeout_s`` while some are due.
    """
    parts = source.assign_all(topic, from_end=False)
    if not parts:
        raise BrokerError(f"topic {topic!r} does not exist")
    ends = source.end_offsets(parts)
    todo: dict[Partition, int] = {}
    for part in parts:
        first = (start or {}).get(part, -1)
        if first is None:
            continue
        if first >= 0:
            source.seek(part, first)
        if ends.get(part, 0) > max(first, 0):
            todo[part] = ends[part]
    for part in set(parts) - set(todo):  # (position past the end: nothing from them is read)
        source.seek(part, ends.get(part, 0))
    confirmed: set[Partition] = set()
    last = time.monotonic()
    while todo:
        records = source.poll(0.5, 500)
        if records:
            last = time.monotonic()
        elif time.monotonic() - last > idle_timeout_s:
            raise BrokerError(f"no record of {topic} arrived for {idle_timeout_s:.0f} s; still due: "
                              + ", ".join(f"{p} up to offset {e}" for p, e in sorted(todo.items())))
        for part in [p for p in todo if p not in confirmed]:  # the end is the first fetch's high watermark
            high = source.highwater(part)
            if high is not None:
                todo[part] = max(todo[part], high)
                confirmed.add(part)
        for rec in records:
            end = todo.get(rec.tp)
            if end is None or rec.offset >= end:
                continue
            yield rec
            if rec.offset + 1 >= end and rec.tp in confirmed:
                del todo[rec.tp]
