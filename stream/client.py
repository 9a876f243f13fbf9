"""Client side of the service: publishing video chunks and asking queries (used by the CLI, the demo and benches)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from stream.envelope import decode_message, encode_message
from stream.errors import BadInputError, BrokerError, MessageTooLargeError, SchemaError
from stream.messages import Query, QueryResult
from stream.ports import MessageSink, MessageSource
from stream.refs import write_blob
from stream.settings import Settings
from stream.video import VIDEO_SUFFIXES, Segment, chunk_messages, segment_file

__all__ = ["PublishReport", "QueryClient", "publish_segments", "publish_video_files", "video_files"]

LOG = logging.getLogger(__name__)


@dataclass
class PublishReport:
    """What one camera's publishing sent.

    Attributes:
        camera_id: the camera (message key).
        chunks, frames, bytes: chunks, frames and payload bytes sent.
        references: chunks sent as claim-check references.
        seconds: wall time.
        path: the file published (``None`` for segments from elsewhere).
        error: why the file could not be published completely (the counts say what was sent before); ``None`` when
            it was.
    """

    camera_id: str
    chunks: int = 0
    frames: int = 0
    bytes: int = 0
    references: int = 0
    seconds: float = 0.0
    path: str | None = None
    error: str | None = None


def _sink(settings: Settings, client: str) -> MessageSink:
    from stream.kafka import KafkaSink

    return KafkaSink(settings.kafka, client_id=f"{settings.kafka.client_id}-{client}")


def publish_segments(settings: Settings, camera_id: str, segments: Iterable[Segment], *, start_time: float,
                     sink: MessageSink | None = None, realtime: bool = False,
                     progress: Callable[[PublishReport], None] | None = None) -> PublishReport:
    """Publish one camera's segments as video chunks keyed by ``camera_id``.

    Args:
        settings: topics, size limit, ``storage.blob_dir`` for oversized segments.
        camera_id: the camera.
        segments: its segments in order.
        start_time: Unix time of the first frame (event time).
        sink: producer (default: a new Kafka producer, closed at the end).
        realtime: send each chunk when its last frame would have been recorded (pacing from now).
        progress: called after each chunk.

    Raises:
        MessageTooLargeError: a segment is too large and ``storage.blob_dir`` is unset.
        BrokerError: delivery failed.
    """
    own = sink is None
    out_sink = sink or _sink(settings, "publish")
    report = PublishReport(camera_id)
    t0 = time.monotonic()
    try:
        for chunk, msg in chunk_messages(camera_id, segments, start_time=start_time,
                                         max_bytes=settings.kafka.max_message_bytes, source="l2g-stream publish",
                                         blob_dir=settings.storage.blob_dir):
            if realtime:
                due = t0 + (chunk.start_time - start_time) + (chunk.frame_count or 0) / chunk.fps
                time.sleep(max(0.0, due - time.monotonic()))
            out_sink.send(settings.topics.video, msg.value, key=msg.key, headers=msg.headers)
            report.chunks += 1
            report.frames += chunk.frame_count or 0
            report.bytes += len(chunk.data) if chunk.data is not None else 0
            report.references += chunk.ref is not None
            if progress is not None:
                report.seconds = time.monotonic() - t0
                progress(report)
        out_sink.flush()
    finally:
        if own:
            out_sink.close()
    report.seconds = time.monotonic() - t0
    return report


def video_files(path: Path) -> list[Path]:
    """``path`` itself, or the video files of the folder ``path`` (sorted).

    Raises:
        FileNotFoundError: nothing there, or a folder without video files.
    """
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {path}")
        return files
    raise FileNotFoundError(f"{path} does not exist")


def publish_video_files(settings: Settings, paths: Sequence[Path], *, camera_id: str | None = None,
                        start_time: float | None = None, segment_seconds: float = 2.0,
                        transcode: bool | None = None, max_side: int | None = None, realtime: bool = False,
                        progress: Callable[[PublishReport], None] | None = None,
                        stop_on_error: bool = False) -> list[PublishReport]:
    """Segment and publish video files, one camera per file (named ``camera_id`` or after the file).

    A file that cannot be read or published (bad input: :class:`~stream.errors.BadInputError`, e.g. a corrupt file
    or a segment too large without ``storage.blob_dir``) does not raise: its report carries the ``error`` and what
    was sent before it; the next file follows, unless ``stop_on_error`` (then the reports end with the failed one).

    Raises:
        BrokerError: delivery failed (every file would fail the same way).
    """
    if camera_id is not None and len(paths) > 1:
        raise ValueError("--camera names one camera; publishing a folder uses one camera per file")
    sink = _sink(settings, "publish")
    reports: list[PublishReport] = []
    try:
        for path in paths:
            cam = camera_id or path.stem
            latest = [PublishReport(cam, path=str(path))]

            def track(report: PublishReport, latest: list[PublishReport] = latest) -> None:
                report.path = latest[0].path
                latest[0] = report
                if progress is not None:
                    progress(report)

            segs = segment_file(path, segment_seconds=segment_seconds, transcode=transcode, max_side=max_side)
            try:
                report = publish_segments(settings, cam, segs, start_time=start_time or time.time(), sink=sink,
                                          realtime=realtime, progress=track)
            except BadInputError as exc:
                report = latest[0]
                report.error = str(exc)
                LOG.warning("%s: %s (%d chunks were sent before)", path, exc, report.chunks)
            report.path = str(path)
            reports.append(report)
            if report.error is not None and stop_on_error:
                break
    finally:
        sink.close()
    return reports


class QueryClient:
    """Sends queries and waits for their results (reads the results topic from its end, no group).

    Use as a context manager; the results consumer is positioned before the first query is sent, so no answer is
    missed.

    Args:
        settings: connection and topics.
        source, sink: clients (default: Kafka).
    """

    def __init__(self, settings: Settings, *, source: MessageSource | None = None,
                 sink: MessageSink | None = None) -> None:
        self.settings = settings
        cid = f"{settings.kafka.client_id}-query-client-{uuid.uuid4().hex[:6]}"
        if source is None:
            from stream.kafka import KafkaSource

            source = KafkaSource(settings.kafka, client_id=cid, group_id=None, fetch_max_wait_ms=20)
        self.source = source
        self.sink = sink or _sink(settings, "query-client")
        self._parts = self.source.assign_all(settings.topics.results, from_end=True)
        self._results: dict[str, list[QueryResult]] = {}  # per query id, in arrival order (an id may be reused)

    def send(self, image: bytes | None = None, *, image_ref: str | None = None, k: int | None = None,
             mode: str | None = None, cameras: list[str] | None = None, time_from: float | None = None,
             time_to: float | None = None, timeout_s: float | None = None, query_id: str | None = None) -> Query:
        """Publish one query; returns it (its ``query_id`` is what :meth:`wait` takes).

        An image too large for one message is written under ``storage.blob_dir`` and sent as ``image_ref``.

        Raises:
            MessageTooLargeError: the image does not fit and there is no ``storage.blob_dir``.
            SchemaError: invalid fields (e.g. k out of range).
            BrokerError: delivery failed.
        """
        now = time.time()
        from pydantic import ValidationError

        try:
            query = Query(query_id=query_id or uuid.uuid4().hex, image=image, image_ref=image_ref,
                          k=k or self.settings.query.k, mode=mode, cameras=cameras,  # type: ignore[arg-type]
                          time_from=time_from, time_to=time_to,
                          deadline=now + timeout_s if timeout_s is not None else None, sent_at=now)
        except ValidationError as exc:
            raise SchemaError(f"invalid query: {exc.errors()[0]['msg']}") from exc
        limit = self.settings.kafka.max_message_bytes
        try:
            out = encode_message(query, source="l2g-stream query", max_bytes=limit)
        except MessageTooLargeError:
            blob_dir = self.settings.storage.blob_dir
            if image is None or blob_dir is None:
                raise MessageTooLargeError(f"the query image ({len(image or b'')} bytes) does not fit in a message of "
                                           f"{limit} bytes; set storage.blob_dir to send it by reference") from None
            ref = write_blob(image, blob_dir, prefix=f"query-{query.query_id}", suffix=".img")
            query = query.model_copy(update={"image": None, "image_ref": ref})
            out = encode_message(query, source="l2g-stream query", max_bytes=limit)
        if not self._parts:  # the results topic may not have existed when the client started
            self._parts = self.source.assign_all(self.settings.topics.results, from_end=True)
        self.sink.send(self.settings.topics.queries, out.value, key=out.key, headers=out.headers)
        self.sink.flush()
        return query

    def wait(self, query_id: str, timeout_s: float) -> QueryResult:
        """The next result of ``query_id`` (a reused id gets one result per query, in order of arrival).

        Raises:
            BrokerError: no result within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while not self._results.get(query_id):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(f"no result for query {query_id} within {timeout_s:.1f} s (is a worker running "
                                  f"on {self.settings.kafka.bootstrap_servers}?)")
            for res in self.poll(min(remaining, 0.2)):
                self._results.setdefault(res.query_id, []).append(res)
        return self._results[query_id].pop(0)

    def poll(self, timeout_s: float) -> list[QueryResult]:
        """The results (of any query) read within ``timeout_s``, in order; what is not a result is skipped.

        For a caller that waits for many queries at once (``l2g-stream ui``); :meth:`wait` is built on it.
        """
        if not self._parts:  # the results topic did not exist yet: read it from its start once it does
            self._parts = self.source.assign_all(self.settings.topics.results, from_end=False)
        out = []
        for rec in self.source.poll(timeout_s, 100):
            try:
                out.append(decode_message(rec.value, rec.headers, QueryResult))
            except SchemaError:
                continue
        return out

    def ask(self, image: bytes, *, timeout_s: float | None = None, **fields: object) -> QueryResult:
        """:meth:`send` then :meth:`wait` (waits the query's budget plus 5 s)."""
        budget = timeout_s if timeout_s is not None else self.settings.query.default_timeout_s
        query = self.send(image, timeout_s=budget, **fields)  # type: ignore[arg-type]
        return self.wait(query.query_id, budget + 5.0)

    def close(self) -> None:
        """Release the clients."""
        self.source.close()
        self.sink.close()

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

