"""The seams the runtime depends on: a source of records, a sink for messages, a feature extractor, and the loops
the worker drives.

:mod:`stream.kafka` implements them over kafka-python; :mod:`stream.testing` implements them in memory. Nothing
else in the runtime imports a Kafka client, so another client (confluent-kafka) only needs these two classes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from l2g_core import FrameFeatures

__all__ = ["DeliveryStatus", "FeatureExtractor", "Loop", "MessageSink", "MessageSource", "Partition",
           "RebalanceCallback", "Record", "TopicAdmin"]


@dataclass(frozen=True, order=True)
class Partition:
    """A topic partition."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True)
class Record:
    """One consumed message.

    Attributes:
        topic, partition, offset: where it was read.
        key, value: raw bytes (either may be None).
        headers: raw headers.
        timestamp_ms: broker or producer timestamp (ms since the epoch), -1 when unknown.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int = -1

    @property
    def tp(self) -> Partition:
        """The record's partition."""
        return Partition(self.topic, self.partition)

    @property
    def size(self) -> int:
        """Key + value + header bytes."""
        return len(self.key or b"") + len(self.value or b"") + sum(len(k) + len(v or b"") for k, v in self.headers)


RebalanceCallback = Callable[[Collection[Partition]], None]
"""Told of the partitions assigned, revoked or reset; runs inside :meth:`MessageSource.poll`."""


class Loop(Protocol):
    """One of the worker's loops (``IngestLoop``, ``QueryLoop``, ``MergeLoop``), driven by ``stream.worker.Worker``.

    Lifecycle: ``start()`` once (subscribe or assign), ``run_once()`` repeatedly, ``close()`` once.
    """

    def start(self) -> None:
        """Join the group or assign the partitions (the assignment may arrive with the first poll)."""
        ...

    def run_once(self) -> int:
        """One poll and its processing; returns the records read."""
        ...

    def close(self) -> None:
        """Finish (checkpoint where the loop keeps state) and release the consumer."""
        ...


@runtime_checkable
class MessageSource(Protocol):
    """Consumes records; either as a group member (``subscribe``) or with explicit partitions (``assign``).

    Offsets are never committed implicitly: the runtime commits after the data is safe.
    """

    def subscribe(self, topics: Collection[str], *, on_assign: RebalanceCallback,
                  on_revoke: RebalanceCallback, on_reset: RebalanceCallback | None = None) -> None:
        """Join the group for ``topics``; callbacks run inside :meth:`poll` when the assignment changes.

        ``on_reset`` (optional) is told of partitions whose log ended before the read position (the topic was
        recreated): they are read again from their beginning, and positions kept by the caller are stale.
        """
        ...

    def assign_all(self, topic: str, *, from_end: bool) -> list[Partition]:
        """Read every partition of ``topic`` outside any group; returns them (empty if the topic is missing)."""
        ...

    def partitions_for(self, topic: str) -> list[Partition]:
        """Every partition of ``topic`` (empty if the topic is missing); does not change the assignment."""
        ...

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s``."""
        ...

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next."""
        ...

    def seek_to_beginning(self, partition: Partition) -> None:
        """Read ``partition`` from its first retained record next."""
        ...

    def committed(self, partition: Partition) -> int | None:
        """The group's committed offset of ``partition`` (next offset to read), or None."""
        ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``offsets`` (next offset to read per partition) synchronously."""
        ...

    def assignment(self) -> set[Partition]:
        """Partitions currently assigned."""
        ...

    def lag(self) -> dict[Partition, int]:
        """Messages between the read position and the end, per assigned partition (when known)."""
        ...

    def close(self) -> None:
        """Leave the group (if any) and release the connection."""
        ...


@runtime_checkable
class MessageSink(Protocol):
    """Produces messages; thread-safe."""

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one message (delivery is confirmed by :meth:`flush`)."""
        ...

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued message is delivered.

        Raises:
            BrokerError: a message could not be delivered.
        """
        ...

    def close(self) -> None:
        """Flush and release the connection."""
        ...


@runtime_checkable
class DeliveryStatus(Protocol):
    """A sink that can tell whether it delivers (readiness ``producer``); sinks without it always deliver."""

    def delivery_problem(self) -> str | None:
        """Why messages cannot be delivered now (the last flush failed); None while they can."""
        ...

    def recover(self) -> bool:
        """Try to deliver again without sending anything (e.g. replace a failed client); True when it can."""
        ...


@runtime_checkable
class TopicAdmin(Protocol):
    """Inspects and creates topics: the only client that creates any (consumers and producers never do)."""

    def partitions(self, topics: Collection[str]) -> dict[str, int]:
        """Partition count of each of ``topics`` that exists (missing ones are absent).

        Raises:
            BrokerError: the broker cannot be reached.
        """
        ...

    def topic_ids(self) -> dict[str, str]:
        """Ids of the topics the last :meth:`partitions` found, where the broker has ids (a topic deleted and
        created again gets a new one); empty otherwise."""
        ...

    def create(self, topics: Collection[str]) -> list[str]:
        """Create those of ``topics`` that are missing, with the configured partition count; returns them.

        Raises:
            BrokerError: the broker cannot be reached or refuses.
        """
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the runtime needs from a ``plugins`` extractor (``plugins.Extractor`` implements it).

    Lifecycle: ``setup()`` once before the first ``extract``; ``close()`` once at shutdown.
    """

    local_dim: int
    global_dim: int

    @property
    def name(self) -> str:
        """Registry name."""
        ...

    def options(self) -> dict[str, Any]:
        """Every option, JSON-able (for logs and to rebuild the extractor)."""
        ...

    def snapshot_identity(self) -> dict[str, Any]:
        """JSON-able identity of the features (name, feature options, sha256 of the weights files; not the
        device): snapshots are tagged with it. Taken after ``setup()``."""
        ...

    def setup(self) -> None:
        """Load weights and warm up."""
        ...

    def extract(self, frames: npt.NDArray[np.uint8]) -> list[FrameFeatures]:
        """Features of a ``(B, H, W, 3)`` uint8 RGB batch, one per frame."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...
