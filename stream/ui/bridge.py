"""The page's Kafka side: queries out, answers in, refused uploads dead-lettered.

The UI process is a client like ``l2g-stream query``: it produces :class:`~stream.messages.Query` messages to the
queries topic (through :class:`~stream.client.QueryClient`, which also sends an oversized image by claim check
when ``storage.blob_dir`` is set) and reads the results topic from its end with no consumer group. One background
thread reads the answers and hands each to the :class:`~stream.ui.sessions.SessionStore`, which keeps only the
answers some session is waiting for.

A refused upload (not an image, too large, too small, bad fields) never reaches the queries topic; it goes to the
dead-letter topic like any bad input, with stage ``ui``, the queries topic as ``original_topic`` and partition and
offset ``-1`` (it was never produced).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from stream.errors import BadInputError, StreamError
from stream.ports import Record
from stream.ui.sessions import QueryParams, SessionStore, UiQuery, new_query_id

if TYPE_CHECKING:
    from stream.client import QueryClient
    from stream.deadletter import DeadLetterPublisher
    from stream.messages import DeadLetter
    from stream.settings import Settings

__all__ = ["DEAD_LETTER_STAGE", "KafkaBridge"]

LOG = logging.getLogger(__name__)
DEAD_LETTER_STAGE = "ui"


class KafkaBridge:
    """Sends the page's queries, collects their answers, dead-letters refused uploads.

    Use as a context manager (or :meth:`start` / :meth:`close`). The results consumer is positioned (at the end of
    the results topic) when the bridge is built, before any query is sent, so no answer is missed.

    Args:
        settings: connection, topics, size limits.
        store: where answers go.
        client: the query client (default: a new Kafka one).
        dead_letters: the dead-letter publisher (default: one on a new Kafka producer).
    """

    def __init__(self, settings: Settings, store: SessionStore, *, client: QueryClient | None = None,
                 dead_letters: DeadLetterPublisher | None = None) -> None:
        self.settings = settings
        self.store = store
        self.ui_id = f"ui-{settings.runtime.worker_id}"
        if client is None:
            from stream.client import QueryClient

            client = QueryClient(settings)
        self.client = client
        if dead_letters is None:
            from stream.deadletter import DeadLetterPublisher
            from stream.metrics import StreamMetrics

            dead_letters = DeadLetterPublisher(client.sink, settings.topics.dead_letters, self.ui_id,
                                               StreamMetrics(), settings.kafka.max_message_bytes)
        self.dead_letters = dead_letters
        self._lock = threading.Lock()  # the client's consumer and producer are used from one thread at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_answers, name="l2g-ui-answers", daemon=True)
        self.failure: str | None = None  # why the answer reader stopped, for the page

    def start(self) -> KafkaBridge:
        """Start reading answers."""
        self._thread.start()
        return self

    def submit(self, token: str, image: bytes, content_type: str, params: QueryParams) -> UiQuery:
        """Record a query for the session ``token`` and send it; returns it (its id is unguessable).

        Raises:
            BadInputError: the query was refused (by the schema, or too large without ``storage.blob_dir``); it is
                forgotten again.
            BrokerError: delivery failed; forgotten too.
        """
        query = UiQuery(new_query_id(), image, content_type, params)
        self.store.add(token, query)  # before sending: the answer may arrive at once
        try:
            with self._lock:
                self.client.send(image, k=params.k, mode=params.mode, cameras=params.cameras,
                                 time_from=params.time_from, time_to=params.time_to, timeout_s=params.timeout_s,
                                 query_id=query.query_id)
        except StreamError:
            self.store.discard(token, query.query_id)
            raise
        return query

    def refuse(self, error: BadInputError, *, body: bytes | None, size: int,
               headers: dict[str, str] | None = None) -> DeadLetter:
        """Dead-letter a refused upload and return the letter.

        Args:
            error: why it was refused (its ``reason`` is the letter's).
            body: what was uploaded (None when it was not read: too large); embedded when small.
            size: its size in bytes (the declared length when unread).
            headers: request headers worth keeping (content type, field values).
        """
        record = Record(topic=self.settings.topics.queries, partition=-1, offset=-1, key=None, value=body,
                        headers=[(k, v.encode()) for k, v in (headers or {}).items()])
        from stream.deadletter import dead_letter_for

        letter = dead_letter_for(record, stage=DEAD_LETTER_STAGE, error=error, worker_id=self.ui_id,
                                 value_limit=min(65_536, self.settings.kafka.max_message_bytes // 2))
        letter = letter.model_copy(update={"original_size": size} if body is not None
                                   else {"original_size": size, "original_value": None})
        with self._lock:
            self.dead_letters.publish(letter)
            self.client.sink.flush()
        return letter

    def _read_answers(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    results = self.client.poll(0.2)
            except StreamError as exc:  # keep trying: the broker may come back
                self.failure = str(exc)
                LOG.warning("reading answers failed: %s", exc)
                self._stop.wait(1.0)
                continue
            self.failure = None
            for result in results:
                self.store.deliver(result)
            if not results:
                self._stop.wait(0.05)  # let a sender take the lock between polls

    def close(self) -> None:
        """Stop reading and release the clients."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.client.close()

    def __enter__(self) -> KafkaBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
