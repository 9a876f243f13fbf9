"""The ingest loop: video chunks from Kafka to the partition indexes, at least once, never stalling the group.

One :class:`IngestLoop` is a member of the ingest consumer group on the video topic (chunks are keyed by camera, so
a camera's chunks stay ordered on one partition). Per poll:

1. **assign** (inside the poll): for each new partition, :meth:`PartitionedIndex.open` loads its snapshot and the
   consumer seeks to the group's committed offset (commits only follow snapshots, so everything before it is in the
   snapshot; an older snapshot wins). A snapshot without a committed offset (topic recreated, offsets expired, or a
   crash between snapshot and commit) replays the partition from its beginning; without either, reading starts at
   ``auto_offset_reset``. Frames of a replayed chunk that the index already holds are skipped by frame key, so
   nothing is lost or indexed twice;
2. **decode** each chunk with PyAV; frames are sampled by event time (:func:`~stream.sampling.keep_frame` at
   ``ingest.sample_fps``), and only kept frames are converted to RGB. Decoding runs on a thread of its own, up to
   :data:`DECODE_AHEAD` chunks ahead of extraction, so decode and extraction overlap (PyAV and torch release the
   GIL); everything a chunk's decode reports (dead letters) is acted on by the loop's thread, in offset order;
3. **shed load** without blocking: the :class:`~stream.sampling.LoadShedder` halves the rate while the consumer lag
   is high, and within a poll, once the work done plus the predicted extractor time of the frames queued exceeds
   ``poll_budget_fraction`` of ``max_poll_interval_ms``, the rest of that poll is sampled at ``min_sample_fps``;
4. **extract** in batches of ``ingest.batch_size`` frames of equal size and append to the partition's index;
5. **checkpoint** every ``commit_interval_s`` (and on revoke and close): snapshot the dirty partitions with their
   next offsets, then commit exactly those offsets (commit only after the snapshot: at-least-once).

Bad chunks (schema violation, oversized, bad reference, corrupt/truncated/unsupported video, frames the extractor
rejects with ``plugins.ExtractorInputError``) go to the dead-letter topic with a reason and are counted; the loop goes
on. Any other extractor exception is a crash report, never a dead letter, and a failed snapshot is retried by the
next checkpoint: see :mod:`stream.failures`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from l2g_core import FrameFeatures, FrameKey, FrameSource
from l2g_core.errors import ShapeError
from plugins.errors import ExtractorInputError
from stream.deadletter import DeadLetterPublisher
from stream.decode import decode_chunk
from stream.envelope import decode_message
from stream.errors import BadInputError, ExtractorCrashError, MessageTooLargeError, SchemaError, VideoDecodeError
from stream.extraction import TimedExtractor
from stream.failures import extractor_crash
from stream.health import Health
from stream.lag import ConsumerLag
from stream.messages import VideoChunk
from stream.metrics import StreamMetrics
from stream.ports import FeatureExtractor, MessageSource, Partition, Record
from stream.refs import resolve_ref
from stream.sampling import LoadShedder, keep_frame
from stream.settings import Settings
from stream.store import PartitionedIndex, SnapshotReport

__all__ = ["IngestLoop", "IngestStats"]

LOG = logging.getLogger(__name__)
STAGE = "ingest"


@dataclass
class IngestStats:
    """Totals since start (also exported as metrics; kept here for tests, the demo and the benchmark)."""

    chunks: int = 0
    dead_letters: int = 0
    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_indexed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    checkpoints: int = 0
    decode_seconds: float = 0.0
    extract_seconds: float = 0.0


def _source(rec: Record, index: int, image: np.ndarray) -> FrameSource:
    """Where a decoded frame (``(H, W, 3)`` uint8) can be read again: its chunk's record and its position."""
    return FrameSource(rec.partition, rec.offset, index, int(image.shape[1]), int(image.shape[0]))


@dataclass
class _Decoded:
    """What decoding one chunk gave: its frames to extract, and the error to dead-letter it with (a bad chunk, or
    a truncated one whose decodable frames are still indexed), acted on by the loop's thread."""

    frames: list[_Frame]
    reject: tuple[BaseException, str | None] | None = None


DECODE_AHEAD = 2
"""Chunks decoded ahead of extraction (each holds only its sampled frames)."""


@dataclass
class _Frame:
    part: Partition
    key: FrameKey
    image: np.ndarray
    record: Record


