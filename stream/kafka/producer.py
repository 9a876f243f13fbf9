"""kafka-python producer behind :class:`stream.ports.MessageSink`."""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError

from stream.errors import BrokerError
from stream.kafka.config import common_config, merge_extra
from stream.ports import Partition
from stream.settings import KafkaSettings

__all__ = ["KafkaSink"]

LOG = logging.getLogger(__name__)
_Message = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]


class KafkaSink:
    """A thread-safe kafka-python ``KafkaProducer`` implementing :class:`~stream.ports.MessageSink`.

    Delivery failures are collected by the client's callbacks. A producer that failed (a delivery error after its
    retries, or a send refused at once) is replaced by a new one, and :meth:`flush` sends the failed messages again
    through it once (at least once: a consumer may see a message twice); what still fails is raised. An idempotent
    producer whose broker lost its state (restart, lost partitions) otherwise fails every later send to the
    partitions it wrote before (``OutOfOrderSequenceNumber``, then a failed epoch bump).

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
        self._conf = merge_extra(conf, kafka.producer_extra)
        self._servers = kafka.bootstrap_servers
        self._producer = self._create()
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._failed_messages: list[_Message] = []
        self._delivered: dict[Partition, int] = {}
        self._broken = False
        self._rebuild_lock = threading.Lock()
        self.rebuilds = 0

    def _create(self) -> KafkaProducer:
        try:
            return KafkaProducer(**self._conf)
        except KafkaError as exc:
            raise BrokerError(f"cannot connect producer to {self._servers}: {exc}") from exc

    def _rebuild_if_broken(self) -> None:
        if not self._broken:
            return
        with self._rebuild_lock:  # one thread replaces it; the others then see it fixed
            with self._lock:
                if not self._broken:
                    return
            LOG.warning("replacing the Kafka producer after a delivery failure")
            new = self._create()  # raises BrokerError while the broker is away; the next send tries again
            with self._lock:
                old, self._producer, self._broken = self._producer, new, False
                self.rebuilds += 1
        try:
            old.close(timeout=0)
        except Exception as exc:  # closing a failed producer must not mask the new one
            LOG.debug("closing the failed producer: %s", exc)

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

    def _failed(self, message: _Message, exc: BaseException) -> None:
        LOG.warning("message delivery to %s failed: %s", message[0], exc)
        with self._lock:
            self._errors.append(exc)
            self._failed_messages.append(message)
            self._broken = True

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one message.

        Raises:
            BrokerError: the client rejects it at once (e.g. larger than ``max_request_size``).
        """
        self._rebuild_if_broken()
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers or [])
        except KafkaError as exc:
            if not isinstance(exc, MessageSizeTooLargeError):  # the message is the problem, not the producer
                with self._lock:
                    self._broken = True
            raise BrokerError(f"cannot send to {topic}: {exc}") from exc
        future.add_callback(self._done)
        future.add_errback(functools.partial(self._failed, (topic, value, key, headers)))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for delivery of everything queued.

        Raises:
            BrokerError: a message could not be delivered (since the last flush), or the flush timed out.
        """
        deadline = time.monotonic() + timeout_s
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise BrokerError(f"flush failed: {exc}") from exc
        with self._lock:
            errors, self._errors = self._errors, []
            retry, self._failed_messages = self._failed_messages, []
        if retry:  # once more through a new producer
            LOG.warning("sending %d undelivered message(s) again through a new producer", len(retry))
            for topic, value, key, headers in retry:
                self.send(topic, value, key=key, headers=headers)
            try:
                self._producer.flush(timeout=max(1.0, deadline - time.monotonic()))
            except KafkaError as exc:
                raise BrokerError(f"flush failed: {exc}") from exc
            with self._lock:
                errors, self._errors = self._errors, []
                self._failed_messages = []
        if errors:
            raise BrokerError(f"{len(errors)} message(s) not delivered; first: {errors[0]}")

    def close(self) -> None:
        """Flush (best effort) and close."""
        try:
            self._producer.flush(timeout=10)
            self._producer.close(timeout=10)
        except KafkaError as exc:
            LOG.warning("producer close failed: %s", exc)
