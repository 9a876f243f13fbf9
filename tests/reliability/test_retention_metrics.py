"""Retention under a running worker: the index stays bounded, and the eviction counter says so.

Chunks with event times far apart (synthetic timestamps advancing faster than the clock) go through the in-memory
broker; with ``retention_seconds`` short, old buckets must be evicted (the index stays bounded) and
``l2g_index_evicted_frames_total`` (dashboard panel and capacity alerts) must count them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.envelope import encode_message
from stream.messages import VideoChunk
from stream.settings import Settings
from stream.testing import MemoryBroker, MemoryConnector
from stream.video import SyntheticCamera, encode_segments
from stream.worker import Worker

pytestmark = pytest.mark.timeout(120)

START = 1_700_000_000.0


def _run(tmp_path: Path) -> tuple[Worker, int]:
    settings = Settings(
        extractor={"name": "toy"},
        ingest={"sample_fps": 0.0, "load_shed": False, "batch_size": 8, "commit_interval_s": 0.05,
                "poll_timeout_s": 0.01, "max_poll_records": 4},
        query={"enabled": False},
        index={"snapshot_dir": str(tmp_path / "snapshots"), "retention_seconds": 20.0, "bucket_seconds": 5.0},
        http={"enabled": False}, topics={"partitions": 1}, runtime={"worker_id": "w", "progress": False},
    )
    broker = MemoryBroker(1)
    cam = SyntheticCamera(7, 128, 96, world_frames=50)
    seg = next(encode_segments(cam.frames(10), 10.0, segment_seconds=1.0))
    chunks = 30
    for n in range(chunks):  # each 10-frame chunk stands for 5 s of event time: 150 s in all
        chunk = VideoChunk(camera_id="cam", sequence=n, first_frame=n * 10, start_time=START + n * 5.0, fps=2.0,
                           frame_count=10, data=seg.data)
        out = encode_message(chunk, source="t")
        broker.append(settings.topics.video, out.key, out.value, out.headers)
    worker = Worker(settings, connector=MemoryConnector(broker)).open()
    for _ in range(200):
        worker.step()
        if worker.ingest is not None and worker.ingest.stats.chunks >= chunks:
            break
    assert worker.ingest is not None
    worker.ingest.checkpoint()
    return worker, worker.ingest.stats.frames_indexed


def test_retention_keeps_the_index_bounded(tmp_path: Path) -> None:
    worker, indexed = _run(tmp_path)
    try:
        held = len(worker.index or [])
        assert indexed == 300
        assert held <= 60, held  # 20 s of retention (+ one 5-s bucket) at 2 frames per event second
    finally:
        worker.stop()


def test_evicted_frames_are_counted(tmp_path: Path) -> None:
    """RollingIndex.add evicts expired buckets itself; those evictions must reach the counter too (fixed in 09d44de:
    before, the counter stayed 0 while the bench evicted 556 frames)."""
    worker, indexed = _run(tmp_path)
    try:
        evicted = indexed - len(worker.index or [])
        assert evicted > 200
        assert worker.metrics.value("l2g_index_evicted_frames_total") == evicted
    finally:
        worker.stop()
