"""kafka-python producer behind :class:`stream.ports.MessageSink`."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream.errors import BrokerError
from stream.kafka.config import common_config, merge_extra
from stream.ports import Partition
from stream.settings import KafkaSettings

__all__ = ["KafkaSink"]

LOG = logging.getLogger(__name__)


class KafkaSink:
    """A thread-safe kafka-python ``KafkaProducer`` implementing :class:`~stream.ports.MessageSink`.

    Delivery failures are collected and raised by the next :meth:`flush`.

    Args:
        kafka: connection settings; ``max_request_size`` is the client-side size limit (tansu enforces none).
        client_id: client id reported to the broker.

    Raises:
        BrokerError: the bootstrap servers cannot be reached.
    """

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        conf: dict[str, Any] = {
            **common_config(kafka, client_id),
            "acks": kafka.acks if kafka.acks == "all" else int(kafka.acks),
            "linger_ms": kafka.linger_ms,
            "max_request_size": kafka.max_request_size,
        }
        conf = merge_extra(conf, kafka.producer_extra)
        try:
            self._producer = KafkaProducer(**conf)
        except KafkaError as exc:
            raise BrokerError(f"cannot connect producer to {kafka.bootstrap_servers}: {exc}") from exc
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._delivered: dict[Partition, int] = {}

    def _done(self, meta: Any) -> None:
        part = Partition(meta.topic, meta.partition)
        with self._lock:
            self._delivered[part] = max(self._delivered.get(part, 0), int(meta.offset) + 1)

    def delivered(self) -> dict[Partition, int]:
        """Per partition written by this producer: the offset after its last delivered message.

        (Tansu's ListOffsets under-reports the end of multi-record batches, so callers that must know how far
        a topic goes use this instead of asking the broker.)
        """
        with self._lock:
            return dict(self._delivered)

    def _failed(self, exc: BaseException) -> None:
        LOG.error("message delivery failed: %s", exc)
        with self._lock:
            self._errors.append(exc)

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one message.

        Raises:
            BrokerError: the client rejects it at once (e.g. larger than ``max_request_size``).
        """
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers or [])
        except KafkaError as exc:
            raise BrokerError(f"cannot send to {topic}: {exc}") from exc
        future.add_callback(self._done)
        future.add_errback(self._failed)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for delivery of everything queued.

        Raises:
            BrokerError: a message could not be delivered (since the last flush), or the flush timed out.
        """
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise BrokerError(f"flush failed: {exc}") from exc
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise BrokerError(f"{len(errors)} message(s) not delivered; first: {errors[0]}")

    def close(self) -> None:
        """Flush (best effort) and close."""
        try:
            self._producer.flush(timeout=10)
            self._producer.close(timeout=10)
        except KafkaError as exc:
            LOG.warning("producer close failed: %s", exc)
