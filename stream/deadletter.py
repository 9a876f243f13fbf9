"""Dead letters: a message that cannot be processed is published, with where and why, and counted."""

from __future__ import annotations

import logging

from stream.envelope import encode_message
from stream.errors import BadInputError, BrokerError, MessageTooLargeError
from stream.messages import DeadLetter
from stream.metrics import StreamMetrics
from stream.ports import MessageSink, Record

__all__ = ["DeadLetterPublisher", "dead_letter_for"]

LOG = logging.getLogger(__name__)


def dead_letter_for(record: Record, *, stage: str, error: BaseException, worker_id: str,
                    reason: str | None = None, value_limit: int = 65_536) -> DeadLetter:
    """The dead letter describing ``record`` and why it failed.

    Args:
        record: the message that failed.
        stage: ``ingest`` or ``query``.
        error: the exception (its ``reason`` is used for a :class:`BadInputError`).
        worker_id: who failed.
        reason: overrides the error's reason.
        value_limit: the original value is embedded when at most this many bytes.
    """
    why = reason or (error.reason if isinstance(error, BadInputError) else "internal_error")
    value = record.value or b""
    return DeadLetter(
        stage=stage,
        reason=why,
        error_class=type(error).__name__,
        error_message=str(error)[:2000],
        original_topic=record.topic,
        original_partition=record.partition,
        original_offset=record.offset,
        original_key=record.key,
        original_headers={k: (v or b"").decode("utf-8", "replace") for k, v in record.headers},
        original_value=value if len(value) <= value_limit else None,
        original_size=len(value),
        worker_id=worker_id,
    )


class DeadLetterPublisher:
    """Publishes dead letters to the dead-letter topic and counts them in ``l2g_dead_letters_total``.

    Args:
        sink: where to produce.
        topic: the dead-letter topic.
        worker_id: the ``ce_source`` and ``worker_id`` of the letters.
        metrics: counters.
        max_bytes: message size limit; a letter over it is sent without the original value.
    """

    def __init__(self, sink: MessageSink, topic: str, worker_id: str, metrics: StreamMetrics,
                 max_bytes: int) -> None:
        self.sink = sink
        self.topic = topic
        self.worker_id = worker_id
        self.metrics = metrics
        self.max_bytes = max_bytes

    def publish(self, letter: DeadLetter) -> None:
        """Send ``letter`` (dropping the embedded original value when too large) and count it."""
        try:
            out = encode_message(letter, source=self.worker_id, max_bytes=self.max_bytes)
        except MessageTooLargeError:
            out = encode_message(letter.model_copy(update={"original_value": None}), source=self.worker_id)
        try:
            self.sink.send(self.topic, out.value, key=out.key, headers=out.headers)
        except BrokerError as exc:  # the letter is lost, the count and the log line remain
            LOG.error("cannot publish a dead letter for %s[%d]@%d: %s", letter.original_topic,
                      letter.original_partition, letter.original_offset, exc)
        self.metrics.dead_letters.labels(letter.stage, letter.reason).inc()
        LOG.warning("dead letter (%s/%s) for %s[%d]@%d: %s", letter.stage, letter.reason, letter.original_topic,
                    letter.original_partition, letter.original_offset, letter.error_message[:300])

    def reject(self, record: Record, *, stage: str, error: BaseException, reason: str | None = None) -> DeadLetter:
        """Build and publish the dead letter of ``record``; returns it."""
        letter = dead_letter_for(record, stage=stage, error=error, worker_id=self.worker_id, reason=reason,
                                 value_limit=min(65_536, self.max_bytes // 2))
        self.publish(letter)
        return letter
