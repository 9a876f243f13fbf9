"""In-memory fakes of the runtime's seams, for tests and experiments without a broker or model weights.

* :class:`MemoryBroker` holds topics as lists of records per partition and committed offsets per group.
* :class:`MemorySource` / :class:`MemorySink` implement :class:`~stream.ports.MessageSource` and
  :class:`~stream.ports.MessageSink` over it (group members split the partitions round robin).

Example::

    broker = MemoryBroker(partitions=2)
    sink = MemorySink(broker)
    sink.send("l2g.video", encode_message(chunk, source="test").value, key=b"cam-1")
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from collections.abc import Collection, Mapping
from typing import Any

from stream.errors import BrokerError
from stream.ports import Partition, RebalanceCallback, Record

__all__ = ["MemoryBroker", "MemoryConnector", "MemorySink", "MemorySource", "MemoryTopicAdmin"]


class MemoryBroker:
    """Topics, partitions and committed offsets in memory; thread-safe.

    Args:
        partitions: partitions of every topic created on first use.
    """

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        self._lock = threading.Condition()
        self._topics: dict[str, list[list[Record]]] = {}
        self._committed: dict[tuple[str, Partition], int] = {}
        self._members: dict[str, dict[str, list[str]]] = {}  # group -> member -> topics
        self._generations: dict[str, int] = {}

    def _topic(self, topic: str) -> list[list[Record]]:
        if topic not in self._topics:
            self._topics[topic] = [[] for _ in range(self.partitions)]
        return self._topics[topic]

    def create_topic(self, topic: str) -> None:
        """Create ``topic`` (no-op when it exists)."""
        with self._lock:
            self._topic(topic)

    def append(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Record:
        """Store a message (partition = crc32(key) mod partitions, or round robin without a key)."""
        with self._lock:
            parts = self._topic(topic)
            p = zlib.crc32(key) % len(parts) if key is not None else min(range(len(parts)), key=lambda i: len(parts[i]))
            rec = Record(topic, p, len(parts[p]), key, value, list(headers), int(time.time() * 1000))
            parts[p].append(rec)
            self._lock.notify_all()
            return rec

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, partition by partition."""
        with self._lock:
            return [r for part in self._topics.get(topic, []) for r in part]

    def read(self, part: Partition, offset: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of ``part`` from ``offset``."""
        with self._lock:
            parts = self._topics.get(part.topic)
            if parts is None or part.partition >= len(parts):
                return []
            return parts[part.partition][offset:offset + limit]

    def end(self, part: Partition) -> int:
        """The offset after the last record of ``part``."""
        with self._lock:
            parts = self._topics.get(part.topic)
            return len(parts[part.partition]) if parts and part.partition < len(parts) else 0

    def partitions_of(self, topic: str) -> list[Partition]:
        """Partitions of ``topic`` (empty when it does not exist)."""
        with self._lock:
            return [Partition(topic, i) for i in range(len(self._topics.get(topic, [])))]

    def commit(self, group: str, offsets: Mapping[Partition, int]) -> None:
        """Store committed offsets of ``group``."""
        with self._lock:
            for part, offset in offsets.items():
                self._committed[(group, part)] = offset

    def committed(self, group: str, part: Partition) -> int | None:
        """Committed offset of ``group`` on ``part``."""
        with self._lock:
            return self._committed.get((group, part))

    def join(self, group: str, member: str, topics: Collection[str]) -> None:
        """Add ``member`` to ``group`` (every member's next poll rebalances)."""
        with self._lock:
            self._members.setdefault(group, {})[member] = list(topics)
            self._generations[group] = self._generations.get(group, 0) + 1

    def leave(self, group: str, member: str) -> None:
        """Remove ``member`` from ``group`` (the others rebalance at their next poll)."""
        with self._lock:
            if self._members.get(group, {}).pop(member, None) is not None:
                self._generations[group] = self._generations.get(group, 0) + 1

    def assignment(self, group: str, member: str) -> tuple[int, list[Partition]]:
        """``(generation, partitions of member)``: the group's partitions dealt round robin over sorted members."""
        with self._lock:
            members = self._members.get(group, {})
            if member not in members:
                return self._generations.get(group, 0), []
            topics = sorted({t for ts in members.values() for t in ts})
            parts = [Partition(t, i) for t in topics for i in range(len(self._topic(t)))]
            order = sorted(members)
            mine = [p for i, p in enumerate(parts) if order[i % len(order)] == member and p.topic in members[member]]
            return self._generations.get(group, 0), mine

    def wait(self, timeout_s: float) -> None:
        """Block until something is appended or ``timeout_s`` passes."""
        with self._lock:
            self._lock.wait(timeout_s)


class MemorySource:
    """A :class:`~stream.ports.MessageSource` over a :class:`MemoryBroker`.

    Group members split the partitions of their subscription round robin (ordered by member id); a member joining or
    leaving triggers an eager rebalance at every member's next :meth:`poll` (``on_revoke`` of everything, then
    ``on_assign`` of the new share), like the classic Kafka protocol.

    Args:
        broker: the broker.
        group_id: group whose offsets :meth:`commit` stores and whose partitions :meth:`subscribe` shares.
        auto_offset_reset: start of a partition without a committed offset.
        member_id: identity in the group (a fresh one when None).
    """

    _ids = itertools.count()

    def __init__(self, broker: MemoryBroker, group_id: str | None = None, auto_offset_reset: str = "earliest",
                 member_id: str | None = None) -> None:
        self.broker = broker
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.member_id = member_id or f"member-{next(self._ids):04d}"
        self._topics: list[str] = []
        self._positions: dict[Partition, int] = {}
        self._callbacks: tuple[RebalanceCallback, RebalanceCallback] | None = None
        self._generation = -1
        self.closed = False

    def subscribe(self, topics: Collection[str], *, on_assign: RebalanceCallback,
                  on_revoke: RebalanceCallback, on_reset: RebalanceCallback | None = None) -> None:
        """Join the group for ``topics``; the assignment arrives with the next poll (topics are never reset)."""
        self._topics = list(topics)
        self._callbacks = (on_assign, on_revoke)
        for t in self._topics:
            self.broker.create_topic(t)
        self.broker.join(self.group_id or f"_solo-{self.member_id}", self.member_id, self._topics)

    def _sync(self) -> None:
        """Apply a pending rebalance (inside poll, like the Kafka client)."""
        if self._callbacks is None:
            return
        group = self.group_id or f"_solo-{self.member_id}"
        generation, parts = self.broker.assignment(group, self.member_id)
        if generation == self._generation:
            return
        on_assign, on_revoke = self._callbacks
        if self._generation >= 0:
            on_revoke(sorted(self._positions))
            self._positions.clear()
        self._generation = generation
        for p in parts:
            committed = self.committed(p)
            start = 0 if self.auto_offset_reset == "earliest" else self.broker.end(p)
            self._positions[p] = committed if committed is not None else start
        on_assign(parts)

    def revoke_all(self, on_revoke: RebalanceCallback) -> None:
        """Simulate losing every partition (calls ``on_revoke``)."""
        parts = list(self._positions)
        on_revoke(parts)
        self._positions.clear()

    def assign_all(self, topic: str, *, from_end: bool) -> list[Partition]:
        """Read every partition of ``topic`` (created if missing); partitions assigned already keep their position."""
        self.broker.create_topic(topic)
        parts = self.broker.partitions_of(topic)
        for p in parts:
            if p not in self._positions:
                self._positions[p] = self.broker.end(p) if from_end else 0
        return parts

    def partitions_for(self, topic: str) -> list[Partition]:
        """Partitions of ``topic`` (empty when it does not exist)."""
        return self.broker.partitions_of(topic)

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        if self.closed:
            raise BrokerError("source is closed")
        self._sync()
        deadline = time.monotonic() + timeout_s
        while True:
            out: list[Record] = []
            for p in sorted(self._positions):
                if len(out) >= max_records:
                    break
                recs = self.broker.read(p, self._positions[p], max_records - len(out))
                if recs:
                    self._positions[p] = recs[-1].offset + 1
                    out.extend(recs)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            self.broker.wait(min(remaining, 0.05))

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next."""
        self._positions[partition] = offset

    def seek_to_beginning(self, partition: Partition) -> None:
        """Read ``partition`` from offset 0 next."""
        self._positions[partition] = 0

    def position(self, partition: Partition) -> int | None:
        """The next offset to read of ``partition`` (None when not assigned)."""
        return self._positions.get(partition)

    def committed(self, partition: Partition) -> int | None:
        """The group's committed offset."""
        return self.broker.committed(self.group_id, partition) if self.group_id else None

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Store offsets for the group."""
        if self.group_id:
            self.broker.commit(self.group_id, {p: o for p, o in offsets.items() if p in self._positions})

    def assignment(self) -> set[Partition]:
        """Partitions owned."""
        return set(self._positions)

    def lag(self) -> dict[Partition, int]:
        """End minus position per partition."""
        return {p: max(0, self.broker.end(p) - pos) for p, pos in self._positions.items()}

    def close(self) -> None:
        """Leave the group and stop reading."""
        if self._callbacks is not None:
            self.broker.leave(self.group_id or f"_solo-{self.member_id}", self.member_id)
        self.closed = True


class MemorySink:
    """A :class:`~stream.ports.MessageSink` that appends to a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.flushes = 0

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Append at once."""
        self.broker.append(topic, key, value, headers or [])

    def flush(self, timeout_s: float = 30.0) -> None:
        """Nothing is buffered; counts calls."""
        self.flushes += 1

    def close(self) -> None:
        """Nothing to release."""


class MemoryTopicAdmin:
    """A :class:`~stream.ports.TopicAdmin` over a :class:`MemoryBroker` (topics get the broker's partition count)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def partitions(self, topics: Collection[str]) -> dict[str, int]:
        """Partition count of each of ``topics`` that exists."""
        return {t: n for t in topics if (n := len(self.broker.partitions_of(t)))}

    def topic_ids(self) -> dict[str, str]:
        """None (topics are never recreated here)."""
        return {}

    def create(self, topics: Collection[str]) -> list[str]:
        """Create the missing ones; returns them."""
        new = [t for t in topics if not self.broker.partitions_of(t)]
        for t in new:
            self.broker.create_topic(t)
        return new

    def close(self) -> None:
        """Nothing to release."""


class MemoryConnector:
    """A :class:`stream.worker.Connector` over a :class:`MemoryBroker` (several workers may share one broker)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def source(self, *, client_id: str, group_id: str | None, max_poll_records: int,
               low_latency: bool = False) -> MemorySource:
        """A consumer whose group member id is ``client_id``."""
        return MemorySource(self.broker, group_id, member_id=client_id)

    def sink(self, *, client_id: str) -> MemorySink:
        """A producer."""
        return MemorySink(self.broker)

    def topic_admin(self, settings: Any) -> MemoryTopicAdmin:
        """Inspects and creates topics."""
        return MemoryTopicAdmin(self.broker)

    def ensure_topics(self, settings: Any) -> None:
        """Create the configured topics."""
        t = settings.topics
        for name in (t.video, t.queries, t.candidates, t.results, t.dead_letters):
            self.broker.create_topic(name)
