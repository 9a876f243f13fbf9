"""kafka-python producer behind :class:`stream.ports.MessageSink` (and :class:`stream.ports.DeliveryStatus`)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, NoReturn

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from stream.errors import BrokerError
from stream.kafka.config import common_config, forbid_auto_create, merge_extra
from stream.ports import Partition
from stream.settings import KafkaSettings

__all__ = ["KafkaSink"]

LOG = logging.getLogger(__name__)
_Message = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]
MAX_REPLACEMENTS_PER_FLUSH = 2
"""How often one :meth:`KafkaSink.flush` replaces a failed producer before it gives up (raises)."""


class KafkaSink:
    """A thread-safe kafka-python ``KafkaProducer`` implementing :class:`~stream.ports.MessageSink`.

    Recovery is bounded. A producer that failed (a delivery error after its retries, a send refused at once, or a
    flush during which it delivered nothing for ``kafka.producer_recovery_s``) is replaced by a new one, and
    :meth:`flush` sends the undelivered messages again through it (at least once: a consumer may see a message
    twice), at most :data:`MAX_REPLACEMENTS_PER_FLUSH` times and never past its timeout; what still fails is
    raised. An idempotent producer whose broker lost its state (restart, lost partitions) otherwise fails every later
    send to the partitions it wrote before (``OutOfOrderSequenceNumber`` / ``UnknownProducerId``, then a failed
    epoch bump), or waits on them until its delivery timeout. Until a flush delivers everything again,
    :meth:`delivery_problem` says why (the worker's readiness condition ``producer``).

    It never creates a topic: a send to a missing topic fails after ``kafka.producer_recovery_s``.

    Args:
        kafka: connection settings; ``max_request_size`` is the client-side size limit (tansu enforces none).
        client_id: client id reported to the broker.

    Raises:
        BrokerError: the bootstrap servers cannot be reached.
    """

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        recovery_ms = int(kafka.producer_recovery_s * 1000)
        conf: dict[str, Any] = {
            **common_config(kafka, client_id),
            "acks": kafka.acks if kafka.acks == "all" else int(kafka.acks),
            "linger_ms": kafka.linger_ms,
            "max_request_size": kafka.max_request_size,
            "max_block_ms": recovery_ms,
        }
        self._conf = merge_extra(conf, {"bootstrap_timeout_ms": recovery_ms, **kafka.producer_extra})
        self._servers = kafka.bootstrap_servers
        self._recovery_s = kafka.producer_recovery_s
        self._lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        self._generation = 0  # of the current producer; callbacks of replaced ones are ignored
        self._seq = 0
        self._inflight: dict[int, _Message] = {}  # sent through the current producer, not confirmed yet
        self._errors: list[BaseException] = []
        self._failed_messages: list[_Message] = []
        self._delivered: dict[Partition, int] = {}
        self._broken = False
        self._problem: str | None = None
        self._next_rebuild = 0.0
        self.rebuilds = 0
        self._producer = self._create()

    def _create(self) -> KafkaProducer:
        try:
            producer = KafkaProducer(**self._conf)
        except KafkaError as exc:
            raise BrokerError(f"cannot connect producer to {self._servers}: {exc}") from exc
        forbid_auto_create(producer)  # the option alone is ignored by kafka-python 3.0.12
        return producer

    # ------------------------------------------------------------------ state
    def delivery_problem(self) -> str | None:
        """Why messages cannot be delivered now (the last flush or send failed); None while they can."""
        with self._lock:
            return self._problem

    def _set_problem(self, problem: str | None) -> None:
        with self._lock:
            before, self._problem = self._problem, problem
        if before is None and problem is not None:
            LOG.warning("the producer cannot deliver: %s", problem)
        elif before is not None and problem is None:
            LOG.info("the producer delivers again")

    def recover(self) -> bool:
        """After a failure: replace the producer (its replacement connects, nothing is sent); True when that
        worked and the problem is cleared (a later flush that fails sets it again)."""
        if self.delivery_problem() is None:
            return True
        with self._lock:
            self._broken = True
        try:
            self._rebuild_if_broken(force=True)
        except BrokerError as exc:
            self._set_problem(f"cannot reconnect: {exc}")
            return False
        self._set_problem(None)
        return True

    # ------------------------------------------------------------------ replacing the producer
    def _rebuild_if_broken(self, force: bool = False) -> None:
        if not self._broken:
            return
        with self._rebuild_lock:  # one thread replaces it; the others then see it fixed
            with self._lock:
                if not self._broken:
                    return
                wait = self._next_rebuild - time.monotonic()
            if wait > 0 and not force:
                raise BrokerError(f"the producer failed and its replacement could not connect (next try in "
                                  f"{wait:.1f} s)")
            LOG.warning("replacing the Kafka producer after a delivery failure")
            try:
                new = self._create()  # raises BrokerError while the broker is away (after producer_recovery_s)
            except BrokerError:
                with self._lock:
                    self._next_rebuild = time.monotonic() + 1.0
                raise
            with self._lock:
                old, self._producer, self._broken = self._producer, new, False
                self._generation += 1
                self._failed_messages += self._inflight.values()  # not confirmed by the old one: send again
                self._inflight = {}
                self.rebuilds += 1
        try:
            old.close(timeout=0)
        except Exception as exc:  # closing a failed producer must not mask the new one
            LOG.debug("closing the failed producer: %s", exc)

    # ------------------------------------------------------------------ callbacks (the client's IO thread)
    def _done(self, generation: int, seq: int, meta: Any) -> None:
        part = Partition(meta.topic, meta.partition)
        with self._lock:
            if generation == self._generation:
                self._inflight.pop(seq, None)
            self._delivered[part] = max(self._delivered.get(part, 0), int(meta.offset) + 1)

    def _failed(self, generation: int, seq: int, exc: BaseException) -> None:
        with self._lock:
            if generation != self._generation:  # a replaced producer: its messages were taken over already
                return
            message = self._inflight.pop(seq, None)
            if message is None:
                return
            LOG.debug("message delivery to %s failed: %s", message[0], exc)
            self._errors.append(exc)
            self._failed_messages.append(message)
            self._broken = True

    def delivered(self) -> dict[Partition, int]:
        """Per partition written by this producer: the offset after its last delivered message.

        (Tansu's ListOffsets under-reports the end of multi-record batches, so callers that must know how far
        a topic goes use this instead of asking the broker.)
        """
        with self._lock:
            return dict(self._delivered)

    # ------------------------------------------------------------------ MessageSink
    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one message.

        Raises:
            BrokerError: the client rejects it at once (e.g. larger than ``max_request_size``), the topic does not
                exist (after ``kafka.producer_recovery_s``), or the producer failed and cannot be replaced now.
        """
        self._rebuild_if_broken()
        message: _Message = (topic, value, key, headers)
        with self._lock:
            self._seq += 1
            seq, generation, producer = self._seq, self._generation, self._producer
            self._inflight[seq] = message
        try:
            future = producer.send(topic, value=value, key=key, headers=headers or [])
        except KafkaError as exc:
            with self._lock:
                self._inflight.pop(seq, None)
            if isinstance(exc, KafkaTimeoutError):  # no metadata for the topic: missing, or the broker is away
                problem = f"no metadata for {topic} within {self._recovery_s:g} s (missing topic? clients never " \
                          f"create topics)"
                self._set_problem(problem)
                raise BrokerError(f"cannot send to {topic}: {problem}") from exc
            if not isinstance(exc, MessageSizeTooLargeError):  # the message is the problem, not the producer
                with self._lock:
                    self._broken = True
            raise BrokerError(f"cannot send to {topic}: {exc}") from exc
        future.add_callback(functools.partial(self._done, generation, seq))
        future.add_errback(functools.partial(self._failed, generation, seq))

    def _flush_current(self, timeout_s: float) -> bool:
        """Flush the current producer; False when it did not finish in time (it is then marked failed)."""
        try:
            self._producer.flush(timeout=max(0.1, timeout_s))
            return True
        except KafkaTimeoutError:
            with self._lock:
                if self._inflight:
                    self._broken = True
                    self._errors.append(BrokerError(f"nothing delivered within {timeout_s:.1f} s"))
            return False
        except KafkaError as exc:
            raise BrokerError(f"flush failed: {exc}") from exc

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for delivery of everything queued, replacing a failed producer (bounded: see the class).

        Raises:
            BrokerError: a message could not be delivered (since the last flush), or the flush timed out.
        """
        start = time.monotonic()
        deadline = start + timeout_s
        replaced = 0
        errors: list[BaseException] = []
        while True:
            self._flush_current(min(deadline - time.monotonic(), self._recovery_s))
            with self._lock:
                errors += self._errors
                self._errors = []
                pending = bool(self._failed_messages) or (self._broken and bool(self._inflight))
            if not pending:
                break
            if replaced >= MAX_REPLACEMENTS_PER_FLUSH or time.monotonic() >= deadline - 0.1:
                self._give_up(errors, replaced, start)
            replaced += 1
            try:
                self._rebuild_if_broken(force=True)
            except BrokerError as exc:
                errors.append(exc)
                self._give_up(errors, replaced - 1, start)
            with self._lock:
                retry, self._failed_messages = self._failed_messages, []
            LOG.warning("sending %d undelivered message(s) again through a new producer (replacement %d of at most "
                        "%d in this flush)", len(retry), replaced, MAX_REPLACEMENTS_PER_FLUSH)
            for i, (topic, value, key, headers) in enumerate(retry):
                try:
                    self.send(topic, value, key=key, headers=headers)
                except BrokerError as exc:
                    errors.append(exc)
                    with self._lock:
                        self._failed_messages += retry[i:]
                    self._give_up(errors, replaced, start)
        self._set_problem(None)

    def _give_up(self, errors: list[BaseException], replaced: int, start: float) -> NoReturn:
        with self._lock:  # the caller is told; nothing of this flush is sent again later
            lost = len(self._failed_messages) + len(self._inflight)
            self._failed_messages = []
            self._inflight = {}
            self._broken = True  # the next send replaces it
        first = errors[0] if errors else "timed out"
        problem = (f"{lost} message(s) not delivered after {replaced} replacement(s) of the producer in "
                   f"{time.monotonic() - start:.1f} s; first error: {first}")
        self._set_problem(problem)
        raise BrokerError(problem)

    def close(self) -> None:
        """Flush (best effort) and close."""
        try:
            self._producer.flush(timeout=10)
            self._producer.close(timeout=10)
        except KafkaError as exc:
            LOG.warning("producer close failed: %s", exc)