class IngestLoop:
    """Consumes video chunks and keeps the partition indexes up to date (see the module docstring).

    Args:
        settings: all settings (``ingest``, ``kafka``, ``topics``, ``storage``).
        source: a consumer that will join ``ingest.group_id`` (:meth:`start` subscribes it).
        index: the partition indexes (shared with the query loop).
        extractor: the ingest extractor (set up already).
        extractor_name: label of ``l2g_extractor_batch_seconds``.
        dead_letters: where bad chunks go.
        metrics: counters and gauges.
        health: readiness condition ``ingest_assigned`` and the ``ingest`` heartbeat (optional).
        worker_id: stored in snapshot metadata.
    """

    def __init__(self, settings: Settings, source: MessageSource, index: PartitionedIndex,
                 extractor: FeatureExtractor, *, extractor_name: str, dead_letters: DeadLetterPublisher,
                 metrics: StreamMetrics, health: Health | None = None, worker_id: str = "") -> None:
        self.settings = settings
        self.cfg = settings.ingest
        self.source = source
        self.index = index
        self.extractor = extractor
        self.extractor_name = extractor_name
        self.timed = TimedExtractor(extractor, extractor_name, metrics)
        self.dlq = dead_letters
        self.metrics = metrics
        self.health = health
        self.worker_id = worker_id
        self.shedder = LoadShedder(self.cfg.sample_fps, self.cfg.min_sample_fps, self.cfg.lag_high_messages,
                                   self.cfg.lag_low_messages, enabled=self.cfg.load_shed)
        self.stats = IngestStats()
        self.lag = ConsumerLag(metrics)
        self._positions: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}
        self._last_checkpoint = time.monotonic()
        self._last_gauges = 0.0
        self._budget_s = self.cfg.poll_budget_fraction * settings.kafka.max_poll_interval_ms / 1000.0
        self._started = False
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="ingest-decode")

    def start(self) -> None:
        """Join the ingest group on the video topic (the assignment arrives with the first poll)."""
        if self.health is not None:
            self.health.set_condition("ingest_assigned", False)
        self.source.subscribe([self.settings.topics.video], on_assign=self._on_assign, on_revoke=self._on_revoke,
                              on_reset=self._on_reset)
        self._started = True

    def close(self) -> None:
        """Checkpoint every partition (snapshot, then commit) and leave the group."""
        try:
            if self._started:
                self.checkpoint()
        finally:
            self._decoder.shutdown(wait=True)
            self.source.close()
            if self.health is not None:
                self.health.forget("ingest")

    @property
    def positions(self) -> dict[Partition, int]:
        """Next offset to read per assigned partition (everything before it is in the index)."""
        return dict(self._positions)

    @property
    def committed(self) -> dict[Partition, int]:
        """Offsets this loop committed last, per partition."""
        return dict(self._committed)

    def _on_assign(self, parts: Collection[Partition]) -> None:
        self.metrics.rebalances.inc()
        for part in sorted(parts):
            snapshot_offset = self.index.open(part)
            committed = self.source.committed(part)
            frames = len(self.index.get(part))
            if committed is not None and snapshot_offset is None and self.index.snapshot_root is not None:
                # the group committed frames into snapshots this worker cannot use (another extractor identity,
                # options or weights file, or a lost snapshot directory): rebuild from what the topic retains
                self.source.seek_to_beginning(part)
                where = (f"the beginning: committed offset {committed} but no snapshot of this extractor identity "
                         f"under {self.index.snapshot_root}, rebuilding")
                LOG.warning("%s: %s", part, where)
            elif committed is not None:
                # the group's offset: every frame before it is in a snapshot (commits follow snapshots)
                start = committed
                if snapshot_offset is not None and snapshot_offset < committed:
                    LOG.warning("%s: the snapshot (offset %d) is older than the committed offset %d (restored "
                                "from a backup?); replaying from the snapshot", part, snapshot_offset, committed)
                    start = snapshot_offset
                self.source.seek(part, start)
                self._positions[part] = start
                self._committed[part] = committed
                where = str(start)
            elif frames:
                # a snapshot but no committed offset: the topic was recreated, the group's offsets expired, or the
                # last owner died between snapshot and commit. The snapshot's offset may name other data now, so
                # replay everything retained; the frames the snapshot holds are skipped by key.
                self.source.seek_to_beginning(part)
                where = f"the beginning (snapshot offset {snapshot_offset} not trusted without a committed offset)"
            else:
                where = f"the {self.settings.kafka.auto_offset_reset} offset"
            LOG.info("assigned %s: %d frames from the snapshot, reading from %s", part, frames, where)
        if self.health is not None:
            self.health.set_condition("ingest_assigned", True)
        self._refresh_gauges(force=True)

    def _on_revoke(self, parts: Collection[Partition]) -> None:
        revoked = sorted(parts)
        if self.health is not None:  # nothing is consumed until the group assigns again (a rebalance, a restart)
            self.health.set_condition("ingest_assigned", False)
        if not revoked:
            return
        try:
            self.checkpoint(only=revoked)
        finally:
            for part in revoked:
                self.index.close_partition(part)
                self._positions.pop(part, None)
                self._committed.pop(part, None)
            self.lag.forget(revoked)
            LOG.info("revoked %s", ", ".join(map(str, revoked)))
            self._refresh_gauges(force=True)

    def _on_reset(self, parts: Collection[Partition]) -> None:
        """The topic was recreated: our positions name old data; the source reads these partitions from the start
        (frames the index holds are skipped by key) and nothing is committed until new records are processed."""
        for part in parts:
            self._positions.pop(part, None)
            LOG.warning("%s was reset: re-reading it from the beginning", part)

    def run_once(self) -> int:
        """One poll: decode, sample, extract and index its chunks; checkpoint when due. Returns chunks read."""
        records = self.source.poll(self.cfg.poll_timeout_s, self.cfg.max_poll_records)
        poll_start = time.monotonic()
        if self.health is not None:
            self.health.beat("ingest")
        self.lag.consumed(records)
        if records:
            self._process(records, poll_start)
        self.lag.observe(self.source.lag())
        self.shedder.update(self.lag.messages)
        if time.monotonic() - self._last_checkpoint >= self.cfg.commit_interval_s:
            self.checkpoint()
        self._refresh_gauges()
        return len(records)

    def _process(self, records: list[Record], poll_start: float) -> None:
        pending: list[_Frame] = []
        done: list[Record] = []

        def remaining_work() -> float:
            return (time.monotonic() - poll_start) + len(pending) * self.timed.seconds_per_frame

        def decode(rec: Record) -> _Decoded:  # on the decode thread
            try:
                return self._decode(rec, rec.tp, lambda: remaining_work() > self._budget_s)
            except BadInputError as exc:
                return _Decoded([], (exc, None))

        mine = [rec for rec in records if rec.tp in self.index.partitions()]  # (revoked while polling: the new
        ahead: deque[Future[_Decoded]] = deque()  # owner reads it)
        try:
            for rec in mine[:DECODE_AHEAD]:
                ahead.append(self._decoder.submit(decode, rec))
            for i, rec in enumerate(mine):
                self.stats.chunks += 1
                self.metrics.chunks_consumed.labels(rec.topic, str(rec.partition)).inc()
                decoded = ahead.popleft().result()
                if i + DECODE_AHEAD < len(mine):
                    ahead.append(self._decoder.submit(decode, mine[i + DECODE_AHEAD]))
                if decoded.reject is not None:
                    self._reject(rec, *decoded.reject)
                for frame in decoded.frames:
                    if pending and (len(pending) >= self.cfg.batch_size
                                    or pending[0].image.shape != frame.image.shape):
                        self._extract_and_index(pending)
                        pending = []
                    pending.append(frame)
                done.append(rec)
        finally:
            for future in ahead:  # an error stops the poll: chunks decoded ahead are read again next time
                future.cancel()
            wait(ahead)
        if pending:
            self._extract_and_index(pending)
        for rec in done:  # in offset order per partition (a seek backwards restarts it lower: the last one wins)
            part = rec.tp
            if part in self._positions or part in self.index.partitions():
                self._positions[part] = rec.offset + 1
                self.index.mark_dirty(part)

    def _reject(self, rec: Record, exc: BaseException, reason: str | None = None) -> None:
        self.stats.dead_letters += 1
        self.dlq.reject(rec, stage=STAGE, error=exc, reason=reason)

    def _payload(self, chunk: VideoChunk) -> bytes:
        if chunk.data is not None:
            return chunk.data
        assert chunk.ref is not None
        return resolve_ref(chunk.ref, self.settings.storage)

    def _check_time(self, chunk: VideoChunk) -> None:
        """Raises SchemaError (``time_out_of_range``) when the chunk's event time runs too far ahead of the clock."""
        ahead = self.cfg.max_future_s
        end = chunk.start_time + (chunk.frame_count or 0) / chunk.fps
        if ahead is not None and end > time.time() + ahead:
            raise SchemaError(f"chunk {chunk.sequence} of {chunk.camera_id} ends at event time {end:.0f}, "
                              f"{end - time.time():.0f} s ahead of this worker's clock (ingest.max_future_s={ahead:g})",
                              reason="time_out_of_range")

    def _decode(self, rec: Record, part: Partition, over_budget: Callable[[], bool]) -> _Decoded:
        """Validate, decode and sample one chunk (on the decode thread: it dead-letters nothing itself).

        Returns:
            The frames to extract, and the error to dead-letter the chunk with when it is truncated.

        Raises:
            BadInputError: the chunk is unusable.
        """
        if rec.size > self.settings.kafka.max_message_bytes:
            raise MessageTooLargeError(f"chunk message of {rec.size} bytes exceeds kafka.max_message_bytes="
                                       f"{self.settings.kafka.max_message_bytes}")
        chunk = decode_message(rec.value, rec.headers, VideoChunk)
        camera = chunk.camera_id
        if rec.key != camera.encode():  # a camera lives on the partition of its key: one copy of each frame
            raise SchemaError(f"chunk of camera {camera!r} arrived with Kafka key {rec.key!r}: a chunk must be keyed "
                              f"by its camera_id", reason="key_mismatch")
        self._check_time(chunk)
        data = self._payload(chunk)
        index = self.index.get(part)
        base_rate = self.cfg.sample_fps
        skipped: Counter[str] = Counter()
        shed_rate = self.shedder.rate(chunk.fps)
        rates: list[float] = []

        def select(i: int, offset: float) -> bool:
            t = chunk.start_time + offset
            if not keep_frame(t, chunk.fps, base_rate):
                skipped["sampling"] += 1
                return False
            rate = self.shedder.rate(chunk.fps, over_budget=True) if over_budget() else shed_rate
            rates.append(rate)
            if rate != base_rate and not keep_frame(t, chunk.fps, rate):
                skipped["load_shed"] += 1
                return False
            if index.contains(FrameKey(camera, t, chunk.first_frame + i)):
                skipped["duplicate"] += 1
                return False
            return True

        t0 = time.perf_counter()
        try:
            result = decode_chunk(data, container=chunk.container, select=select, max_side=self.cfg.frame_max_side,
                                  threads=self.cfg.decode_threads, max_frames=self.cfg.max_frames_per_chunk)
        finally:
            dt = time.perf_counter() - t0
            self.metrics.decode_chunk_seconds.observe(dt)
            self.stats.decode_seconds += dt
        self.stats.frames_decoded += result.decoded
        self.stats.frames_sampled += len(result.frames)
        if result.corrupt:
            skipped["corrupt"] += result.corrupt
        self.stats.skipped.update(skipped)
        self.metrics.frames_decoded.labels(camera).inc(result.decoded)
        self.metrics.frames_sampled.labels(camera).inc(len(result.frames))
        for reason, n in skipped.items():
            self.metrics.frames_skipped.labels(camera, reason).inc(n)
        effective = [chunk.fps if r <= 0 else min(r, chunk.fps) for r in (rates or [shed_rate])]
        self.metrics.sampling_fps.labels(camera).set(min(effective))
        truncated = result.error
        if truncated is None and chunk.frame_count is not None and result.decoded < chunk.frame_count:
            truncated = f"{result.decoded} of {chunk.frame_count} frames decodable"
        reject = None
        if truncated is not None:  # index what came out, and report the rest (short of the container's count too)
            reject = (VideoDecodeError(f"{camera} chunk {chunk.sequence}: {truncated}"),
                      "truncated_video" if result.truncated or not result.corrupt else "corrupt_frames")
        return _Decoded([_Frame(part, FrameKey(camera, chunk.start_time + f.offset, chunk.first_frame + f.index,
                                               _source(rec, f.index, f.image)), f.image, rec)
                         for f in result.frames], reject)

    def _extract(self, frames: list[_Frame]) -> list[FrameFeatures]:
        """Features of ``frames``, one per frame (errors: see :meth:`TimedExtractor.extract`)."""
        feats = self.timed.extract(np.stack([f.image for f in frames]))
        self.stats.extract_seconds = self.timed.total_seconds
        return feats

    def _extract_and_index(self, frames: list[_Frame]) -> None:
        """Extract a batch and add it.

        A batch the extractor fails on is retried frame by frame. The chunks of the frames it still rejects
        (``ExtractorInputError``) are dead-lettered with reason ``extractor_input``; those of the frames it crashes on
        (any other exception: a bug, reported once for the batch) with reason ``extractor_crash``, so one poison
        chunk cannot stop the worker and its video is kept for a replay once the bug is fixed. When every frame
        crashes and a canary frame crashes too, the runtime is broken, not the video: nothing is dead-lettered.

        Raises:
            ExtractorCrashError: the extractor's runtime is broken (see :mod:`stream.failures`); no offset past this
                batch is committed.
        """
        rejected: set[tuple[Partition, int]] = set()  # (partition, offset) of the chunks dead-lettered
        try:
            pairs = list(zip(frames, self._extract(frames), strict=True))
        except (ExtractorInputError, ExtractorCrashError) as batch_exc:
            LOG.warning("extractor failed on a batch of %d frames (%s); retrying one by one", len(frames), batch_exc)
            pairs = []
            crashed: list[tuple[_Frame, Exception]] = []
            for frame in frames:
                try:
                    pairs.append((frame, self.timed.extract_untimed(frame.image[None])[0]))
                except ExtractorInputError as exc:
                    if (frame.part, frame.record.offset) not in rejected:
                        rejected.add((frame.part, frame.record.offset))
                        self._reject(frame.record, exc, reason="extractor_input")
                except Exception as crash:  # a crash on this frame alone (reported once, with the batch)
                    crashed.append((frame, crash))
            if crashed and len(crashed) == len(frames) and not self.timed.runtime_works(frames[0].image.shape):
                if isinstance(batch_exc, ExtractorCrashError):
                    raise batch_exc
                raise extractor_crash(crashed[0][1], extractor=self.extractor_name, frames=len(frames),
                                      metrics=self.metrics) from crashed[0][1]
            for frame, cause in crashed:
                if (frame.part, frame.record.offset) not in rejected:
                    rejected.add((frame.part, frame.record.offset))
                    self._reject(frame.record, ExtractorCrashError(
                        f"extractor {self.extractor_name} crashes on this chunk: {type(cause).__name__}: {cause}",
                        self.extractor_name), reason="extractor_crash")
        groups: dict[tuple[Partition, str], tuple[list[FrameKey], list[FrameFeatures]]] = {}
        for frame, feat in pairs:
            g = groups.setdefault((frame.part, frame.key.camera_id), ([], []))
            g[0].append(frame.key)
            g[1].append(feat)
        for (part, camera), (keys, feats) in groups.items():
            if part not in self.index.partitions():
                continue
            try:
                report = self.index.add(part, keys, feats)
            except ShapeError as exc:  # a dimension mismatch: the extractor is misconfigured, not the data
                raise RuntimeError(f"cannot add frames to the index of {part}: {exc}") from exc
            if report.evicted:  # RollingIndex.add applies retention itself
                self.metrics.index_evicted.inc(report.evicted)
            self.stats.frames_indexed += report.added
            self.metrics.frames_indexed.labels(camera).inc(report.added)
            for reason, n in (("duplicate", report.duplicates), ("too_old", report.too_old)):
                if n:
                    self.stats.skipped[reason] += n
                    self.metrics.frames_skipped.labels(camera, reason).inc(n)

    def checkpoint(self, only: list[Partition] | None = None) -> SnapshotReport:
        """Snapshot dirty partitions with their next offsets, then commit exactly the offsets of those written.

        Without ``index.snapshot_dir`` nothing is written or committed (a commit would claim frames that live only in
        memory). A partition whose snapshot failed (disk full, I/O error) is counted in
        ``l2g_snapshot_failures_total``, nothing is committed for it, and it stays dirty: the next checkpoint retries
        it while the loop goes on (see :mod:`stream.failures`).

        Returns:
            The snapshot report: ``written`` are the partitions committed, ``failed`` the ones not.
        """
        self._last_checkpoint = time.monotonic()
        evicted = self.index.evict_expired()
        if evicted:
            self.metrics.index_evicted.inc(evicted)
        self._refresh_gauges(force=True)
        if self.index.snapshot_root is None:
            return SnapshotReport()
        offsets = {p: o for p, o in self._positions.items() if only is None or p in only}
        if not offsets:
            return SnapshotReport()
        t0 = time.perf_counter()
        report = self.index.snapshot(offsets, {"extractor": self.extractor_name, "worker_id": self.worker_id},
                                     only=list(offsets))
        if report.failed:  # e.g. disk full: the previous snapshots stay valid, their offsets stay committed
            self.metrics.snapshot_failures.inc(len(report.failed))
            LOG.error("snapshot failed for %s: not committed, retried at the next checkpoint",
                      ", ".join(f"{p} ({exc})" for p, exc in sorted(report.failed.items())))
        if report.written:
            self.metrics.snapshot_seconds.observe(time.perf_counter() - t0)
            commit = {p: offsets[p] for p in report.written}
            self.source.commit(commit)
            self._committed.update(commit)
            self.metrics.commits.inc()
            self.stats.checkpoints += 1
            LOG.debug("checkpoint: %s", ", ".join(f"{p}@{o}" for p, o in sorted(commit.items())))
        return report

    def _refresh_gauges(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        s = self.index.stats()
        self.metrics.observe_index(s.frames, s.features, s.nbytes, s.oldest_timestamp, s.newest_timestamp)
