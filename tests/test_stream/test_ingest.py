"""The ingest loop over the in-memory broker with real H.264 chunks and the toy extractor."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import l2g_core.index.persistence as persistence
from l2g_core import SnapshotError
from plugins import ExtractorInputError, get_extractor
from stream.deadletter import DeadLetterPublisher
from stream.envelope import decode_message, encode_message
from stream.errors import ExtractorCrashError
from stream.ingest import IngestLoop
from stream.messages import DeadLetter, VideoChunk
from stream.metrics import StreamMetrics
from stream.ports import Partition
from stream.sampling import keep_frame
from stream.settings import Settings
from stream.store import PartitionedIndex, SnapshotReport
from stream.testing import MemoryBroker, MemorySink, MemorySource

from .conftest import FPS, START, camera_chunks, make_settings, publish

pytestmark = pytest.mark.timeout(120)


def build(settings: Settings, broker: MemoryBroker, member: str = "w1",
          extractor: Any = None) -> tuple[IngestLoop, StreamMetrics]:
    extractor = extractor or get_extractor(settings.extractor.name, **settings.extractor.options)
    extractor.setup()
    index = PartitionedIndex.from_settings(settings.index, extractor=extractor.name, options=extractor.options(),
                                           local_dim=extractor.local_dim, global_dim=extractor.global_dim)
    metrics = StreamMetrics()
    sink = MemorySink(broker)
    dlq = DeadLetterPublisher(sink, settings.topics.dead_letters, member, metrics, settings.kafka.max_message_bytes)
    loop = IngestLoop(settings, MemorySource(broker, settings.ingest.group_id, member_id=member), index, extractor,
                      extractor_name=extractor.name, dead_letters=dlq, metrics=metrics, worker_id=member)
    loop.start()
    return loop, metrics


def drain(loop: IngestLoop, broker: MemoryBroker, polls: int = 200) -> None:
    for _ in range(polls):
        loop.run_once()
        if loop.positions and all(loop.positions.get(p, 0) >= broker.end(p) for p in loop.index.partitions()) \
                and sum(broker.end(p) for p in loop.index.partitions()) == len(broker.records("l2g.video")):
            return
    raise AssertionError("ingest did not catch up")


def expected_keys(camera: str, frames: int, rate: float = 2.0) -> set[tuple[str, int]]:
    return {(camera, i) for i in range(frames) if keep_frame(START + i / FPS, FPS, rate)}


def index_keys(index: PartitionedIndex) -> list[tuple[str, int]]:
    return [(k.camera_id, int(k.sequence)) for _, idx in index.items() for s in idx.shards() for k in s.keys]


def dead_letters(broker: MemoryBroker) -> list[DeadLetter]:
    return [decode_message(r.value, r.headers, DeadLetter) for r in broker.records("l2g.dead-letters")]


def test_real_h264_chunks_are_sampled_and_indexed(settings: Settings, broker: MemoryBroker) -> None:
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))
    publish(broker, "l2g.video", camera_chunks("cam-b", 2))
    loop, metrics = build(settings, broker)
    drain(loop, broker)
    keys = index_keys(loop.index)
    assert sorted(keys) == sorted(expected_keys("cam-a", 40) | expected_keys("cam-b", 40))
    assert len(keys) == 16
    # event times follow the chunk's start_time and the frame's pts
    stamps = {k.sequence: k.timestamp for _, idx in loop.index.items() for s in idx.shards() for k in s.keys
              if k.camera_id == "cam-a"}
    assert stamps[5] == pytest.approx(START + 0.5, abs=1e-3)
    assert metrics.value("l2g_frames_decoded_total", {"camera": "cam-a"}) == 40
    assert metrics.value("l2g_frames_sampled_total", {"camera": "cam-a"}) == 8
    assert metrics.value("l2g_frames_indexed_total", {"camera": "cam-b"}) == 8
    assert metrics.value("l2g_frames_skipped_total", {"camera": "cam-a", "reason": "sampling"}) == 32
    assert metrics.value("l2g_chunks_consumed_total") == 4
    assert metrics.value("l2g_sampling_fps", {"camera": "cam-a"}) == 2.0
    assert metrics.value("l2g_decode_chunk_seconds_count") == 4
    assert metrics.value("l2g_extractor_batch_seconds_count", {"extractor": "toy"}) >= 4
    loop.checkpoint()
    assert metrics.value("l2g_index_frames") == 16
    assert metrics.value("l2g_snapshot_seconds_count") == 1
    assert metrics.value("l2g_commits_total") == 1


def test_restart_resumes_from_the_snapshot_and_dedups_replays(tmp_path: Path, broker: MemoryBroker) -> None:
    settings = make_settings(tmp_path)
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))
    loop, _ = build(settings, broker, "w1")
    drain(loop, broker)
    loop.checkpoint()
    part = next(p for p in loop.index.partitions() if len(loop.index.get(p)))
    committed = broker.committed(settings.ingest.group_id, part)
    assert committed == broker.end(part) == 2
    # more video arrives; the worker indexes it but dies before its next checkpoint
    publish(broker, "l2g.video", camera_chunks("cam-a", 1, frames=80)[2:])
    drain(loop, broker)
    assert len(loop.index) == 16
    loop.source.close()  # crash: no checkpoint

    loop2, metrics2 = build(settings, broker, "w2")
    drain(loop2, broker)  # assignment loads the snapshot (8 frames) and seeks to its offset
    assert sorted(index_keys(loop2.index)) == sorted(expected_keys("cam-a", 80))
    assert metrics2.value("l2g_frames_indexed_total") == 8  # only what the snapshot lacked
    # a replay of an already indexed chunk (producer retry) is skipped by frame key
    publish(broker, "l2g.video", camera_chunks("cam-a", 1)[:1])
    drain(loop2, broker)
    assert len(loop2.index) == 16
    assert metrics2.value("l2g_frames_skipped_total", {"reason": "duplicate"}) == 4
    loop2.close()
    snap = tmp_path / "snapshots"
    loaded, meta, _ = persistence.load_index(next(p for p in snap.glob("*/*") if p.name.endswith(f"-{part.partition}")))
    assert meta["offset"] == broker.end(part)
    keys = [(k.camera_id, int(k.sequence)) for s in loaded.shards() for k in s.keys]
    assert len(keys) == len(set(keys)) == 16


def test_bad_chunks_go_to_the_dead_letter_topic_and_ingest_goes_on(tmp_path: Path, broker: MemoryBroker) -> None:
    settings = make_settings(tmp_path, storage={"allowed_ref_roots": [str(tmp_path / "blobs")]},
                             kafka={"max_message_bytes": 200_000, "max_request_size": 300_000})
    good = camera_chunks("cam-a", 1)
    chunk0 = good[0][0]
    assert chunk0.data is not None

    def send(chunk: VideoChunk) -> None:
        out = encode_message(chunk, source="test")
        broker.append("l2g.video", b"cam-a", out.value, out.headers)

    send(chunk0.model_copy(update={"data": b"\x47" + b"\x00" * 5000}))  # corrupt
    send(chunk0.model_copy(update={"data": chunk0.data[: len(chunk0.data) // 2], "sequence": 1,
                                   "first_frame": 20}))  # truncated: half the frames
    broker.append("l2g.video", b"cam-a", b"{not json", [])  # schema
    raw = json.loads(encode_message(chunk0, source="t").value)
    raw["fps"] = -1
    broker.append("l2g.video", b"cam-a", json.dumps(raw).encode(), [])
    broker.append("l2g.video", b"cam-a", b"x" * 250_000, [])  # oversized
    send(chunk0.model_copy(update={"data": None, "ref": "/etc/passwd"}))  # reference outside the allowed roots
    send(chunk0.model_copy(update={"data": None, "ref": str(tmp_path / "blobs" / "missing.ts")}))
    # unsupported codec: MJPEG in TS is not decodable -> an MPEG-2 stream
    send(chunk0.model_copy(update={"data": _mpeg2_segment()}))
    publish(broker, "l2g.video", good[1:])  # a good chunk after all that
    loop, metrics = build(settings, broker)
    drain(loop, broker)
    letters = dead_letters(broker)
    reasons = sorted(d.reason for d in letters)
    assert reasons == sorted(["corrupt_video", "corrupt_frames", "invalid_json", "schema_violation", "oversized",
                              "ref_not_allowed", "ref_missing", "unsupported_codec"])
    assert all(d.stage == "ingest" and d.original_topic == "l2g.video" for d in letters)
    bad_json = next(d for d in letters if d.reason == "invalid_json")
    assert bad_json.original_value == b"{not json" and bad_json.original_key == b"cam-a"
    assert metrics.value("l2g_dead_letters_total", {"stage": "ingest"}) == 8
    assert metrics.value("l2g_dead_letters_total", {"stage": "ingest", "reason": "oversized"}) == 1
    # frames before the truncation and the good chunk are indexed
    keys = set(index_keys(loop.index))
    assert expected_keys("cam-a", 40) - {("cam-a", i) for i in range(20)} <= keys
    assert any(seq >= 20 for _, seq in keys)


def _mpeg2_segment() -> bytes:
    import io

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        s = out.add_stream("mpeg2video", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 40, np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def test_claim_check_references_are_read_from_allowed_roots(tmp_path: Path, broker: MemoryBroker) -> None:
    from stream.video import SyntheticCamera, chunk_messages, encode_segments

    blobs = tmp_path / "blobs"
    settings = make_settings(tmp_path, storage={"allowed_ref_roots": [str(blobs)], "blob_dir": str(blobs)},
                             kafka={"max_message_bytes": 20_000, "max_request_size": 30_000})
    segs = encode_segments(SyntheticCamera(3, 320, 192).frames(20), FPS)
    items = list(chunk_messages("cam-r", segs, start_time=START, max_bytes=20_000, source="t", blob_dir=blobs))
    assert all(c.ref is not None and c.data is None for c, _ in items)
    publish(broker, "l2g.video", items)
    loop, _ = build(settings, broker)
    drain(loop, broker)
    assert len(loop.index) == 4
    assert not broker.records("l2g.dead-letters")


def test_load_shedding_lowers_the_rate_when_lag_is_high(tmp_path: Path, broker: MemoryBroker) -> None:
    settings = make_settings(tmp_path, ingest={"lag_high_messages": 2, "lag_low_messages": 0, "max_poll_records": 1,
                                               "min_sample_fps": 0.5})
    publish(broker, "l2g.video", camera_chunks("cam-a", 1, frames=200))
    loop, metrics = build(settings, broker)
    drain(loop, broker, polls=400)
    assert metrics.value("l2g_frames_skipped_total", {"reason": "load_shed"}) > 0
    assert len(loop.index) < len(expected_keys("cam-a", 200))
    assert metrics.value("l2g_sampling_fps", {"camera": "cam-a"}) <= 2.0


def test_poll_budget_sheds_the_rest_of_a_slow_poll(tmp_path: Path, broker: MemoryBroker) -> None:
    settings = make_settings(tmp_path, kafka={"max_poll_interval_ms": 1000}, ingest={
        "poll_budget_fraction": 0.01, "max_poll_records": 4, "load_shed": True, "sample_fps": 0.0,
        "min_sample_fps": 1.0})
    publish(broker, "l2g.video", camera_chunks("cam-a", 1, frames=80))
    loop, metrics = build(settings, broker)
    slow = loop.extractor.extract

    def extract(frames):  # type: ignore[no-untyped-def]
        import time

        time.sleep(0.005 * len(frames))
        return slow(frames)

    loop.extractor.extract = extract  # type: ignore[method-assign]
    drain(loop, broker)
    assert metrics.value("l2g_frames_skipped_total", {"reason": "load_shed"}) > 0
    assert len(loop.index) < 80


def test_without_a_snapshot_dir_nothing_is_committed(broker: MemoryBroker) -> None:
    settings = make_settings(None)
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))
    loop, _ = build(settings, broker)
    drain(loop, broker)
    assert loop.checkpoint() == SnapshotReport()
    assert all(broker.committed(settings.ingest.group_id, Partition("l2g.video", i)) is None for i in range(3))


def test_dead_letter_value_is_base64_in_json(broker: MemoryBroker, settings: Settings) -> None:
    broker.append("l2g.video", b"k", b"\xff\xfe", [])
    loop, _ = build(settings, broker)
    drain(loop, broker)
    raw = json.loads(broker.records("l2g.dead-letters")[0].value or b"")
    assert base64.b64decode(raw["original_value"]) == b"\xff\xfe"


def test_a_snapshot_without_a_committed_offset_replays_the_partition_from_the_start(
        tmp_path: Path, broker: MemoryBroker) -> None:
    """The topic was recreated (or the group's offsets expired): the snapshot's offset may name other chunks now."""
    settings = make_settings(tmp_path)
    chunks = camera_chunks("cam-a", 1, frames=80)
    publish(broker, "l2g.video", chunks[:2])
    loop, _ = build(settings, broker, "w1")
    drain(loop, broker)
    loop.close()  # snapshot at offset 2, committed 2
    fresh = MemoryBroker(3)  # the recreated topic: no committed offsets, the chunks replayed in another order
    publish(fresh, "l2g.video", [chunks[3], chunks[2], chunks[1], chunks[0]])
    loop2, metrics2 = build(settings, fresh, "w2")
    drain(loop2, fresh)
    assert sorted(index_keys(loop2.index)) == sorted(expected_keys("cam-a", 80))
    assert metrics2.value("l2g_frames_indexed_total") == 8  # the snapshot's 8 frames are skipped by key
    assert metrics2.value("l2g_frames_skipped_total", {"reason": "duplicate"}) == 8


def test_a_failed_snapshot_is_retried_and_commits_nothing_meanwhile(
        tmp_path: Path, broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path)
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))
    loop, metrics = build(settings, broker)
    drain(loop, broker)

    def full(path: Path, write: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence, "_atomic_write", full)
    report = loop.checkpoint()  # reported, not raised: the loop goes on (tests/test_stream/test_worker)
    assert report.written == () and len(report.failed) == 1
    assert all(isinstance(e, SnapshotError) and "No space" in str(e) for e in report.failed.values())
    assert metrics.value("l2g_snapshot_failures_total") == 1
    assert all(broker.committed(settings.ingest.group_id, p) is None for p in broker.partitions_of("l2g.video"))
    monkeypatch.undo()
    assert loop.checkpoint().written != ()  # the partition stayed dirty: written and committed once the disk is back
    assert sum(broker.committed(settings.ingest.group_id, p) or 0 for p in broker.partitions_of("l2g.video")) == 2


class FaultyExtractor:
    """The toy extractor, raising ``error()`` for every batch holding a frame ``bad`` picks (first frame seen: the
    first frame extracted; always: every frame) while ``armed``."""

    def __init__(self, error: Any, bad: str = "first", armed: bool = True) -> None:
        self.inner = get_extractor("toy")
        self.name = self.inner.name
        self.local_dim, self.global_dim = self.inner.local_dim, self.inner.global_dim
        self.error, self.bad, self.armed = error, bad, armed
        self.first: bytes | None = None

    def __getattr__(self, name: str) -> Any:  # options(), snapshot_identity(), ...: the toy extractor's
        return getattr(self.inner, name)

    def setup(self) -> None:
        self.inner.setup()

    def close(self) -> None:
        self.inner.close()

    def extract(self, frames: np.ndarray) -> Any:
        if self.first is None:
            self.first = frames[0].tobytes()
        if self.armed and (self.bad == "always" or any(f.tobytes() == self.first for f in frames)):
            raise self.error()
        return self.inner.extract(frames)


def test_frames_the_extractor_rejects_are_dead_lettered_as_extractor_input(tmp_path: Path,
                                                                             broker: MemoryBroker) -> None:
    settings = make_settings(tmp_path)
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))
    extractor = FaultyExtractor(lambda: ExtractorInputError("frames of 1x1 are too small"))
    loop, metrics = build(settings, broker, extractor=extractor)
    drain(loop, broker)
    letters = dead_letters(broker)
    assert [(d.stage, d.reason) for d in letters] == [("ingest", "extractor_input")]
    assert letters[0].error_class == "ExtractorInputError" and "too small" in letters[0].error_message
    assert len(loop.index) == 7  # the batch was retried frame by frame: only the rejected frame is missing
    assert metrics.value("l2g_dead_letters_total", {"stage": "ingest", "reason": "extractor_input"}) == 1
    assert metrics.value("l2g_extractor_errors_total") == 0


@pytest.mark.parametrize("error", [RuntimeError, ValueError, TypeError])
def test_an_extractor_bug_is_a_crash_report_not_a_dead_letter(tmp_path: Path, broker: MemoryBroker, error: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path)
    chunks = camera_chunks("cam-a", 1)
    publish(broker, "l2g.video", chunks[:1])
    extractor = FaultyExtractor(lambda: error("a bug in the extractor"), bad="always", armed=False)
    loop, metrics = build(settings, broker, extractor=extractor)
    drain(loop, broker)
    part = next(p for p in loop.index.partitions() if len(loop.index.get(p)))
    assert len(loop.index) == 4 and loop.positions[part] == 1

    extractor.armed = True
    publish(broker, "l2g.video", chunks[1:])
    with caplog.at_level(logging.ERROR, logger="stream.failures"), \
            pytest.raises(ExtractorCrashError, match="a bug in the extractor") as info:
        for _ in range(50):
            loop.run_once()
    assert isinstance(info.value.__cause__, error) and info.value.extractor == "toy"
    crash = [r for r in caplog.records if r.name == "stream.failures"]
    assert len(crash) == 1 and crash[0].exc_info is not None and crash[0].exc_info[1] is info.value.__cause__
    assert metrics.value("l2g_extractor_errors_total", {"extractor": "toy"}) == 1
    assert dead_letters(broker) == [] and metrics.value("l2g_dead_letters_total") == 0
    assert loop.positions[part] == 1  # not past the failed batch
    loop.close()  # what Worker does when the policy stops it: the final checkpoint commits only what was indexed
    assert broker.committed(settings.ingest.group_id, part) == 1  # a restarted worker reads the batch again



def test_a_chunk_that_crashes_the_extractor_is_dead_lettered_and_the_loop_goes_on(tmp_path: Path,
                                                                                 broker: MemoryBroker) -> None:
    """Issue 11: one poison chunk must not stop the worker. The extractor crashes on one frame only (a canary frame
    passes), so the runtime is sound: that chunk is dead-lettered as ``extractor_crash`` (not as bad input)."""
    settings = make_settings(tmp_path)
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))
    extractor = FaultyExtractor(lambda: RuntimeError("a bug on this frame"), bad="first")
    loop, metrics = build(settings, broker, extractor=extractor)
    drain(loop, broker)
    letters = dead_letters(broker)
    assert [(d.stage, d.reason, d.error_class) for d in letters] == [("ingest", "extractor_crash",
                                                                       "ExtractorCrashError")]
    assert "a bug on this frame" in letters[0].error_message
    assert len(loop.index) == 7  # every other frame is indexed
    assert metrics.value("l2g_extractor_errors_total", {"extractor": "toy"}) == 1  # the crash report, once
    assert all(pos > 0 for pos in loop.positions.values())  # the loop went past the poison chunk
