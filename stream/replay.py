"""Replay one camera from a point in time: its video chunks are read back from the video topic and published again
(``l2g-stream replay --camera X --since T``).

Why republish, not reset the ingest group's offsets: an offset is per partition, and a partition carries many
cameras (chunks are keyed by camera), so moving it replays every camera on it; the workers' offsets are also tied
to their index snapshots (a committed offset without a matching snapshot makes a worker rebuild the partition from
the beginning); and a reset needs every worker of the group stopped. Republishing touches one camera, runs while the
workers run, and goes to any topic (``--to``: e.g. the video topic of another deployment, or a scratch topic).
Published to the video topic itself, frames the index still holds are skipped by key (``duplicate``), so a replay
fills what is missing: frames lost with a snapshot, or skipped while the worker shed load (sampling is by event time,
at the rate of the moment).

Where the scan starts: ListOffsets by timestamp (``offsets_for_times``) finds, per partition, the first record
*published* at or after ``since - ingest.max_future_s - 60 s``; workers refuse chunks more than ``max_future_s``
ahead of their clock, so no chunk of event time after ``since`` was published earlier (the 60 s cover a chunk's
length). Chunks are then kept by key, camera id and event time (a chunk overlapping ``[since, until]``). When the
broker cannot answer the lookup, or ``ingest.max_future_s`` is null, the partitions are scanned from their first
retained record. Records published before the lookup time are skipped undecoded, by the same argument.

tansu (the embedded broker, 0.5) supports ListOffsets by timestamp, with two differences from Apache Kafka, both
handled: a time after its last record is answered with offset 0 and timestamp -1 instead of "none" (read as "nothing
that recent", see :meth:`stream.kafka.KafkaSource.offsets_for_time`), and its answer may be an earlier offset than
Kafka's (the first record of an older batch: measured with a batch published an hour before the lookup time and
one after, it answered the older batch), so the scan may read more, never less; the records before the lookup time
are then skipped by their timestamp. Verified against tansu by ``tests/integration/test_operator_tools.py``.

A replayed chunk keeps key, value and headers and gains ``l2g-replayed-from`` = ``<topic>/<partition>/<offset>``.
Only chunks still retained by the topic can be replayed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stream.envelope import decode_message
from stream.errors import BadInputError, BrokerError
from stream.messages import VideoChunk
from stream.ports import MessageSink, Partition
from stream.scan import scan

if TYPE_CHECKING:
    from stream.kafka import KafkaSource
    from stream.settings import Settings

__all__ = ["REPLAY_HEADER", "START_SLACK_S", "ReplayReport", "replay_camera", "start_offsets"]

LOG = logging.getLogger(__name__)
REPLAY_HEADER = "l2g-replayed-from"
START_SLACK_S = 60.0
"""Seconds before ``since - ingest.max_future_s`` where the lookup by publish time starts (a chunk's length)."""


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do).

    Attributes:
        camera, since, until, to: what was asked.
        start: per partition of the video topic, the first offset read (None: nothing recent enough).
        lookup: ``offsets_for_times`` or ``scan from the beginning`` (and why).
        scanned: records read; before_lookup: of those, published before the lookup time (skipped undecoded);
            matched: chunks of the camera in the time range; sent: chunks published.
        first_time, last_time: event-time span of the matched chunks.
        dry_run: nothing was sent.
    """

    camera: str
    since: float
    until: float | None
    to: str
    start: dict[str, int | None] = field(default_factory=dict)
    lookup: str = ""
    scanned: int = 0
    before_lookup: int = 0
    matched: int = 0
    sent: int = 0
    first_time: float | None = None
    last_time: float | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return dict(self.__dict__)


def start_offsets(source: KafkaSource, parts: list[Partition], since: float,
                  max_future_s: float | None) -> tuple[dict[Partition, int | None], str]:
    """Where to start reading each partition for chunks of event time at or after ``since`` (see the module
    docstring), and how it was found."""
    if max_future_s is None:
        return {p: 0 for p in parts}, "scan from the beginning (ingest.max_future_s is null: any publish time)"
    try:
        found = source.offsets_for_time(parts, since - max_future_s - START_SLACK_S)
    except BrokerError as exc:
        LOG.warning("offsets_for_times failed (%s): scanning from the beginning", exc)
        return {p: 0 for p in parts}, f"scan from the beginning (offsets_for_times failed: {exc})"
    return found, "offsets_for_times"


def replay_camera(settings: Settings, camera: str, since: float, until: float | None = None, *,
                  to: str | None = None, dry_run: bool = False, source: KafkaSource | None = None,
                  sink: MessageSink | None = None) -> ReplayReport:
    """Publish again the chunks of ``camera`` overlapping ``[since, until]`` (event time) to ``to`` (default: the
    video topic). ``source`` and ``sink`` default to new clients (closed here); ``sink`` is not needed with
    ``dry_run``.

    Raises:
        BrokerError: the video topic is missing, or the broker fails.
    """
    from stream.scan import open_reader

    video = settings.topics.video
    report = ReplayReport(camera, since, until, to or video, dry_run=dry_run)
    own_source = source is None
    reader = source if source is not None else open_reader(settings, "replay")
    try:
        parts = reader.partitions_for(video)
        if not parts:
            raise BrokerError(f"topic {video!r} does not exist")
        start, report.lookup = start_offsets(reader, parts, since, settings.ingest.max_future_s)
        report.start = {str(p): o for p, o in sorted(start.items())}
        key = camera.encode()
        max_future = settings.ingest.max_future_s
        published_after_ms = -1 if max_future is None else int((since - max_future - START_SLACK_S) * 1000)
        for rec in scan(reader, video, start):
            report.scanned += 1
            if 0 <= rec.timestamp_ms < published_after_ms:
                report.before_lookup += 1  # (tansu's lookup may start early)
                continue
            if rec.key != key:
                continue
            try:
                chunk = decode_message(rec.value, rec.headers, VideoChunk)
            except BadInputError:
                continue  # (it was dead-lettered when first read)
            end = chunk.start_time + max((chunk.frame_count or 1) - 1, 0) / chunk.fps  # (its last frame)
            if chunk.camera_id != camera or end < since or (until is not None and chunk.start_time > until):
                continue
            report.matched += 1
            report.first_time = min(chunk.start_time, report.first_time or chunk.start_time)
            report.last_time = max(chunk.start_time, report.last_time or chunk.start_time)
            if not dry_run:
                assert sink is not None
                headers = [(k, v) for k, v in rec.headers if k != REPLAY_HEADER]
                sink.send(report.to, rec.value or b"", key=rec.key,
                          headers=[*headers, (REPLAY_HEADER, f"{rec.topic}/{rec.partition}/{rec.offset}".encode())])
                report.sent += 1
        if report.sent and sink is not None:
            sink.flush()
    finally:
        if own_source:
            reader.close()
    return report
