"""Consumer lag of the ingest loop, in messages and in seconds (``l2g_consumer_lag_messages`` and
``l2g_consumer_lag_seconds``).

Lag in seconds, per partition: 0 when the consumer is at the end of the partition (no message behind); otherwise the
wall clock minus the Kafka timestamp of the last message consumed from it (the producer's create time, or the
broker's append time on topics with ``message.timestamp.type=LogAppendTime``). It says how long the message now
being processed has waited in the topic, so it grows by one second per second while the worker is behind and makes
no progress, and it does not depend on the video's event time (historical footage published now is not "late").
Unknown (no sample) for a partition behind from which nothing was consumed yet since it was assigned.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping

from stream.metrics import StreamMetrics
from stream.ports import Partition, Record

__all__ = ["ConsumerLag"]


class ConsumerLag:
    """Tracks the last consumed timestamp per partition and sets the two lag gauges.

    Args:
        metrics: where the gauges are.
    """

    def __init__(self, metrics: StreamMetrics) -> None:
        self.metrics = metrics
        self._last_ms: dict[Partition, int] = {}
        self.messages = 0
        """Messages behind, summed over the partitions (at the last :meth:`observe`)."""
        self.seconds: float | None = None
        """Seconds behind, the largest over the partitions (None when unknown)."""

    def consumed(self, records: Iterable[Record]) -> None:
        """Note the timestamps of records just consumed."""
        for rec in records:
            if rec.timestamp_ms >= 0:
                self._last_ms[rec.tp] = max(rec.timestamp_ms, self._last_ms.get(rec.tp, -1))

    def observe(self, lag: Mapping[Partition, int], now: float | None = None) -> None:
        """Set both gauges from the messages behind per partition (``MessageSource.lag()``)."""
        now = time.time() if now is None else now
        worst: float | None = None
        for part, behind in lag.items():
            labels = (part.topic, str(part.partition))
            self.metrics.consumer_lag.labels(*labels).set(behind)
            last = self._last_ms.get(part)
            if behind <= 0:
                seconds: float | None = 0.0
            else:
                seconds = None if last is None else max(0.0, now - last / 1000.0)
            if seconds is not None:
                self.metrics.consumer_lag_seconds.labels(*labels).set(seconds)
                worst = seconds if worst is None else max(worst, seconds)
        self.messages = sum(lag.values())
        self.seconds = worst

    def forget(self, parts: Collection[Partition]) -> None:
        """Partitions revoked: their gauges drop to 0 and their timestamps are forgotten."""
        for part in parts:
            self._last_ms.pop(part, None)
            self.metrics.consumer_lag.labels(part.topic, str(part.partition)).set(0)
            self.metrics.consumer_lag_seconds.labels(part.topic, str(part.partition)).set(0)
